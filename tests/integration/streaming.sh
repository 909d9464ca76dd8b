#!/usr/bin/env bash
# Streaming responses (serve_response_flush()): a handler's flushed pieces reach the client while
# it still runs, as chunks; a client that stops reading stops the handler (its flush waits) and
# grows no memory; a client that goes away makes the handler's flush return -ECANCELED; and a
# stream crosses the data link between two nodes.
#
# The handler is tests/apps/shapes.c's /stream. Readiness is never guessed with a sleep: the
# handler waits for a gate file after its first piece, and writes its progress (bytes flushed,
# and how it ended) into a file the test reads.
#
# Bounds stated by this test:
#   - a client that reads nothing of a 500 MiB stream: the handler flushes at most 32 MiB (what
#     the socket buffers, the proxy's output budget, the ring and the stream's credit window
#     hold), and the `serve run` process (the proxy) stays below its baseline RSS + 64 MiB.
#   - the same through a peer link (client at one node, replica at the other): at most 64 MiB
#     (the link's budget and socket buffers come on top).
set -u
. "$(dirname "$0")/lib.sh"

TOOL=$top_builddir/tests/tools/hostile_peer
command -v ss >/dev/null || { echo "1..0 # SKIP ss (iproute2) is not installed"; exit 77; }

cat >"$WORK/apps.yaml" <<'YAML'
http_options:
  keep_alive_timeout_s: 30
  header_timeout_s: 30
applications:
  - name: shapes
    route_prefix: /shapes
    import_path: shapes:app
YAML

start_serve streaming "$WORK/apps.yaml" || { fail "serve run starts"; finish; exit 1; }
wait_until 30 answers_200 /shapes/ && pass "shapes replica ready" || fail "shapes replica ready"
U=http://127.0.0.1:$PORT
pid=$(replica_pid shapes/Shapes)
CRLF=$'\r\n'

# progress FILE: what the handler wrote there ("flushed BYTES" or "done RC BYTES"), "" before
progress() { cat "$1" 2>/dev/null; }
flushed() { progress "$1" | awk '{ print $NF }'; }

# ---- the pieces reach the client before the handler finishes ----
curl -sN -D "$WORK/a.head" -o "$WORK/a.out" -m 60 "$U/shapes/stream?n=3&gate=$WORK/gate-a&log=$WORK/a.log" &
curl_a=$!
wait_until 30 grep -qs "piece 0" "$WORK/a.out" && pass "the first piece reaches the client while the handler waits" ||
        fail "the first piece reaches the client while the handler waits"
check "... and only the first (the handler waits for the gate)" "$(cat "$WORK/a.out")" "piece 0"
wait_until 10 grep -qs flushed "$WORK/a.log"
check "... the handler has flushed it and still runs" "$(progress "$WORK/a.log")" "flushed 8"
head_a=$(cat "$WORK/a.head")
check_contains "a streamed response is chunked" "$head_a" "Transfer-Encoding: chunked$CRLF"
check "... without Content-Length" "$(grep -ci '^Content-Length' <<<"$head_a")" "0"
touch "$WORK/gate-a"
wait "$curl_a"
check "curl reads the whole stream" "$?" "0"
check "every piece, in order" "$(cat "$WORK/a.out")" "piece 0
piece 1
piece 2"
check "the handler finished" "$(progress "$WORK/a.log")" "done 0 24"

curl -s --raw -m 10 -o "$WORK/raw.out" "$U/shapes/stream?n=2"
printf '8\r\npiece 0\n\r\n8\r\npiece 1\n\r\n0\r\n\r\n' >"$WORK/raw.want"
check "one chunk per flushed piece, then the last chunk" "$(cmp -s "$WORK/raw.out" "$WORK/raw.want" && echo same ||
        od -c "$WORK/raw.out" | head -n 5)" "same"
out10=$(curl -s -0 -i -m 10 "$U/shapes/stream?n=2")
check_contains "HTTP/1.0: no chunks, the connection closes at the end" "$out10" "Connection: close$CRLF"
check "HTTP/1.0: no Transfer-Encoding" "$(grep -ci '^Transfer-Encoding' <<<"$out10")" "0"
check "HTTP/1.0: the whole body" "${out10#*$CRLF$CRLF}" "piece 0
piece 1"
two=$(raw 'GET /shapes/stream?n=2 HTTP/1.1\r\nHost: t\r\n\r\nHEAD /shapes/stream?n=2 HTTP/1.1\r\nHost: t\r\n\r\nGET /shapes/stream?n=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n')
check "three streams pipelined on one connection (one HEAD): three responses" "$(grep -c '^HTTP/1.1 200' <<<"$two")" "3"
check "... each body whole, the HEAD's empty" "$(grep -c '^piece' <<<"$two")" "3"
check "... each of the two GETs ends with the last chunk" "$(grep -c $'^0\r$' <<<"$two")" "2"
big=$(curl -s -m 60 -w ' %{http_code}' "$U/shapes/stream?n=64&size=1048576" | wc -c)
check "64 pieces of 1 MiB arrive whole" "$big" "$((64 * 1048576 + 4))"

