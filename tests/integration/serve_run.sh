#!/usr/bin/env bash
# `serve run` end to end: the request path through the io_uring proxy, the rings and replica
# processes, HTTP framing and limits, queueing and 503, timeouts, replica failures, reloads.
set -u
. "$(dirname "$0")/lib.sh"

cat >"$WORK/apps.yaml" <<'YAML'
http_options:
  max_request_body_bytes: 2000000
applications:
  - name: echo
    route_prefix: /echo
    import_path: echo:app
    deployments:
      - name: Echo
        max_ongoing_requests: 2
  - name: slow
    route_prefix: /slow
    import_path: slow:app
    deployments:
      - name: Slow
        max_ongoing_requests: 1
        max_queued_requests: 2
  - name: evil
    route_prefix: /evil
    import_path: evil:app
    deployments:
      - name: Evil
        health_check_period_s: 0.2
        health_check_timeout_s: 1
YAML

start_serve main "$WORK/apps.yaml" || { fail "serve run starts"; finish; exit 1; }
wait_until 30 answers_200 /echo && pass "echo replica ready" || fail "echo replica ready"
wait_until 30 answers_200 /slow?ms=1 || fail "slow replica ready"
wait_until 30 answers_200 /evil/ || fail "evil replica ready"
U=http://127.0.0.1:$PORT

# ---- round trips ----
check "echo small body" "$(curl -s -m 10 -d hi "$U/echo")" "hi"
check "echo empty body says hello" "$(curl -s -m 10 "$U/echo")" "hello"
check "echo keeps Content-Type" "$(curl -s -m 10 -o /dev/null -w '%{content_type}' -H 'Content-Type: application/json' -d '{}' "$U/echo")" "application/json"
head -c 1048576 /dev/urandom >"$WORK/1m.bin"
curl -s -m 30 --data-binary @"$WORK/1m.bin" -H 'Content-Type: application/octet-stream' "$U/echo" -o "$WORK/1m.out"
check "echo 1 MiB body intact" "$(cmp -s "$WORK/1m.bin" "$WORK/1m.out" && echo same)" "same"
curl -s -m 30 -H 'Transfer-Encoding: chunked' --data-binary @"$WORK/1m.bin" "$U/echo" -o "$WORK/1m.chunked"
check "echo chunked 1 MiB upload intact" "$(cmp -s "$WORK/1m.bin" "$WORK/1m.chunked" && echo same)" "same"
head -c 1500000 /dev/urandom >"$WORK/1500k.bin"
pids=()
for i in 1 2 3 4 5 6 7 8; do
        curl -s -m 60 --data-binary @"$WORK/1500k.bin" "$U/echo" -o "$WORK/par.$i" &
        pids+=($!)
done
wait "${pids[@]}"
same=0; for i in 1 2 3 4 5 6 7 8; do cmp -s "$WORK/1500k.bin" "$WORK/par.$i" && same=$((same + 1)); done
check "8 concurrent 1.5 MB bodies, 2 at a time (more than the ring holds), all intact" "$same" "8"
check "/-/healthz" "$(curl -s -m 5 "$U/-/healthz")" "success"
check_contains "/-/routes lists the applications" "$(curl -s -m 5 "$U/-/routes")" '"/echo":"echo"'
check "query string reaches the replica" "$(curl -s -m 10 -o /dev/null -w '%{http_code}' "$U/slow?ms=5")" "200"
check "route prefix matches subpaths" "$(http_code "$U/echo/sub/path")" "200"
check "route prefix does not match a longer word" "$(http_code "$U/echoes")" "404"

# ---- keep-alive and pipelining on one connection ----
out=$(raw 'GET /echo HTTP/1.1\r\nHost: t\r\n\r\nPOST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabcGET /-/healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n')
check "three pipelined requests, three answers" "$(grep -o 'HTTP/1.1 200' <<<"$out" | wc -l)" "3"
check "pipelined answers in order" "$(tr -d '\r' <<<"$out" | grep -oE '^(hello|abc|success)' | tr '\n' ' ')" "hello abc success "
check "keep-alive reuses one connection" "$(curl -s -m 10 -o /dev/null -o /dev/null -w '%{num_connects}\n' "$U/echo" "$U/echo" | tr '\n' ' ')" "1 0 "
out=$(raw 'POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-Trailer: y\r\n\r\n')
check_contains "chunked body with extension and trailer" "$out" $'\r\n\r\nabcde'

