#!/usr/bin/env bash
# The HTTP data plane of `serve run` against clients that push at its edges: responses without a
# body on the wire (HEAD, 204, 304) followed by pipelined requests, path normalisation before
# routing, a handler answering a 1xx status, a client that never reads a 256 MiB response, and
# the node's budget for buffered request bodies.
#
# Bounds stated by this test:
#   - slow reader: the `serve run` process (the proxy; replicas are other processes) stays below
#     its baseline RSS + 64 MiB for as long as a client holds an unread 256 MiB response, and the
#     connection is closed within 60 s (the server's limit is max(keep_alive_timeout_s,
#     header_timeout_s) = 5 s of no read progress).
#   - request bodies: with max_buffered_request_bytes = max_request_body_bytes = 1 MiB, one body
#     being received is all the node takes; a second gets 503 with Retry-After until the first
#     is done or gone.
set -u
. "$(dirname "$0")/lib.sh"

TOOL=$top_builddir/tests/tools/hostile_peer
command -v ss >/dev/null || { echo "1..0 # SKIP ss (iproute2) is not installed"; exit 77; }

cat >"$WORK/apps.yaml" <<'YAML'
http_options:
  keep_alive_timeout_s: 2
  header_timeout_s: 5
  max_request_body_bytes: 1048576
  max_buffered_request_bytes: 1048576
applications:
  - name: echo
    route_prefix: /echo
    import_path: echo:app
  - name: shapes
    route_prefix: /shapes
    import_path: shapes:app
YAML

start_serve dataplane "$WORK/apps.yaml" || { fail "serve run starts"; finish; exit 1; }
wait_until 30 answers_200 /echo && pass "echo replica ready" || fail "echo replica ready"
wait_until 30 answers_200 /shapes/ && pass "shapes replica ready" || fail "shapes replica ready"
U=http://127.0.0.1:$PORT
CRLF=$'\r\n'
BLANK=$'\r\n\r\n'

