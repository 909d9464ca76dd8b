#!/usr/bin/env bash
# The head under conditions it must not be stalled by: a config whose code never finishes
# describing itself (the head keeps serving its API and taking reports, no node is declared
# dead, the deploy or reload reports the timeout), code replaced at the same path (a new
# version, new replicas; the same bytes again: nothing restarts), and REST API clients that
# connect and send nothing or open too many connections.
#
# A head and two workers on 127.0.12.x (cluster.sh uses 127.0.10.x: they may run together).
. "$(dirname "$0")/lib.sh"

command -v jq >/dev/null || { echo "1..0 # SKIP jq is not installed (scripts/install-deps test)"; exit 77; }
command -v python3 >/dev/null || { echo "1..0 # SKIP python3 is not installed"; exit 77; }

# Heartbeats every 0.2 s, dead after 2 s of silence: far less than a describe may take.
# The nodes talk plaintext here (the documented opt-out; cluster.sh and trust.sh run TLS): the
# head's behaviour must not depend on the transport, and the opt-out must keep working.
TRANSPORT=plaintext
cluster_init 127.0.12 2
CODE=$WORK/code
mkdir -p "$CODE"
DESCRIBE_TIMEOUT=6
TOKEN=$(cat "$CONF/api-token")

# The application's code lives at one path; tests replace the file there (a new inode, as an
# install does: the running replicas keep the old one mapped).
install_code() { cp "$1" "$CODE/.mymod.so.new" && mv "$CODE/.mymod.so.new" "$CODE/mymod.so"; }
install_code "$top_builddir/.libs/echo.so"

# apps_yaml [EXTRA_IMPORT_PATH]: the code application, plus one more application if given.
apps_yaml() {
        cat <<EOF
applications:
  - name: code
    route_prefix: /code
    import_path: mymod:app
    runtime_env: {working_dir: $CODE}
    deployments:
      - name: Echo
        num_replicas: 2
        ray_actor_options: {num_cpus: 0.25}
EOF
        if [ -n "${1:-}" ]; then cat <<EOF
  - name: stuck
    route_prefix: /stuck
    import_path: $1
EOF
        fi
}
write_apps() { apps_yaml "$@" >"$CONF/apps.yaml.new" && mv "$CONF/apps.yaml.new" "$CONF/apps.yaml"; }

alive_nodes() { nodes_json | jq '[.nodes[] | select(.state=="ALIVE")] | length'; }
version() { apps_json | jq -r '.applications.code.deployments.Echo.version'; }
healthy() { [ "$(apps_json | jq -r '.applications.code.deployments.Echo.status')" = HEALTHY ]; }
describing() { pgrep -f "serve-replica --describe hang_describe:app" >/dev/null; }
put_apps() { # put_apps FILE OUT [CURL_OPTIONS...]: prints the status code
        local f=$1 out=$2; shift 2
        curl -s -o "$out" -w '%{http_code}' "$@" -X PUT -H "Authorization: Bearer $TOKEN" --data-binary @"$f" \
                "$API/api/serve/applications/"
}

write_apps
start_head --describe-timeout "$DESCRIBE_TIMEOUT" || { fail "serve-head starts"; sed 's/^/#   /' "$WORK/head.log"; finish; exit 1; }
pass "serve-head starts"
start_worker 1
start_worker 2
wait_until 30 bash -c "[ \$(curl -fsS -m 5 $API/api/cluster/nodes | jq '[.nodes[] | select(.state==\"ALIVE\")] | length') = 2 ]"
check "two workers register" "$(alive_nodes)" 2
check_contains "plaintext: the head warns about it" "$(cat "$WORK/head.log")" "transport: plaintext in"
check_contains "plaintext: so does each worker" "$(cat "$WORK/worker-1.log")" "transport: plaintext in"
check "plaintext: the head makes no CA" "$(ls "$STATE/pki" 2>/dev/null | wc -l)" 0
wait_until 60 healthy
check "the code application runs two replicas" "$(running code Echo | grep -c .)" 2
pids0=$(running code Echo)

