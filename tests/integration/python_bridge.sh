#!/usr/bin/env bash
# Python deployments through serve-replica's bridge (serve_python.so): --describe of a .py
# module with its code defaults, module search (.so vs .py), a round trip through `serve run`,
# an exception in a handler (500, one traceback in the log), in __init__ (the start fails with
# its message), and user_config from code overridden by apps.yaml.
set -u
. "$(dirname "$0")/lib.sh"

if [ ! -f "$SERVE_PYTHON_BRIDGE" ]; then
        echo "1..0 # SKIP serve was built without Python (configure --with-python)"
        exit 77
fi
if [ ! -f "$SERVE_PYTHON_PATH/serve/_runtime.py" ]; then
        echo "1..0 # SKIP no serve Python package in $SERVE_PYTHON_PATH"
        exit 77
fi
export SERVE_APP_PATH="$SERVE_APP_PATH:$top_srcdir/tests/apps"
R=$top_builddir/serve-replica

# ---- --describe ----
out=$("$R" --describe pybridge:app 2>&1)
# The module is named by its resolved path (make check's top_srcdir may be "build/..").
check_contains "--describe finds pybridge.py along SERVE_APP_PATH" "$out" '"module":"'"$(cd "$top_srcdir" && pwd -P)"'/tests/apps/pybridge.py"'
check_contains "--describe: the class's handlers" "$out" '"handlers":["__call__"]'
check_contains "--describe: max_ongoing_requests from the decorator" "$out" '"max_ongoing_requests":2'
check_contains "--describe: user_config default from code" "$out" '"user_config":"{\"greeting\": \"hi\"}"'
check_contains "--describe: autoscaling_config default from code" "$out" '"autoscaling_config":"{\"min_replicas\": 1, \"max_replicas\": 2}"'
out=$("$R" --describe pybridge:nosuch 2>&1)
check_contains "a missing symbol names the module and the symbol" "$out" "nosuch"
check_contains "... and the module path" "$out" "pybridge.py"
out=$("$R" --describe nosuchmodule:app 2>&1)
check_contains "a missing module names both extensions" "$out" "nosuchmodule.so or nosuchmodule.py"
check_contains "... and the directories searched" "$out" "$top_srcdir/tests/apps"
mkdir -p "$WORK/both"
cp "$top_srcdir/tests/apps/pybridge.py" "$WORK/both/echo.py"
out=$(SERVE_APP_PATH="$WORK/both:$SERVE_APP_PATH" "$R" --describe echo:app 2>&1)
check_contains "echo.py and echo.so both found: an error naming both" "$out" "$WORK/both/echo.py"
check_contains "... the .so too" "$out" "echo.so"
out=$(SERVE_PYTHON_BRIDGE=$WORK/nowhere.so "$R" --describe pybridge:app 2>&1)
check_contains "no bridge: a clear error" "$out" "Python deployments need serve's Python support (serve_python.so)"

# ---- serving ----
cat >"$WORK/apps.yaml" <<'YAML'
applications:
  - name: py
    route_prefix: /py
    import_path: pybridge:app
  - name: pyconf
    route_prefix: /pyconf
    import_path: pybridge:app
    deployments:
      - name: PyBridge
        user_config: {greeting: yaml}
  - name: pyfail
    route_prefix: /pyfail
    import_path: pybridge:failing
YAML
start_serve main "$WORK/apps.yaml" || { fail "serve run starts"; finish; exit 1; }
U=http://127.0.0.1:$PORT
wait_until 60 answers_200 /py && pass "Python replica ready" || fail "Python replica ready"
check "round trip: JSON out, user_config from code applied" "$(curl -s -m 10 -d abc "$U/py")" '{"greeting":"hi","body":"abc"}'
check "JSON answers say so" "$(curl -s -m 10 -o /dev/null -w '%{content_type}' "$U/py")" "application/json"
wait_until 60 answers_200 /pyconf || fail "second Python application ready"
check "apps.yaml's user_config overrides the code's" "$(curl -s -m 10 -d x "$U/pyconf")" '{"greeting":"yaml","body":"x"}'
check "an exception in a handler answers 500" "$(http_code "$U/py/boom")" "500"
body=$(curl -s -m 10 "$U/py/boom")
check_contains "... with a short message" "$body" "ValueError: bad input"
case "$body" in *Traceback*) fail "no traceback goes to the client";; *) pass "no traceback goes to the client";; esac
wait_until 10 grep -q "ValueError: bad input" "$LOG" && pass "the exception is logged" || fail "the exception is logged"
pids=()
for i in 1 2 3 4 5 6; do curl -s -m 10 -o /dev/null -d "$i" "$U/py" & pids+=($!); done
wait "${pids[@]}"
check "concurrent requests after a failure all succeed" "$(http_code -d ok "$U/py")" "200"
wait_until 30 grep -q "init refused: fail_init was set" "$LOG" &&
        pass "an exception in __init__ fails the start with its message" ||
        fail "an exception in __init__ fails the start with its message"
code=$(http_code -m 2 "$U/pyfail")
[ "$code" != 200 ] && pass "the failing application is not served ($code)" || fail "the failing application is not served"
kill -TERM "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null
grep -qE "AddressSanitizer|runtime error:" "$LOG" && fail "no sanitizer reports" || pass "no sanitizer reports"
finish
