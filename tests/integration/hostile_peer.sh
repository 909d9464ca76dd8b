#!/usr/bin/env bash
# A hostile client on a worker's data port (the port peers send cross-node requests to), with
# tests/tools/hostile_peer: it floods requests with 60,000-byte bodies and never reads; sends
# truncated, oversized and out-of-order frames, requests outside their application's route
# prefix or for applications that do not exist; cancels streams that do not exist; opens more
# connections than the port takes, and holds them (empty, or each with a frame cut short).
#
# What a user would notice, and the bounds this test states:
#   - the worker's RSS stays below its baseline + 64 MiB while each runs (plus 24 KiB a link
#     while the data port holds its 4096 idle links: what an authenticated TLS link costs, see
#     below), and is back below its baseline + 32 MiB within 30 s after the client went away
#     (the allocator may keep some freed memory: what must not stay is what the client made the
#     worker buffer);
#   - no replica logs a ring error or is killed, and the replicas' PIDs do not change;
#   - an ordinary HTTP client on the worker's :8000 keeps being served (requests to the flooded
#     replica may wait until the worker drops the link that does not read: its progress timeout
#     is max(keep_alive_timeout_s, header_timeout_s) = 2 s here, so curl gets 60 s);
#   - misbehaving links are closed (serve_peer_links_dropped grows on the worker's /metrics):
#     bad frames at once, a link that does not read or stops in the middle of a frame or of a
#     request's body after its progress timeout (and the request-body budget such a request
#     held comes back: HTTP clients' bodies are accepted again); requests that are merely wrong get their answer (FAIL 404/400/413,
#     REJECT 503) and the link stays usable; idle links past the port's cap (4096) are refused.
# The data port speaks mutually authenticated TLS 1.3 (transport: tls, the default): the hostile
# client is a node of the cluster gone bad. A second worker, node-2, joins with too little CPU
# to host a replica (0.2 < 0.25), and the client presents node-2's key and certificate (issued
# by the cluster CA, which it also trusts), so every frame above travels inside an
# authenticated link. And a client that is not a node gets nothing processed: with no
# certificate, a self-signed one, or no TLS at all, a valid request gets no answer and the link
# is refused (serve_peer_links_refused_total grows), while none of the hostile links was
# refused (they were authenticated) and the worker completed a handshake with each link it took.
# Nodes on 127.0.13.x, so it runs beside the other cluster tests.
. "$(dirname "$0")/lib.sh"

TOOL=$top_builddir/tests/tools/hostile_peer
# Who the tool is comes from HOSTILE_TLS_* (see hostile_peer.c): each call below says it.
unset HOSTILE_TLS HOSTILE_TLS_CERT HOSTILE_TLS_KEY HOSTILE_TLS_CA

command -v jq >/dev/null || { echo "1..0 # SKIP jq is not installed (scripts/install-deps test)"; exit 77; }
command -v ss >/dev/null || { echo "1..0 # SKIP ss (iproute2) is not installed"; exit 77; }

# The worker's unit sets LimitNOFILE; here the worker inherits ours, and must be able to reach
# the data port's cap (4096 links) for the cap, not the descriptor limit, to be what is tested.
ulimit -n 16384 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge 8192 ] || MANY_SKIP="the descriptor limit is $(ulimit -n)"

cluster_init 127.0.13 5
WLOG=$WORK/worker-1.log
cat >"$CONF/apps.yaml" <<EOF
http_options:
  keep_alive_timeout_s: 1
  header_timeout_s: 2
  max_request_body_bytes: 1048576
  max_buffered_request_bytes: 4194304
applications:
  - name: echo
    route_prefix: /echo
    import_path: echo:app
    deployments:
      - name: Echo
        num_replicas: 1
        ray_actor_options: {num_cpus: 0.25}
  - name: shapes
    route_prefix: /shapes
    import_path: shapes:app
    deployments:
      - name: Shapes
        num_replicas: 1
        ray_actor_options: {num_cpus: 0.25}
EOF
# node-1 hosts the replicas; node-2 (0.2 CPU: no replica fits) lends the hostile client its identity.
worker_resources() { if [ "$1" = 2 ]; then echo "{num_cpus: 0.2}"; else echo "{num_cpus: 2}"; fi; }

start_head || { fail "serve-head starts"; sed 's/^/#   /' "$WORK/head.log"; finish; exit 1; }
start_worker 1
W1=${WPID[1]}
start_worker 2