# ---- a describe that hangs: the head keeps working, the deploy reports the timeout ----
apps_yaml hang_describe:app >"$WORK/stuck.yaml"
# A client that gives up long before the describe does: its answer must go nowhere, safely.
put_apps "$WORK/stuck.yaml" "$WORK/put-gone.out" -m 1 >/dev/null &
wait_until 10 describing
describing && pass "a PUT starts a describe that hangs" || fail "a PUT starts a describe that hangs"
code=$(http_code "$API/api/serve/applications/")
describing && check "the API answers while a describe hangs" "$code" 200 || fail "the API answers while a describe hangs (the describe ended first)"
code=$(put_apps "$WORK/stuck.yaml" "$WORK/put-busy.out" -m 10)
describing && check "a second PUT while one is described gets 409" "$code" 409 || fail "a second PUT while one is described (the describe ended first)"
r0=$(reports_total)
wait_until 10 bash -c "[ \$(curl -fsS -m 5 $API/api/cluster/nodes | jq '[.nodes[].reports] | add') -ge $((r0 + 4)) ]"
r1=$(reports_total)
describing && [ "$r1" -ge $((r0 + 4)) ] && pass "reports keep arriving while a describe hangs ($r0 -> $r1)" \
        || fail "reports keep arriving while a describe hangs ($r0 -> $r1)"
wait_until 30 bash -c "grep -q 'rejected, the running config stays: .*describe timed out after $DESCRIBE_TIMEOUT s' $WORK/head.log"
check_contains "the head logs the describe timeout" "$(grep 'rejected, the running config stays' "$WORK/head.log" | tail -n 1)" \
        "cannot load hang_describe:app: describe timed out after $DESCRIBE_TIMEOUT s"
wait_until 10 bash -c '! pgrep -f "serve-replica --describe hang_describe:app" >/dev/null'
describing && fail "the hanging describe was killed" || pass "the hanging describe was killed"
check "the head answers after answering a client that went away" "$(http_code "$API/-/healthz")" 200

# The same with a client that waits for the answer.
code=$(put_apps "$WORK/stuck.yaml" "$WORK/put.out" -m 60)
check "a PUT whose describe times out is answered 504" "$code" 504
check_contains "the answer says the describe timed out" "$(cat "$WORK/put.out")" "describe timed out after $DESCRIBE_TIMEOUT s"
check_contains "serve status shows the describe timeout" "$("$CLI" status --address "$API")" "describe timed out after $DESCRIBE_TIMEOUT s"

# SIGHUP: the reload describes off the loop too; a second SIGHUP meanwhile runs after it and
# reads the file as it is then (the latest wins).
write_apps hang_describe:app
n_applied=$(head_log_count "applied file config")
kill -HUP "$HEAD_PID"
wait_until 10 describing
check "the API answers while a reload's describe hangs" "$(http_code "$API/api/serve/applications/")" 200
write_apps
kill -HUP "$HEAD_PID"
wait_until 30 bash -c "grep -q 'reload failed, the running config stays: .*describe timed out after $DESCRIBE_TIMEOUT s' $WORK/head.log"
check_contains "a reload whose describe hangs fails with the timeout" "$(grep 'reload failed' "$WORK/head.log" | tail -n 1)" \
        "describe timed out after $DESCRIBE_TIMEOUT s"
wait_until 30 bash -c "[ \$(grep -c 'applied file config' $WORK/head.log) -gt $n_applied ]"
check_contains "the SIGHUP that came meanwhile reloads the file as it is now" \
        "$(grep 'applied file config' "$WORK/head.log" | tail -n 1)" "1 application(s), 1 deployment(s) (unchanged)"
check "the running config has no error left" "$(apps_json | jq -r '.config_error')" null

check "no node was declared dead while describes hung" "$(head_log_count ' is dead ')" 0
check "both nodes are ALIVE" "$(alive_nodes)" 2
check "no replica was placed again or restarted" "$(running code Echo)" "$pids0"