# ---- a client that reads nothing of a 500 MiB stream ----
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
base=$(rss_kb "$SERVE_PID")
"$TOOL" http-slowread 127.0.0.1 "$PORT" "/shapes/stream?n=2000&size=262144&log=$WORK/slow.log" >"$WORK/slow.out" 2>&1 &
slow=$!
SERVE_PIDS+=("$slow")
wait_until 30 grep -qs flushed "$WORK/slow.log" && pass "the 500 MiB stream started" || fail "the 500 MiB stream started"
# The handler blocks once the windows on the way are full: wait until its progress stops moving
# (what is checked below holds whether or not it already did).
max=0 prev=-1 now=0
deadline=$((SECONDS + 30))
while [ "$SECONDS" -lt "$deadline" ]; do
        now=$(flushed "$WORK/slow.log")
        r=$(rss_kb "$SERVE_PID"); [ "$r" -gt "$max" ] && max=$r
        [ "$now" = "$prev" ] && break
        prev=$now
        sleep 1
done
for _ in 1 2 3 4 5 6 7 8 9 10; do r=$(rss_kb "$SERVE_PID"); [ "$r" -gt "$max" ] && max=$r; sleep 0.1; done
now=$(flushed "$WORK/slow.log")
check_contains "the handler is still in the stream (its flush waits)" "$(progress "$WORK/slow.log")" "flushed"
check "it flushed at most 32 MiB of the 500 MiB ($now bytes)" "$([ "$now" -le $((32 << 20)) ] && echo yes)" "yes"
if grep -qa -e __asan_init -e __tsan_init "$SERVE"; then
        pass "serve's RSS not measured in a sanitizer build (baseline ${base} kB, max ${max} kB)"
else
        check "serve's RSS stayed under its baseline + 64 MiB (${base} kB; max ${max} kB)" \
                "$([ "$max" -lt $((base + 65536)) ] && echo yes)" "yes"
fi
# A blocked stream stalls nothing else: the same replica streams to others meanwhile.
check "meanwhile the same replica streams to another client" "$(curl -s -m 10 "$U/shapes/stream?n=2")" "piece 0
piece 1"
check "... and answers plain requests" "$(curl -s -m 10 "$U/shapes/plain")" "/plain"
kill -KILL "$slow"
wait "$slow" 2>/dev/null
wait_until 30 grep -qs '^done' "$WORK/slow.log"
check_contains "the client gone, the handler's flush returns -ECANCELED" "$(progress "$WORK/slow.log")" "done -125 "

# ---- a client that goes away mid-stream ----
curl -sN -o "$WORK/c.out" -m 60 "$U/shapes/stream?n=0&gate=$WORK/gate-c&log=$WORK/c.log" &
curl_c=$!
wait_until 30 grep -qs "piece 0" "$WORK/c.out" && pass "an endless stream began" || fail "an endless stream began"
kill -KILL "$curl_c"
wait "$curl_c" 2>/dev/null
touch "$WORK/gate-c"
wait_until 30 grep -qs '^done' "$WORK/c.log"
check_contains "the client gone, the endless stream's flush returns -ECANCELED" "$(progress "$WORK/c.log")" "done -125 "
check "the replica serves the next stream" "$(curl -s -m 10 "$U/shapes/stream?n=1")" "piece 0"
check "it is the same replica process" "$(replica_pid shapes/Shapes)" "$pid"
check "no replica was killed during this test" "$(grep -c 'killing it\|invalid record' "$LOG")" "0"

kill -TERM "$SERVE_PID"
wait "$SERVE_PID"
check "serve run exits 0" "$?" "0"

# ---- across the data link: the client at one node, the replica at the other ----
if ! command -v jq >/dev/null; then
        pass "# SKIP cross-node streaming: jq is not installed"
        finish
        exit