W=http://$NET.2:$HTTP_PORT
# The hostile client is node-2: its stored key and certificate, and the cluster CA to check node-1.
NODE2=("HOSTILE_TLS_CERT=$WORK/node-2/node.crt" "HOSTILE_TLS_KEY=$WORK/node-2/node.key" "HOSTILE_TLS_CA=$STATE/pki/ca.crt")
node_state() { nodes_json | jq -r --arg n "$1" '.nodes[] | select(.node_id == $n) | .state'; }
healthy() { [ "$(apps_json | jq -r --arg a "$1" --arg d "$2" '.applications[$a].deployments[$d].status')" = HEALTHY ]; }
# replica_pids: the PIDs of the running replicas, sorted
replica_pids() { apps_json | jq -r '[.applications[].deployments[].replicas[] | select(.state=="RUNNING") | .pid] | sort | join(" ")'; }
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$W1/status" 2>/dev/null || echo 0; }
# metric NAME: node-1's value of NAME on its /metrics (summed over label sets)
metric() { curl -s -m 5 "http://$NET.2:$METRICS_PORT/metrics" | awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $NF; f = 1 } END { if (f) print s }'; }
dropped() { metric serve_peer_links_dropped; }
refused() { metric serve_peer_links_refused_total; }
handshakes() { metric serve_tls_handshakes_total; }
ring_errors() { grep -cE 'Failed to read the request ring|Invalid request record|killing it|wrote an invalid record' "$WLOG"; }
# peer MODE ARGS...: the hostile client on node-1's data port, as node-2 (unpeer: as no node)
peer() { env "${NODE2[@]}" "$TOOL" "$1" "$NET.2" "$DATA_PORT" "${@:2}"; }
served() { [ "$(curl -s -m 60 -d "$2" "$W$1")" = "$2" ]; }
rss_near_base() { [ "$(rss_kb)" -lt $((BASE + 32 * 1024)) ]; }
# Under AddressSanitizer the allocator keeps freed memory in quarantine: RSS says nothing there.
SANITIZED=; grep -qa -e __asan_init -e __tsan_init "$WORKER_BIN" && SANITIZED=1

wait_until 30 bash -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' -m 2 $W/-/healthz)\" = 200 ]" &&
        pass "the worker's proxy is up" || fail "the worker's proxy is up"
wait_until 30 healthy echo Echo && wait_until 30 healthy shapes Shapes &&
        pass "echo and shapes are running" || fail "echo and shapes are running"
wait_until 30 bash -c "[ \"\$(curl -fsS -m 5 '$API/api/cluster/nodes' | jq -r '.nodes[] | select(.node_id == \"node-2\") | .state')\" = ALIVE ]" &&
        pass "node-2 joined the cluster (ALIVE)" || fail "node-2 joined the cluster (ALIVE; $(node_state node-2))"
check "node-2 stored its key and certificate (mode 0600)" \
        "$(stat -c '%a' "$WORK/node-2/node.key" "$WORK/node-2/node.crt" 2>&1 | tr '\n' ' ')" "600 600 "
check "the replicas run on node-1 only" "$(apps_json | jq -r '[.applications[].deployments[].replicas[].node_id] | unique | join(" ")')" "node-1"
# node-1 takes data links only from the nodes in its peer list: node-2 is there once node-1 dialled it.
wait_until 30 grep -q 'data connection to node node-2 .* is up' "$WLOG" &&
        pass "node-1 lists node-2 as a peer (its data link to node-2 is up)" ||
        fail "node-1 lists node-2 as a peer (its data link to node-2 is up)"
check "a legitimate peer request is served (over TLS, as node-2)" "$(peer request echo:/echo)" "RESP 200 len=2 body=bb"

# ---- a client that is not a node of the cluster: nothing it sends is processed ----
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/OU=serve-node/CN=node-2" \
        -keyout "$WORK/self.key" -out "$WORK/self.crt" >/dev/null 2>&1
unpeer() { "$TOOL" "$1" "$NET.2" "$DATA_PORT" "${@:2}"; }
r0=$(refused)
check "TLS without a certificate: a valid request gets no answer, the link is closed" \
        "$(HOSTILE_TLS_CA=$STATE/pki/ca.crt unpeer request echo:/echo 2>/dev/null)" "closed"
r1=$(refused)
check "... and serve_peer_links_refused_total counts it ($r0 -> $r1)" "$([ "${r1:-0}" -gt "${r0:-0}" ] && echo yes)" "yes"
check "TLS with a self-signed certificate for node-2: a valid request gets no answer, the link is closed" \
        "$(HOSTILE_TLS_CERT=$WORK/self.crt HOSTILE_TLS_KEY=$WORK/self.key HOSTILE_TLS_CA=$STATE/pki/ca.crt unpeer request echo:/echo 2>/dev/null)" "closed"