# ---- code replaced at the same path is a new version ----
v0=$(version)
install_code "$top_builddir/tests/apps/.libs/echo2.so"
kill -HUP "$HEAD_PID"
wait_until 60 bash -c "v=\$(curl -fsS -m 5 $API/api/serve/applications/ | jq -r '.applications.code.deployments.Echo | select(.status==\"HEALTHY\") | .version'); [ -n \"\$v\" ] && [ \"\$v\" != $v0 ] && [ \$(curl -fsS -m 5 $API/api/serve/applications/ | jq '[.applications.code.deployments.Echo.replicas[]] | length') = 2 ]"
v1=$(version)
[ "$v1" != "$v0" ] && pass "a replaced module is a new version ($v0 -> $v1)" || fail "a replaced module is a new version (still $v1)"
pids1=$(running code Echo)
check "every replica of the replaced module is new" "$(comm -12 <(echo "$pids0" | cut -d' ' -f2 | sort) <(echo "$pids1" | cut -d' ' -f2 | sort) | grep -c .)" 0
check "the new replicas serve" "$(curl -s -m 10 -d new "http://$NET.2:$HTTP_PORT/code")" "new"
# The same bytes again (a new inode, a new mtime): the same version, nothing restarts.
n_applied=$(head_log_count "applied file config")
install_code "$top_builddir/tests/apps/.libs/echo2.so"
kill -HUP "$HEAD_PID"
wait_until 30 bash -c "[ \$(grep -c 'applied file config' $WORK/head.log) -gt $n_applied ]"
check_contains "reinstalling identical bytes is an unchanged config" "$(grep 'applied file config' "$WORK/head.log" | tail -n 1)" "(unchanged)"
r0=$(reports_total)
wait_until 10 bash -c "[ \$(curl -fsS -m 5 $API/api/cluster/nodes | jq '[.nodes[].reports] | add') -ge $((r0 + 4)) ]"
check "identical bytes keep the version" "$(version)" "$v1"
check "identical bytes restart nothing" "$(running code Echo)" "$pids1"

# ---- liveness: a head that stalled takes in the reports before judging the nodes ----
settle() { local r0; r0=$(reports_total); wait_until 20 bash -c "[ \$(curl -fsS -m 5 $API/api/cluster/nodes | jq '[.nodes[] | select(.state==\"ALIVE\") | .reports] | add') -ge $((r0 + 4)) ]"; }
n_dead=$(head_log_count ' is dead ')
# The stall itself (not a wait for readiness): longer than worker_timeout_s.
kill -STOP "$HEAD_PID"; sleep 3; kill -CONT "$HEAD_PID"
settle
check "a head stalled past worker_timeout_s declares no node dead when it resumes" "$(head_log_count ' is dead ')" "$n_dead"
check "and both nodes are ALIVE" "$(alive_nodes)" 2