# ---- responses without a body on the wire, then a pipelined request on the same connection ----
# pipelined FIRST_REQUEST: sends FIRST_REQUEST and then "GET /echo" (Connection: close) on one
# connection; sets HEAD1 (the first response's head), REST (everything after it) and BODY2 (the
# body of the second response; the command substitution drops its final newline).
pipelined() {
        local out
        # (64 KiB at most: a server that sends a body here must not make the checks below slow)
        out=$(raw "$1"'GET /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n' | head -c 65536)
        HEAD1=${out%%"$BLANK"*}
        REST=${out#*"$BLANK"}
        BODY2=${REST#*"$BLANK"}
        NRESP=$(grep -c '^HTTP/1.1 ' <<<"$out")
}
pipelined 'HEAD /echo HTTP/1.1\r\nHost: t\r\n\r\n'
check "HEAD + GET pipelined: exactly two responses" "$NRESP" "2"
check_contains "HEAD: 200" "$HEAD1" "HTTP/1.1 200"
check_contains "HEAD: Content-Length of what GET would get" "$HEAD1$CRLF" "Content-Length: 6$CRLF"
check "HEAD: no body (the next response follows its head)" "${REST:0:12}" "HTTP/1.1 200"
check "HEAD: the pipelined GET's body is intact" "$BODY2" "hello"

pipelined 'HEAD /shapes/big?mb=8 HTTP/1.1\r\nHost: t\r\n\r\n'
check_contains "HEAD of an 8 MiB response: its Content-Length" "$HEAD1$CRLF" "Content-Length: 8388608$CRLF"
check "HEAD of an 8 MiB response: no body, the next response follows" "${REST:0:12}" "HTTP/1.1 200"
check "HEAD of an 8 MiB response: the pipelined GET's body is intact" "$BODY2" "hello"

pipelined 'GET /shapes/status?code=204 HTTP/1.1\r\nHost: t\r\n\r\n'
check "204 + GET pipelined: exactly two responses" "$NRESP" "2"
check_contains "204: status" "$HEAD1" "HTTP/1.1 204"
check "204: no Content-Length" "$(grep -ci '^Content-Length' <<<"$HEAD1")" "0"
check "204: no body (the next response follows its head)" "${REST:0:12}" "HTTP/1.1 200"
check "204: the pipelined GET's body is intact" "$BODY2" "hello"

pipelined 'GET /shapes/status?code=304 HTTP/1.1\r\nHost: t\r\n\r\n'
check "304 + GET pipelined: exactly two responses" "$NRESP" "2"
check_contains "304: status" "$HEAD1" "HTTP/1.1 304"
check "304: no body (the next response follows its head)" "${REST:0:12}" "HTTP/1.1 200"
check "304: the pipelined GET's body is intact" "$BODY2" "hello"

# ---- paths are normalised before routing; the handler sees the normalised path ----
seen() { curl -s -m 10 --path-as-is "$U$1"; }
code() { http_code --path-as-is "$U$1"; }
check "/echo/../../-/x climbs above / -> 400" "$(code '/echo/../../-/x')" "400"
check "/shapes/a/../path: the handler sees /path" "$(seen '/shapes/a/../path')" "/path"
check "/shapes//path: // merged" "$(seen '/shapes//path')" "/path"
check "/shapes/./path/.: dot segments removed" "$(seen '/shapes/./path/.')" "/path/"
check "/x/../shapes/path is routed to shapes" "$(seen '/x/../shapes/path')" "/path"
check "/shapes/%2e%2e/shapes/path: %2e%2e is a dot-segment" "$(seen '/shapes/%2e%2e/shapes/path')" "/path"
check "/shapes/%2e%2e/x leaves /shapes: routed on /x -> 404" "$(code '/shapes/%2e%2e/x')" "404"
check "/shapes/%2E%2e/%2e%2e/x climbs above / -> 400" "$(code '/shapes/%2E%2e/%2e%2e/x')" "400"
check "/shapes/a%2fb: %2f is data, kept" "$(seen '/shapes/a%2fb')" "/a%2fb"
check "/shapes%2fpath is not under /shapes -> 404" "$(code '/shapes%2fpath')" "404"
check "the query is not normalised" "$(seen '/shapes/path?x=/../y')" "/path?x=/../y"
m40=$(head -c 40 /dev/zero | tr '\0' M)
check_contains "a 40-byte method -> 501" "$(raw "$m40 /echo HTTP/1.1\\r\\nHost: t\\r\\n\\r\\n")" "HTTP/1.1 501"
m1k=$(head -c 1024 /dev/zero | tr '\0' M)
check_contains "a 1024-byte method, line not finished -> 501 as it arrives" "$(raw "$m1k")" "HTTP/1.1 501"

# ---- a handler answering 1xx: the client gets 500, the replica survives ----
pid=$(replica_pid shapes/Shapes)
check "status 101 from a handler -> 500" "$(http_code "$U/shapes/status?code=101")" "500"
check "status 600 from a handler -> 500" "$(http_code "$U/shapes/status?code=600")" "500"
check "the same replica serves the next request" "$(curl -s -m 10 "$U/shapes/status?code=201")" "status 201"
check "the replica process is the same" "$(replica_pid shapes/Shapes)" "$pid"
check "the replica process still runs" "$(kill -0 "$pid" 2>/dev/null && echo alive)" "alive"
grep -q "set status 101" "$LOG" && pass "the log names the bad status" || fail "the log names the bad status"
check "no replica was killed for it" "$(grep -c 'killing it\|invalid record' "$LOG")" "0"

# ---- a client that never reads a 256 MiB response ----
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
# server_conn CLIENT_PORT: the server's end of that connection, as ss prints it ("" once closed)
server_conn() { ss -Htn state established "( sport = :$PORT and dport = :$1 )"; }
send_q() { server_conn "$1" | awk '{ print $2 }'; }
stuck() { [ "$(send_q "$1")" -gt 0 ] 2>/dev/null; }
base=$(rss_kb "$SERVE_PID")
bound=$((base + 64 * 1024))
"$TOOL" http-slowread 127.0.0.1 "$PORT" '/shapes/big?mb=256' >"$WORK/slow.out" 2>&1 &
slow=$!
SERVE_PIDS+=("$slow")
wait_until 10 grep -q '^sent local_port=' "$WORK/slow.out"
cport=$(sed -n 's/^sent local_port=//p' "$WORK/slow.out")
wait_until 30 stuck "$cport" && pass "the response waits in the server's socket (the client reads nothing)" ||
        fail "the response waits in the server's socket (the client reads nothing)"
check "while it is held, other clients are served" "$(curl -s -m 30 -d other "$U/echo")" "other"
max=0
deadline=$((SECONDS + 60))
while [ -n "$(server_conn "$cport")" ] && [ "$SECONDS" -lt "$deadline" ]; do
        r=$(rss_kb "$SERVE_PID"); [ "$r" -gt "$max" ] && max=$r
        sleep 0.05
done
r=$(rss_kb "$SERVE_PID"); [ "$r" -gt "$max" ] && max=$r
check "the server closed the connection of the client that does not read" "$(server_conn "$cport")" ""
if grep -qa -e __asan_init -e __tsan_init "$SERVE"; then
        # AddressSanitizer keeps freed memory in quarantine: RSS says nothing there.
        pass "serve's RSS not measured in a sanitizer build (baseline ${base} kB, max ${max} kB)"
else
        check "serve's RSS stayed under its baseline + 64 MiB (${base} kB + 65536 kB; max ${max} kB)" \
                "$([ "$max" -lt "$bound" ] && echo yes)" "yes"
fi
kill -USR1 "$slow"
wait "$slow"
out=$(cat "$WORK/slow.out")
got=$(sed -n 's/^read \([0-9]*\) bytes.*/\1/p' <<<"$out")
check_contains "the client, reading at last, finds the connection closed" "$out" "bytes: "
check "... before the whole response ($got bytes read)" "$([ -n "$got" ] && [ "$got" -lt 268435456 ] && echo truncated)" "truncated"
[[ "$out" == *timeout* ]] && fail "the connection ends (eof or reset), it does not hang" ||
        pass "the connection ends (eof or reset), it does not hang"
wait_until 60 bash -c "[ \"\$(curl -s -m 5 '$U/shapes/status?code=200')\" = 'status 200' ]" &&
        pass "the replica of the abandoned response serves again" || fail "the replica of the abandoned response serves again"
check "it is the same replica process" "$(replica_pid shapes/Shapes)" "$pid"

# ---- the request-body budget (max_buffered_request_bytes = 1 MiB) ----
# hold FD_VAR: opens a connection in FD_VAR and sends the head of a 1 MiB POST and 1000 bytes of
# its body; waits (bounded) until the server has read them.
client_port() { ss -Htnp state established "( dport = :$PORT )" | grep "pid=$$,fd=$1)" | awk '{ print $3 }' | sed 's/.*://'; }
server_read_all() { local p; p=$(client_port "$1"); [ -n "$p" ] && [ "$(server_conn "$p" | awk '{ print $1 }')" = 0 ]; }
hold() {
        local fd
        exec {fd}<>"/dev/tcp/127.0.0.1/$PORT"
        printf 'POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1048576\r\nConnection: close\r\n\r\n' >&"$fd"
        head -c 1000 /dev/zero >&"$fd"
        wait_until 10 server_read_all "$fd" || echo "# the server did not read the held body" >&2
        printf -v "$1" '%s' "$fd"
}
# second: a POST of 1 MiB on its own connection; prints the server's answer to its head
second() {
        local fd out
        exec {fd}<>"/dev/tcp/127.0.0.1/$PORT"
        printf 'POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1048576\r\n\r\n' >&"$fd"
        out=$(timeout 5 cat <&"$fd")
        exec {fd}>&-
        printf '%s' "$out"
}
hold A
out=$(second)
check_contains "a second 1 MiB body while one is received: 503" "$out" "HTTP/1.1 503"
check_contains "... with Retry-After" "$out" "Retry-After:"
head -c $((1048576 - 1000)) /dev/zero >&"$A"
timeout 10 cat <&"$A" >"$WORK/first.out"
exec {A}>&-
check_contains "the first body, once complete, is served" "$(head -c 20 "$WORK/first.out")" "HTTP/1.1 200"
check "... whole (its 1 MiB echoed)" "$(($(wc -c <"$WORK/first.out") > 1048576))" "1"
head -c 1048576 /dev/zero >"$WORK/1m.bin"
check "after it, a new 1 MiB body is accepted" "$(http_code --data-binary @"$WORK/1m.bin" "$U/echo")" "200"
hold C
check_contains "again a second body while one is held: 503" "$(second)" "HTTP/1.1 503"
exec {C}>&-
wait_until 10 bash -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' -m 10 --data-binary @'$WORK/1m.bin' '$U/echo')\" = 200 ]" &&
        pass "after the holder went away, a new 1 MiB body is accepted" ||
        fail "after the holder went away, a new 1 MiB body is accepted"
check "no replica was killed during this test" "$(grep -c 'killing it\|invalid record' "$LOG")" "0"

kill -TERM "$SERVE_PID"
wait "$SERVE_PID"
check "serve run exits 0" "$?" "0"
finish