r2=$(refused)
check "... and serve_peer_links_refused_total counts it ($r1 -> $r2)" "$([ "${r2:-0}" -gt "${r1:-0}" ] && echo yes)" "yes"
out=$(unpeer request echo:/echo 2>/dev/null)
check "plaintext frames on the TLS data port: no answer" "$([ "$out" = closed ] || [ "$out" = timeout ] && echo yes)" "yes"
r3=$(refused)
check "... and serve_peer_links_refused_total counts it ($r2 -> $r3)" "$([ "${r3:-0}" -gt "${r2:-0}" ] && echo yes)" "yes"
check_contains "node-1 logs why it refused them" "$(grep 'refused a data connection' "$WLOG")" "refused a data connection from"
R0=$(refused)
# Warm up what a flood touches (peer links, big frames, the proxy), then take the baseline.
peer request echo:/echo:1000000 >/dev/null
served /echo warm
PIDS=$(replica_pids)
BASE=$(rss_kb)
echo "# worker pid $W1, baseline RSS $BASE kB, replicas $PIDS"
BOUND=$((BASE + 64 * 1024))
MAXRSS=0
sample() { local r; r=$(rss_kb); [ "$r" -gt "$MAXRSS" ] && MAXRSS=$r; }
# after MODE [LINKS]: what must hold once the client went away. LINKS: the idle links the client
# held, each of which may cost the worker 24 KiB of TLS state on top of the 64 MiB.
after() {
        local links=${2:-0} what="baseline + 64 MiB"
        [ "$links" -gt 0 ] && what="baseline + 64 MiB + 24 KiB x $links links"
        sample
        if [ -n "$SANITIZED" ]; then
                pass "$1: RSS not measured in a sanitizer build (max $MAXRSS kB, baseline $BASE kB)"
        else
                check "$1: the worker's RSS stayed below $what (max $MAXRSS kB, baseline $BASE kB)" \
                        "$([ "$MAXRSS" -lt $((BOUND + links * 24)) ] && echo yes)" "yes"
                wait_until 30 rss_near_base && pass "$1: then RSS is back below baseline + 32 MiB" ||
                        fail "$1: then RSS is back below baseline + 32 MiB ($(rss_kb) kB)"
        fi
        check "$1: no replica logged a ring error or was killed" "$(ring_errors)" "0"
        check "$1: the replicas are the same processes" "$(replica_pids)" "$PIDS"
        served /echo "after $1" && pass "$1: an HTTP client is served afterwards" || fail "$1: an HTTP client is served afterwards"
        check "$1: a legitimate peer request is served afterwards" "$(peer request echo:/echo)" "RESP 200 len=2 body=bb"
        MAXRSS=0
}

# ---- (b) malformed frames: the link is closed, nothing else happens ----
d0=$(dropped)
for c in oversized unknown-type body-first resp fail reject bad-app-len body-overrun interleaved cancel-assembling; do
        check "frame $c: the worker closes the link" "$(peer frame "$c")" "closed"
done
check "frame truncated, then EOF: the worker closes the link" "$(peer frame truncated)" "closed"
check "frame truncated, then silence: the worker closes the link (progress timeout)" "$(peer frame truncated-hold)" "closed"
d1=$(dropped)
check "the worker's /metrics counts the dropped links (serve_peer_links_dropped $d0 -> $d1)" \
        "$([ "${d1:-0}" -ge $((${d0:-0} + 10)) ] && echo yes)" "yes"

# ---- (b) requests that are wrong but well-formed: answered, the link stays usable ----
out=$(peer request 'echo:/' 'echo:/echo' 'nope:/echo' 'echo:/echo/../../x' 'echo:/shapes/path' 'echo:/a b' \
        'echo:/echo:2000000' 'shapes:/shapes/status?code=101' 'echo:/x/../echo/y' 'echo:/echo')