# ---- errors and limits ----
check "unknown route 404" "$(http_code "$U/nothing-here")" "404"
check_contains "malformed request line 400" "$(raw 'GET  /echo HTTP/1.1\r\nHost: t\r\n\r\n')" "HTTP/1.1 400"
check_contains "Content-Length with Transfer-Encoding 400" "$(raw 'POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n')" "HTTP/1.1 400"
check_contains "duplicate Content-Length 400" "$(raw 'POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc')" "HTTP/1.1 400"
check_contains "obs-fold 400" "$(raw 'GET /echo HTTP/1.1\r\nHost: t\r\nX-A: a\r\n b\r\n\r\n')" "HTTP/1.1 400"
check_contains "bad chunk size 400" "$(raw 'POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n')" "HTTP/1.1 400"
check_contains "NUL byte in a header 400" "$(raw 'GET /echo HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n')" "HTTP/1.1 400"
check_contains "error closes the connection" "$(raw 'GET  /echo HTTP/1.1\r\nHost: t\r\n\r\nGET /echo HTTP/1.1\r\nHost: t\r\n\r\n' | grep -c '^HTTP/1.1')" "1"
long=$(head -c 20000 /dev/zero | tr '\0' a)
check "request line too long 414" "$(http_code "$U/echo?$long")" "414"
check "headers too large 431" "$(http_code -H "X-Big: $long$long$long$long" "$U/echo")" "431"
head -c 2000001 /dev/zero >"$WORK/big.bin"
check "body over the limit 413 (Content-Length)" "$(http_code --data-binary @"$WORK/big.bin" "$U/echo")" "413"
check "body over the limit 413 (chunked)" "$(http_code -H 'Transfer-Encoding: chunked' --data-binary @"$WORK/big.bin" "$U/echo")" "413"
check "HTTP/1.0 works and closes" "$(curl -s -m 5 -0 -d x "$U/echo")" "x"

# ---- max_ongoing_requests 1 + max_queued_requests 2: 20 concurrent requests ----
for i in $(seq 1 20); do
        curl -s -m 30 -o /dev/null -D "$WORK/h.$i" -w '%{http_code}\n' "$U/slow?ms=1500" >"$WORK/code.$i" &
done
wait_until 40 bash -c "[ \$(cat $WORK/code.* 2>/dev/null | grep -c .) -ge 20 ]"
codes=$(cat "$WORK"/code.* | sort | uniq -c | awk '{print $2"x"$1}' | tr '\n' ' ')
n200=$(cat "$WORK"/code.* | grep -c '^200$'); n503=$(cat "$WORK"/code.* | grep -c '^503$')
check "20 concurrent: only 200 and 503 ($codes)" "$((n200 + n503))" "20"
check "20 concurrent: the one running and the two queued succeed (>= 3 x 200)" "$([ "$n200" -ge 3 ] && echo yes)" "yes"
check "20 concurrent: the rest are refused with 503 (>= 1)" "$([ "$n503" -ge 1 ] && echo yes)" "yes"
retry=$(grep -l '^HTTP/1.1 503' "$WORK"/h.* | xargs grep -il '^Retry-After:' | wc -l)
check "every 503 has Retry-After" "$retry" "$n503"

# ---- a client that goes away cancels its request at the replica ----
# Slow has max_ongoing_requests 1: unless the abandoned 20 s request is cancelled, the next
# request waits behind it for far longer than its 5 s budget.
check "client gives up (curl timeout)" "$(http_code -m 1 "$U/slow?ms=20000")" "000"
check "the abandoned request was cancelled at the replica" "$(http_code -m 5 "$U/slow?ms=1")" "200"

