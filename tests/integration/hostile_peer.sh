#!/usr/bin/env bash
# A hostile client on a worker's data port (the port peers send cross-node requests to), with
# tests/tools/hostile_peer: it floods requests with 60,000-byte bodies and never reads; sends
# truncated, oversized and out-of-order frames, requests outside their application's route
# prefix or for applications that do not exist; cancels streams that do not exist; opens more
# connections than the port takes, and holds them (empty, or each with a frame cut short).
#
# What a user would notice, and the bounds this test states:
#   - the worker's RSS stays below its baseline + 64 MiB while each runs, and is back below its
#     baseline + 32 MiB within 30 s after the client went away (the allocator may keep some
#     freed memory: what must not stay is what the client made the worker buffer);
#   - no replica logs a ring error or is killed, and the replicas' PIDs do not change;
#   - an ordinary HTTP client on the worker's :8000 keeps being served (requests to the flooded
#     replica may wait until the worker drops the link that does not read: its progress timeout
#     is max(keep_alive_timeout_s, header_timeout_s) = 2 s here, so curl gets 60 s);
#   - misbehaving links are closed (serve_peer_links_dropped grows on the worker's /metrics):
#     bad frames at once, a link that does not read or stops in the middle of a frame or of a
#     request's body after its progress timeout (and the request-body budget such a request
#     held comes back: HTTP clients' bodies are accepted again); requests that are merely wrong get their answer (FAIL 404/400/413,
#     REJECT 503) and the link stays usable; idle links past the port's cap (4096) are refused.
# Nodes on 127.0.13.x, so it runs beside the other cluster tests.
. "$(dirname "$0")/lib.sh"

TOOL=$top_builddir/tests/tools/hostile_peer

command -v jq >/dev/null || { echo "1..0 # SKIP jq is not installed (scripts/install-deps test)"; exit 77; }
command -v ss >/dev/null || { echo "1..0 # SKIP ss (iproute2) is not installed"; exit 77; }

# The worker's unit sets LimitNOFILE; here the worker inherits ours, and must be able to reach
# the data port's cap (4096 links) for the cap, not the descriptor limit, to be what is tested.
ulimit -n 16384 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge 8192 ] || MANY_SKIP="the descriptor limit is $(ulimit -n)"

cluster_init 127.0.13 5
WLOG=$WORK/worker.log
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
cat >"$CONF/worker.yaml" <<EOF
head_address: $NET.1:$CTL_PORT
join_token_file: join-token
node_name: node-1
node_address: $NET.2
http_host: $NET.2
http_port: $HTTP_PORT
data_port: $DATA_PORT
metrics_port: $METRICS_PORT
resources: {num_cpus: 2}
EOF

"$HEAD_BIN" -c "$CONF" --state-dir "$STATE" >>"$WORK/head.log" 2>&1 &
SERVE_PIDS+=($!)
wait_until 20 curl -fs -o /dev/null -m 2 "$API/-/healthz" || { fail "serve-head starts"; sed 's/^/#   /' "$WORK/head.log"; finish; exit 1; }
"$WORKER_BIN" -c "$CONF/worker.yaml" >>"$WLOG" 2>&1 &
WPID=$!
SERVE_PIDS+=("$WPID")

W=http://$NET.2:$HTTP_PORT
apps_json() { curl -fsS -m 5 "$API/api/serve/applications/"; }
healthy() { [ "$(apps_json | jq -r --arg a "$1" --arg d "$2" '.applications[$a].deployments[$d].status')" = HEALTHY ]; }
# replica_pids: the PIDs of the running replicas, sorted
replica_pids() { apps_json | jq -r '[.applications[].deployments[].replicas[] | select(.state=="RUNNING") | .pid] | sort | join(" ")'; }
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$WPID/status" 2>/dev/null || echo 0; }
dropped() { curl -s -m 5 "http://$NET.2:$METRICS_PORT/metrics" | awk '/^serve_peer_links_dropped[{ ]/ { print $NF }'; }
ring_errors() { grep -cE 'Failed to read the request ring|Invalid request record|killing it|wrote an invalid record' "$WLOG"; }
peer() { "$TOOL" "$1" "$NET.2" "$DATA_PORT" "${@:2}"; }
served() { [ "$(curl -s -m 60 -d "$2" "$W$1")" = "$2" ]; }
rss_near_base() { [ "$(rss_kb)" -lt $((BASE + 32 * 1024)) ]; }
# Under AddressSanitizer the allocator keeps freed memory in quarantine: RSS says nothing there.
SANITIZED=; grep -qa -e __asan_init -e __tsan_init "$WORKER_BIN" && SANITIZED=1

wait_until 30 bash -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' -m 2 $W/-/healthz)\" = 200 ]" &&
        pass "the worker's proxy is up" || fail "the worker's proxy is up"