mapfile -t lines <<<"$out"
check "REQ for echo with path / -> FAIL 404" "${lines[0]}" "FAIL 404 the path is not under the application's route_prefix"
check "... the same link then serves echo /echo" "${lines[1]}" "RESP 200 len=2 body=bb"
check "REQ for an application that does not exist -> REJECT 503 (the sender tries elsewhere)" "${lines[2]}" "REJECT 503"
check "REQ whose path climbs above / -> FAIL 400" "${lines[3]:0:8}" "FAIL 400"
check "REQ for echo with another application's path -> FAIL 404" "${lines[4]:0:8}" "FAIL 404"
check "REQ with an invalid request head -> FAIL 400" "${lines[5]:0:8}" "FAIL 400"
check "REQ with a body over max_request_body_bytes -> FAIL 413" "${lines[6]:0:8}" "FAIL 413"
check "REQ whose handler answers 101 -> RESP 500" "${lines[7]:0:8}" "RESP 500"
check "REQ with a path normalised into the prefix is served" "${lines[8]}" "RESP 200 len=2 body=bb"
check "... and the link still serves after all of them" "${lines[9]}" "RESP 200 len=2 body=bb"
after "bad frames"

# ---- (c) cancels for streams that do not exist: ignored ----
check "100,000 CANCELs of unknown streams, then a request on the same link" "$(peer cancel 100000)" "RESP 200 len=2 body=bb"
after "unknown cancels"

# ---- (a) a flood of 60,000-byte requests that never reads its answers ----
d0=$(dropped)
env "${NODE2[@]}" "$TOOL" flood "$NET.2" "$DATA_PORT" 10 >"$WORK/flood.out" 2>&1 &
fpid=$!
SERVE_PIDS+=("$fpid")
echo_ok=0 shapes_ok=0 tries=0
while kill -0 "$fpid" 2>/dev/null; do
        sample
        tries=$((tries + 1))
        served /echo "during the flood $tries" && echo_ok=$((echo_ok + 1))
        [ "$(curl -s -m 60 "$W/shapes/path")" = /path ] && shapes_ok=$((shapes_ok + 1))
        sample
done
wait "$fpid"
echo "# $(cat "$WORK/flood.out"); HTTP requests during it: $echo_ok + $shapes_ok of 2 x $tries served"
check "flood: HTTP clients of the flooded application were served during it (they may wait)" "$echo_ok" "$tries"
check "flood: HTTP clients of another application were served during it" "$shapes_ok" "$tries"
closed=$(sed -n 's/.* \([0-9]*\) closed by the worker$/\1/p' "$WORK/flood.out")
check "flood: the worker closed the links that did not read" "$([ "${closed:-0}" -ge 1 ] && echo yes)" "yes"
d1=$(dropped)
check "flood: serve_peer_links_dropped counts them ($d0 -> $d1)" "$([ "${d1:-0}" -gt "${d0:-0}" ] && echo yes)" "yes"
after "flood"

# ---- requests whose body never comes: they hold the node's request-body budget (4 MiB) ----
head -c 1048576 /dev/zero >"$WORK/1m.bin"
post_1m() { http_code --data-binary @"$WORK/1m.bin" "$W/echo"; }
check "an HTTP POST of 1 MiB is served" "$(post_1m)" "200"
env "${NODE2[@]}" "$TOOL" stall "$NET.2" "$DATA_PORT" 5 1048576 1000 >"$WORK/stall.out" 2>&1 &
SPID=$!
SERVE_PIDS+=("$SPID")
wait_until 20 grep -q '^stall: 5 sent' "$WORK/stall.out" || echo "# $(cat "$WORK/stall.out")"
# Sent is not yet taken: the worker holds the budget once it has read the requests' heads (with
# TLS, after it checked the peer's certificate; under ASan that takes a while).
budget_held() { [ "$(metric serve_request_body_bytes_buffered | cut -d. -f1)" -gt 3145728 ] 2>/dev/null; }
wait_until 30 budget_held || echo "# the worker buffers $(metric serve_request_body_bytes_buffered) request-body bytes"
sample
check "while peer requests hold the request-body budget, an HTTP POST of 1 MiB gets 503" "$(post_1m)" "503"
wait_until 30 bash -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' -m 10 --data-binary @'$WORK/1m.bin' '$W/echo')\" = 200 ]" &&
        pass "the worker drops the peer requests whose body stopped coming: the budget is back (an HTTP POST of 1 MiB is served)" ||
        fail "the worker drops the peer requests whose body stopped coming: the budget is back (an HTTP POST of 1 MiB is served)"
sample
# The link whose request was refused (the budget was full) was answered later than the others
# (its progress timeout started then): wait until the port holds only node-2's own link.
wait_until 30 bash -c "[ \$(ss -Htn state established '( src $NET.2:$DATA_PORT )' | grep -c .) -le 1 ]"
kill -TERM "$SPID"
wait "$SPID"
check "the 5 links stalled mid-request were closed by the worker" "$(tail -n 1 "$WORK/stall.out")" "stall: 5 closed by the worker"
after "requests whose body never comes"