# ---- a replica crashing mid-request: 502 now, the next request succeeds ----
# held_request QUERY SIGNAL PID: sends a request that the Evil replica holds (/evil/hold), and once
# the replica logged its arrival sends SIGNAL to PID; prints the request's status code.
held_count() { grep -c 'evil: holding a request' "$LOG"; }
held_at_least() { [ "$(held_count)" -ge "$1" ]; }
held_request() {
        local want=$(($(held_count) + 1)) cpid
        curl -s -m 30 -o /dev/null -w '%{http_code}' "$U/evil/hold$1" &
        cpid=$!
        wait_until 10 held_at_least "$want" ||
                echo "# the request never reached the replica" >&2
        kill "-$2" "$3"
        wait "$cpid"
}
pid=$(replica_pid evil/Evil)
check "replica SIGKILL mid-request -> 502" "$(held_request "" KILL "$pid")" "502"
wait_until 30 answers_200 /evil/ && pass "the restarted replica serves the next request" || fail "the restarted replica serves the next request"
newpid=$(replica_pid evil/Evil)
check "a new replica process replaced the killed one" "$([ -n "$newpid" ] && [ "$newpid" != "$pid" ] && echo yes)" "yes"

# ---- a replica writing garbage into its ring: 502, everyone else keeps being served ----
check "garbage in the ring -> 502" "$(http_code "$U/evil/garbage")" "502"
check "echo still served after a bad replica" "$(curl -s -m 10 -d ok "$U/echo")" "ok"
grep -q "evil/Evil#[0-9]* wrote an invalid record" "$LOG" && pass "the bad replica is named in the log" || fail "the bad replica is named in the log"
wait_until 30 answers_200 /evil/ && pass "the bad replica was replaced" || fail "the bad replica was replaced"

# ---- a hung replica (missed heartbeats past health_check_timeout_s): 504, replaced ----
pid=$(replica_pid evil/Evil)
check "hung replica -> 504" "$(held_request "" STOP "$pid")" "504"
wait_until 30 answers_200 /evil/ && pass "the hung replica was replaced" || fail "the hung replica was replaced"
kill -KILL "$pid" 2>/dev/null

# ---- reload: invalid file keeps the old config; valid file applies ----
cp "$WORK/apps.yaml" "$WORK/apps.good"
printf 'applications:\n  - name: echo\n    route_prefix: /echo\n    import_path: echo:app\n    bogus_key: 1\n' >"$WORK/apps.yaml"
kill -HUP "$SERVE_PID"
wait_until 10 grep -q "reload failed" "$LOG"
check_contains "invalid reload is logged with file:line:column" "$(grep 'reload failed' "$LOG")" "apps.yaml:5:5"
check "old config still serves after an invalid reload" "$(curl -s -m 10 -d still "$U/echo")" "still"
echopid=$(replica_pid echo/Echo)
sed 's|route_prefix: /slow|route_prefix: /slower|' "$WORK/apps.good" >"$WORK/apps.yaml"
kill -HUP "$SERVE_PID"
wait_until 20 answers_200 "/slower?ms=1" && pass "valid reload serves the new route" || fail "valid reload serves the new route"
check "the old route is gone" "$(http_code "$U/slow?ms=1")" "404"
check "an unchanged deployment keeps its replica" "$(replica_pid echo/Echo)" "$echopid"
check "the unchanged replica process still runs" "$(kill -0 "$echopid" && echo alive)" "alive"

# ---- graceful stop: in-flight requests finish, exit 0 ----
held_request "?ms=1500" TERM "$SERVE_PID" >"$WORK/drain.code" &
hpid=$!
wait "$SERVE_PID"; rc=$?
wait "$hpid"
check "SIGTERM exits 0" "$rc" "0"
check "in-flight request finished during drain" "$(cat "$WORK/drain.code")" "200"
check "no replica process left" "$(pgrep -f "serve-replica --control-fd" -P "$SERVE_PID" | wc -l)" "0"

# ---- Ctrl-C honours graceful_shutdown_timeout_s beyond the old caps (20 s in the replica,
# 30 s in the drain): the terminal signals the whole process group, replicas included, and a
# 21 s request still finishes ----
cat >"$WORK/graceful.yaml" <<'YAML'
applications:
  - name: evil
    route_prefix: /evil
    import_path: evil:app
    deployments:
      - name: Evil
        graceful_shutdown_timeout_s: 24