fi
cluster_init 127.0.18 2
cat >"$CONF/apps.yaml" <<'YAML'
applications:
  - name: shapes
    route_prefix: /shapes
    import_path: shapes:app
    deployments:
      - name: Shapes
        num_replicas: 1
        ray_actor_options: {num_cpus: 0.25}
YAML
start_head || { fail "serve-head starts"; sed 's/^/#   /' "$WORK/head.log"; finish; exit 1; }
for n in 1 2; do start_worker "$n"; done
node_http() { echo "http://$NET.$(($1 + 1)):$HTTP_PORT"; }
one_running() { [ "$(running shapes Shapes | wc -l)" = 1 ]; }
wait_until 60 one_running && pass "two nodes, one shapes replica" || fail "two nodes, one shapes replica"
where=$(running shapes Shapes | cut -d' ' -f1)
other=1; [ "$where" = node-1 ] && other=2
UO=$(node_http "$other")
wait_until 30 bash -c "[ \"\$(curl -s -m 5 '$UO/shapes/x')\" = /x ]" && pass "the other node answers through its peer" ||
        fail "the other node answers through its peer"
curl -sN -D "$WORK/p.head" -o "$WORK/p.out" -m 60 "$UO/shapes/stream?n=3&gate=$WORK/gate-p&log=$WORK/p.log" &
curl_p=$!
wait_until 30 grep -qs "piece 0" "$WORK/p.out" && pass "through the peer: the first piece arrives while the handler waits" ||
        fail "through the peer: the first piece arrives while the handler waits"
check "... and only the first" "$(cat "$WORK/p.out")" "piece 0"
check_contains "... chunked" "$(cat "$WORK/p.head")" "Transfer-Encoding: chunked$CRLF"
touch "$WORK/gate-p"
wait "$curl_p"
check "through the peer: every piece, in order" "$(cat "$WORK/p.out")" "piece 0
piece 1
piece 2"
big=$(curl -s -m 60 -w ' %{http_code}' "$UO/shapes/stream?n=64&size=1048576" | wc -c)
check "through the peer: 64 pieces of 1 MiB arrive whole" "$big" "$((64 * 1048576 + 4))"
curl -sN -o "$WORK/q.out" -m 60 "$UO/shapes/stream?n=0&gate=$WORK/gate-q&log=$WORK/q.log" &
curl_q=$!
wait_until 30 grep -qs "piece 0" "$WORK/q.out" && pass "through the peer: an endless stream began" ||
        fail "through the peer: an endless stream began"
kill -KILL "$curl_q"
wait "$curl_q" 2>/dev/null
touch "$WORK/gate-q"
wait_until 30 grep -qs '^done' "$WORK/q.log"
check_contains "through the peer: the client gone, the handler's flush returns -ECANCELED" "$(progress "$WORK/q.log")" "done -125 "
# A client there that reads nothing: its node stops reading the link, the link's budget fills at
# the replica's node, which then credits nothing more, and the handler waits.
NODE_HOST=$NET.$((other + 1))
"$TOOL" http-slowread "$NODE_HOST" "$HTTP_PORT" "/shapes/stream?n=2000&size=262144&log=$WORK/ps.log" >"$WORK/ps.out" 2>&1 &
slow=$!
SERVE_PIDS+=("$slow")
wait_until 30 grep -qs flushed "$WORK/ps.log" && pass "through the peer: a 500 MiB stream started" ||
        fail "through the peer: a 500 MiB stream started"
prev=-1 deadline=$((SECONDS + 30))
while [ "$SECONDS" -lt "$deadline" ]; do
        now=$(flushed "$WORK/ps.log")
        [ "$now" = "$prev" ] && break
        prev=$now
        sleep 1
done
now=$(flushed "$WORK/ps.log")
check_contains "through the peer: the handler of a client that reads nothing waits" "$(progress "$WORK/ps.log")" "flushed"
check "... having flushed at most 64 MiB of the 500 MiB ($now bytes)" "$([ "$now" -le $((64 << 20)) ] && echo yes)" "yes"
kill -KILL "$slow"
wait "$slow" 2>/dev/null
wait_until 30 grep -qs '^done' "$WORK/ps.log"
check_contains "... and once that client is gone, its flush returns -ECANCELED" "$(progress "$WORK/ps.log")" "done -125 "
check "the other node streams again" "$(curl -s -m 10 "$UO/shapes/stream?n=1")" "piece 0"
check "no data link was dropped" "$(cat "$WORK"/worker-*.log | grep -c 'invalid frame\|closing its data link')" "0"
finish