# ---- a node declared dead that reports again keeps the replicas it runs ----
# One more application with a single replica: placement puts it on the first node, and when
# both that node (coming back) and the other one hold a copy, the first node's is kept (ties
# go to the earlier node). Without adoption the node that comes back would have its replica
# stopped and the copy started meanwhile would stay.
{ apps_yaml; cat <<EOF
  - name: one
    route_prefix: /one
    import_path: echo:app
    deployments:
      - name: Echo
        num_replicas: 1
        ray_actor_options: {num_cpus: 0.25}
EOF
} >"$CONF/apps.yaml.new" && mv "$CONF/apps.yaml.new" "$CONF/apps.yaml"
kill -HUP "$HEAD_PID"
wait_until 60 bash -c "[ \$(curl -fsS -m 5 $API/api/serve/applications/ | jq '[.applications.one.deployments.Echo.replicas[]? | select(.state==\"RUNNING\")] | length') = 1 ]"
first=$(nodes_json | jq -r '.nodes[0].node_id')
victim_pid=$(running one Echo | awk -v n="$first" '$1 == n { print $2 }')
[ -n "$victim_pid" ] && pass "a single replica is placed on the first node ($first)" || fail "a single replica is placed on the first node ($first: $(running one Echo))"
victim=${first#node-}
kill -STOP "${WPID[$victim]}"
wait_until 30 bash -c "[ \"\$(curl -fsS -m 5 $API/api/cluster/nodes | jq -r '.nodes[] | select(.node_id==\"$first\") | .state')\" = DEAD ]"
wait_until 60 bash -c "[ \$(curl -fsS -m 5 $API/api/serve/applications/ | jq '[.applications.one.deployments.Echo.replicas[] | select(.state==\"RUNNING\" and .node_id!=\"$first\")] | length') = 1 ]"
check "a silent node is declared dead and its replica placed again" "$(running one Echo | grep -vc "^$first ")" 1
kill -CONT "${WPID[$victim]}"
wait_until 30 bash -c "[ \$(curl -fsS -m 5 $API/api/cluster/nodes | jq '[.nodes[] | select(.state==\"ALIVE\")] | length') = 2 ]"
wait_until 60 bash -c "[ \$(curl -fsS -m 5 $API/api/serve/applications/ | jq '[.applications.one.deployments.Echo.replicas[]] | length') = 1 ]"
settle
check_contains "the node that reports again is alive again" "$(cat "$WORK/head.log")" "node $first is alive again"
check "the replica it kept running is kept (pid $victim_pid)" "$(running one Echo)" "$first $victim_pid"
check "the other deployment is back to two replicas" "$(running code Echo | grep -c .)" 2

# ---- the REST API port: header timeout, connection cap ----
kill -TERM "$HEAD_PID"; wait "$HEAD_PID"
check "serve-head stops cleanly" "$?" 0
start_head --api-header-timeout 1 || fail "serve-head restarts with a 1 s header timeout"
idle=$(python3 - "$NET.1" "$API_PORT" <<'EOF'
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.settimeout(30)
try:
    print("closed" if s.recv(1) == b"" else "data")
except socket.timeout:
    print("open")
except ConnectionResetError:
    print("closed")
EOF
)
check "a client that sends nothing is closed after the header timeout" "$idle" closed
check_contains "the head logs why" "$(cat "$WORK/head.log")" "closed a connection that sent no complete request in time"

kill -TERM "$HEAD_PID"; wait "$HEAD_PID"
start_head --api-header-timeout 120 --api-max-connections 8 || fail "serve-head restarts with a connection cap of 8"
cap=$(python3 - "$NET.1" "$API_PORT" <<'EOF'
import socket, sys, time
addr = (sys.argv[1], int(sys.argv[2]))

def state(s, wait):
    """'refused' if the server closed it, 'open' if it is still waiting for us."""
    s.settimeout(wait)
    try:
        return "refused" if s.recv(1) == b"" else "data"
    except socket.timeout:
        return "open"
    except ConnectionResetError:
        return "refused"

held = [socket.create_connection(addr) for _ in range(8)]
extra = [socket.create_connection(addr) for _ in range(3)]
# The extra ones are closed by the server as soon as it accepts them.
print(" ".join(state(s, 20) for s in extra))
# The held ones are still open and are served.
s = held[0]
s.sendall(b"GET /-/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
s.settimeout(20)
data = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
print(data.split(b"\r\n", 1)[0].decode())
print(" ".join(state(t, 0.2) for t in held[1:]))
EOF
)
check "connections beyond the cap are refused" "$(echo "$cap" | sed -n 1p)" "refused refused refused"
check "a connection within the cap is served" "$(echo "$cap" | sed -n 2p)" "HTTP/1.1 200 OK"
check "the other connections within the cap stay open" "$(echo "$cap" | sed -n 3p)" "open open open open open open open"
check "the cap is logged once, not per connection" "$(head_log_count 'connections open, the limit: refusing new ones')" 1
check "the API serves again once connections are gone" "$(http_code "$API/api/serve/applications/")" 200

for n in 1 2; do kill -TERM "${WPID[$n]}"; done
stopped=0
for n in 1 2; do wait "${WPID[$n]}" && stopped=$((stopped + 1)); done
check "workers stop cleanly" "$stopped" 2
kill -TERM "$HEAD_PID"; wait "$HEAD_PID"
check "serve-head stops cleanly on SIGTERM" "$?" 0
finish