# ---- (d) more connections than the data port takes, held ----
# data_links: the links node-1's data port holds (node-2's own data link to node-1 is one of them)
data_links() { ss -Htn state established "( src $NET.2:$DATA_PORT )" | grep -c .; }
hold_conns() { # hold_conns NAME N PARTIAL_BYTES
        env "${NODE2[@]}" "$TOOL" conns "$NET.2" "$DATA_PORT" "$2" "$3" >"$WORK/$1.out" 2>&1 &
        CPID=$!
        SERVE_PIDS+=("$CPID")
        wait_until 120 grep -q 'opened' "$WORK/$1.out" || echo "# $1: the connections did not open in time" >&2
        sample
        served /echo "during $1" && pass "$1: an HTTP client is served while they are held" ||
                fail "$1: an HTTP client is served while they are held"
        sample
}
release_conns() { # release_conns NAME
        sample
        kill -TERM "$CPID"
        wait "$CPID"
        echo "# $1: $(tr '\n' ' ' <"$WORK/$1.out")"
}
# What the data port holds before: node-2's own link (it counts against the cap too).
wait_until 10 bash -c "[ \$(ss -Htn state established '( src $NET.2:$DATA_PORT )' | grep -c .) -le 1 ]"
L0=$(data_links)
echo "# node-1's data port holds $L0 link(s) before the connections below"
if [ -n "${MANY_SKIP:-}" ]; then
        pass "5000 connections: not tried ($MANY_SKIP)"
else
        h0=$(handshakes)
        hold_conns "5000 connections" 5000 0
        h1=$(handshakes)
        opened=$(sed -n 's/^conns: \([0-9]*\) opened.*/\1/p' "$WORK/5000 connections.out")
        refused=$(sed -n 's/^conns: [0-9]* opened, \([0-9]*\) closed.*/\1/p' "$WORK/5000 connections.out")
        check "5000 connections: all connected" "$opened" "5000"
        check "5000 connections: those past the data port's cap (4096, $L0 held by node-2) are closed" "$refused" "$((5000 - 4096 + L0))"
        check "5000 connections: each one the port took is an authenticated link (serve_tls_handshakes_total $h0 -> $h1)" \
                "$([ "${h1:-0}" -ge $((${h0:-0} + 4096 - L0)) ] && echo yes)" "yes"
        check "5000 connections: the worker says once that the cap was hit" \
                "$(grep -c 'Refusing new connections to the data port' "$WLOG")" "1"
        release_conns "5000 connections"
        # An authenticated TLS 1.3 link costs the worker about 24 KiB a plaintext one does not
        # (OpenSSL's state for the session and the peer's certificate chain: a bare OpenSSL 3
        # server holding 4000 such links idle grows by 24 KiB a link), so the port's 4096 idle
        # links cannot fit in 64 MiB: while they are held the bound grows by 24 KiB a link.
        after "5000 connections" 4096
fi

# Each connection sends the header of a 1 MiB frame and all of its payload but 1 KiB, then
# nothing: a link stalled mid-frame holds its input buffer until the worker drops it.
d0=$(dropped)
hold_conns "500 connections stalled mid-frame" 500 1047552
wait_until 30 bash -c "[ \$(ss -Htn state established '( src $NET.2:$DATA_PORT )' | grep -c .) -le $L0 ]" &&
        pass "500 connections stalled mid-frame: the worker closes them (progress timeout)" ||
        fail "500 connections stalled mid-frame: the worker closes them (progress timeout; $(data_links) still open)"
d1=$(dropped)
check "500 connections stalled mid-frame: serve_peer_links_dropped counts them ($d0 -> $d1)" \
        "$([ "${d1:-0}" -ge $((${d0:-0} + 500)) ] && echo yes)" "yes"
release_conns "500 connections stalled mid-frame"
after "500 connections stalled mid-frame"

# Every hostile link above was an authenticated one (node-2's identity): none was refused, and
# what closed them was their behaviour (serve_peer_links_dropped), not who they were.
check "none of the hostile links was refused: they were authenticated as node-2 (serve_peer_links_refused_total stayed $R0)" \
        "$([ -n "$R0" ] && refused)" "${R0:-(node-1 has no serve_peer_links_refused_total)}"

kill -TERM "$W1"
wait "$W1"
check "the worker stops cleanly" "$?" "0"
finish