YAML
GPORT=$(free_port)
setsid "$SERVE" run --http-host 127.0.0.1 --http-port "$GPORT" "$WORK/graceful.yaml" >"$WORK/graceful.log" 2>&1 &
GPID=$!
wait_until 30 bash -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' -m 5 http://127.0.0.1:$GPORT/evil/)\" = 200 ]" ||
        fail "serve run with graceful_shutdown_timeout_s 24 starts"
curl -s -m 60 -o "$WORK/graceful.body" -w '%{http_code}' "http://127.0.0.1:$GPORT/evil/hold?ms=21000" >"$WORK/graceful.code" &
gcurl=$!
wait_until 10 grep -q "evil: holding a request" "$WORK/graceful.log" || fail "the long request reached the replica"
kill -INT -- "-$GPID"
wait "$GPID"; grc=$?
wait "$gcurl"
check "Ctrl-C: exits 0 after draining" "$grc" "0"
check "Ctrl-C: a request of 21 s finishes within graceful_shutdown_timeout_s 24" "$(cat "$WORK/graceful.code")" "200"
check "Ctrl-C: its body arrived" "$(cat "$WORK/graceful.body")" "held"

# ---- request_timeout_s -> 504 ----
cat >"$WORK/timeout.yaml" <<'YAML'
http_options:
  request_timeout_s: 0.5
  keep_alive_timeout_s: 1
  header_timeout_s: 60
applications:
  - name: slow
    route_prefix: /slow
    import_path: slow:app
    deployments:
      - name: Slow
        max_ongoing_requests: 1
YAML
start_serve timeout "$WORK/timeout.yaml" || fail "serve run with request_timeout_s starts"
wait_until 30 answers_200 "/slow?ms=1"
check "request_timeout_s -> 504" "$(http_code "http://127.0.0.1:$PORT/slow?ms=10000")" "504"
# One handler thread: this only succeeds if the timed-out request was cancelled in the replica.
check "the timed-out request was cancelled in the replica" "$(http_code "http://127.0.0.1:$PORT/slow?ms=1")" "200"
# keep_alive_timeout_s closes an idle connection, also after a request the proxy answered itself
# (the 5 s read budget is far below header_timeout_s, so only the keep-alive timer can close it).
idle_closed() {
        exec 3<>"/dev/tcp/127.0.0.1/$PORT" || return 1
        printf 'GET %s HTTP/1.1\r\nHost: t\r\n\r\n' "$1" >&3
        timeout 5 cat <&3 >/dev/null; local rc=$?
        exec 3<&-
        [ "$rc" -eq 0 ]
}
idle_closed /-/healthz && pass "idle keep-alive closed after /-/healthz" || fail "idle keep-alive closed after /-/healthz"
idle_closed /nothing && pass "idle keep-alive closed after a 404" || fail "idle keep-alive closed after a 404"
idle_closed "/slow?ms=1" && pass "idle keep-alive closed after a replica's answer" || fail "idle keep-alive closed after a replica's answer"
kill -TERM "$SERVE_PID"; wait "$SERVE_PID"

# ---- config errors stop `serve run` at start with file:line:column ----
printf 'applications:\n  - name: a\n    import_path: nosuchmodule:app\n' >"$WORK/bad.yaml"
out=$("$SERVE" run --http-port "$(free_port)" "$WORK/bad.yaml" 2>&1); rc=$?
check "missing module: exit 1" "$rc" "1"
check_contains "missing module: names the module" "$out" "nosuchmodule"
printf 'applications:\n  - name: a\n    import_path: echo:nosymbol\n' >"$WORK/bad2.yaml"
out=$("$SERVE" run --http-port "$(free_port)" "$WORK/bad2.yaml" 2>&1)
check_contains "missing symbol: names the symbol" "$out" "nosymbol"
check_contains "missing symbol: names the file" "$out" "echo.so"

finish