wait_until 30 healthy echo Echo && wait_until 30 healthy shapes Shapes &&
        pass "echo and shapes are running" || fail "echo and shapes are running"
check "a legitimate peer request is served" "$(peer request echo:/echo)" "RESP 200 len=2 body=bb"
# Warm up what a flood touches (peer links, big frames, the proxy), then take the baseline.
peer request echo:/echo:1000000 >/dev/null
served /echo warm
PIDS=$(replica_pids)
BASE=$(rss_kb)
echo "# worker pid $WPID, baseline RSS $BASE kB, replicas $PIDS"
BOUND=$((BASE + 64 * 1024))
MAXRSS=0
sample() { local r; r=$(rss_kb); [ "$r" -gt "$MAXRSS" ] && MAXRSS=$r; }
# after MODE: what must hold once the client went away.
after() {
        sample
        if [ -n "$SANITIZED" ]; then
                pass "$1: RSS not measured in a sanitizer build (max $MAXRSS kB, baseline $BASE kB)"
        else
                check "$1: the worker's RSS stayed below baseline + 64 MiB (max $MAXRSS kB, baseline $BASE kB)" \
                        "$([ "$MAXRSS" -lt "$BOUND" ] && echo yes)" "yes"
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
"$TOOL" flood "$NET.2" "$DATA_PORT" 10 >"$WORK/flood.out" 2>&1 &
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
"$TOOL" stall "$NET.2" "$DATA_PORT" 5 1048576 1000 >"$WORK/stall.out" 2>&1 &
SPID=$!
SERVE_PIDS+=("$SPID")
wait_until 20 grep -q '^stall: 5 sent' "$WORK/stall.out" || echo "# $(cat "$WORK/stall.out")"
sample
check "while peer requests hold the request-body budget, an HTTP POST of 1 MiB gets 503" "$(post_1m)" "503"
wait_until 30 bash -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' -m 10 --data-binary @'$WORK/1m.bin' '$W/echo')\" = 200 ]" &&
        pass "the worker drops the peer requests whose body stopped coming: the budget is back (an HTTP POST of 1 MiB is served)" ||
        fail "the worker drops the peer requests whose body stopped coming: the budget is back (an HTTP POST of 1 MiB is served)"
sample
kill -TERM "$SPID"
wait "$SPID"
check "the 5 links stalled mid-request were closed by the worker" "$(tail -n 1 "$WORK/stall.out")" "stall: 5 closed by the worker"
after "requests whose body never comes"

# ---- (d) more connections than the data port takes, held ----
data_links() { ss -Htn state established "( sport = :$DATA_PORT )" | grep -c .; }
hold_conns() { # hold_conns NAME N PARTIAL_BYTES
        "$TOOL" conns "$NET.2" "$DATA_PORT" "$2" "$3" >"$WORK/$1.out" 2>&1 &
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
if [ -n "${MANY_SKIP:-}" ]; then
        pass "5000 connections: not tried ($MANY_SKIP)"
else
        hold_conns "5000 connections" 5000 0
        opened=$(sed -n 's/^conns: \([0-9]*\) opened.*/\1/p' "$WORK/5000 connections.out")
        refused=$(sed -n 's/^conns: [0-9]* opened, \([0-9]*\) closed.*/\1/p' "$WORK/5000 connections.out")
        check "5000 connections: all connected" "$opened" "5000"
        check "5000 connections: those past the data port's cap (4096) are closed" "$refused" "904"
        check "5000 connections: the worker says once that the cap was hit" \
                "$(grep -c 'Refusing new connections to the data port' "$WLOG")" "1"
        release_conns "5000 connections"
        after "5000 connections"
fi

# Each connection sends the header of a 1 MiB frame and all of its payload but 1 KiB, then
# nothing: a link stalled mid-frame holds its input buffer until the worker drops it.
d0=$(dropped)
hold_conns "500 connections stalled mid-frame" 500 1047552
wait_until 30 bash -c "[ \$(ss -Htn state established '( sport = :$DATA_PORT )' | grep -c .) = 0 ]" &&
        pass "500 connections stalled mid-frame: the worker closes them (progress timeout)" ||
        fail "500 connections stalled mid-frame: the worker closes them (progress timeout; $(data_links) still open)"
d1=$(dropped)
check "500 connections stalled mid-frame: serve_peer_links_dropped counts them ($d0 -> $d1)" \
        "$([ "${d1:-0}" -ge $((${d0:-0} + 500)) ] && echo yes)" "yes"
release_conns "500 connections stalled mid-frame"
after "500 connections stalled mid-frame"

kill -TERM "$WPID"
wait "$WPID"
check "the worker stops cleanly" "$?" "0"
finish
