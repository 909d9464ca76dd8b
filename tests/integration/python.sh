#!/usr/bin/env bash
# Python deployments end to end under `serve run`: replicas embedding CPython through the bridge
# (serve_python.so) and the serve package (python/). Skipped when serve was built without
# Python (configure --with-python=no) or NumPy (python3-numpy) is missing.
set -u
. "$(dirname "$0")/lib.sh"

BRIDGE=$top_builddir/.libs/serve_python.so
[ -f "$BRIDGE" ] || { echo "SKIP: built without Python support (no $BRIDGE)"; exit 77; }
/usr/bin/python3 -c 'import numpy' 2>/dev/null || { echo "SKIP: python3-numpy is missing"; exit 77; }
export SERVE_PYTHON_BRIDGE=$BRIDGE SERVE_PYTHON_PATH=$top_srcdir/python
EX=$top_srcdir/examples/python

cat >"$WORK/t.py" <<'PY'
import asyncio, os, time
from serve import Response, deployment
from serve.exceptions import RayServeException

@deployment(user_config={"greeting": "hello"})
class T:
    def __init__(self):
        self.greeting = None
    def reconfigure(self, cfg):
        self.greeting = cfg["greeting"]
    def __call__(self, request):
        # HTTP always calls __call__ (as in Ray): route on the path's last part
        name = request.path.rstrip("/").rsplit("/", 1)[-1]
        if name in ("status", "fail", "slow", "aslow", "stream"):
            return getattr(self, name)(request)  # a coroutine or a generator is fine
        return {"got": request.json(), "query": request.query, "pid": os.getpid(),
                "greeting": self.greeting, "ct": request.headers.get("content-type")}
    def status(self, request):
        return Response(b"teapot", status=418, headers={"X-Served-By": "python"})
    def fail(self, request):
        raise ValueError("bad input")
    def slow(self, request):
        t0 = time.time()
        time.sleep(float(request.query.get("s", "1")))
        return {"t0": t0, "t1": time.time(), "pid": os.getpid()}
    async def aslow(self, request):
        t0 = time.time()
        await asyncio.sleep(float(request.query.get("s", "1")))
        return {"t0": t0, "t1": time.time()}
    def stream(self, request):
        for i in range(3):
            yield "piece %d\n" % i

@deployment
class Boom:
    def __init__(self):
        raise RuntimeError("model file missing")
    def __call__(self, request):
        return "never"

@deployment
class Upper:
    def upper(self, x):
        return x.decode().upper() if isinstance(x, bytes) else str(x).upper()
    async def count(self, n):
        for i in range(n):
            yield "%d," % i

@deployment
class Caller:
    def __init__(self, upper):
        self.upper = upper
    async def __call__(self, request):
        name = request.path.rstrip("/").rsplit("/", 1)[-1]
        if name == "both":
            return await self.both(request)
        if name == "missing":
            return await self.missing(request)
        return {"sync": self.upper.upper.remote(request.body).result().decode()}
    async def both(self, request):
        a = self.upper.upper.remote("async")
        chunks = [c.decode() async for c in self.upper.options(stream=True).count.remote(3)]
        return {"async": (await a).decode(), "stream": "".join(chunks)}
    async def missing(self, request):
        try:
            await self.upper.nope.remote(1)
        except RayServeException as e:
            return {"status": e.status}

app = T.bind()
boom = Boom.bind()
caller = Caller.bind(Upper.bind())
PY

cat >"$WORK/apps.yaml" <<YAML
applications:
  - name: pyecho
    route_prefix: /pyecho
    import_path: $EX/pyecho.py:app
  - name: pyechoa
    route_prefix: /pyechoa
    import_path: $EX/pyecho.py:app_async
  - name: t
    route_prefix: /t
    import_path: $WORK/t.py:app
    deployments:
      - name: T
        max_ongoing_requests: 2
        user_config: {greeting: hello}
  - name: boom
    route_prefix: /boom
    import_path: $WORK/t.py:boom
  - name: caller
    route_prefix: /caller
    import_path: $WORK/t.py:caller
  - name: pysearch
    route_prefix: /pysearch
    import_path: $EX/pysearch.py:app
  - name: search
    route_prefix: /search
    import_path: search:app
YAML

start_serve main "$WORK/apps.yaml" || { fail "serve run starts"; finish; exit 1; }
U=http://127.0.0.1:$PORT
for p in /pyecho /pyechoa /t/status /caller; do wait_until 30 answers_200 "$p" || [ "$p" = /t/status ] || fail "$p ready"; done
wait_until 30 bash -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' -m 5 -d '{\"query\":\"a\",\"docs\":[]}' $U/pysearch)\" = 200 ]" || fail "/pysearch ready"

# ---- round trips, sync and async ----
check "pyecho echoes the body" "$(curl -s -m 10 -d hi "$U/pyecho")" "hi"
check "pyecho says hello" "$(curl -s -m 10 "$U/pyecho")" "hello"
check "pyecho keeps Content-Type" "$(curl -s -m 10 -o /dev/null -w '%{content_type}' -H 'Content-Type: application/json' -d '{}' "$U/pyecho")" "application/json"
check "async pyecho echoes the body" "$(curl -s -m 10 -d hi "$U/pyechoa")" "hi"
check "async pyecho says hello" "$(curl -s -m 10 "$U/pyechoa")" "hello"
head -c 300000 /dev/urandom >"$WORK/big.bin"
curl -s -m 30 --data-binary @"$WORK/big.bin" "$U/pyecho" -o "$WORK/big.out"
check "pyecho 300 kB binary body intact" "$(cmp -s "$WORK/big.bin" "$WORK/big.out" && echo same)" "same"

# ---- JSON in and out; Response with status and headers; streaming ----
out=$(curl -s -m 10 -H 'Content-Type: application/json' -d '{"a":[1,2]}' "$U/t?x=1&y=z")
jq_() { /usr/bin/python3 -c "import json,sys; d=json.loads(sys.argv[1]); print($2)" "$1"; }
check "JSON body parsed by request.json()" "$(jq_ "$out" 'd["got"]')" "{'a': [1, 2]}"
check "query as a dict" "$(jq_ "$out" 'd["query"]')" "{'x': '1', 'y': 'z'}"
check "dict answered as JSON" "$(curl -s -m 10 -o /dev/null -w '%{content_type}' -d '{}' "$U/t")" "application/json"
check "user_config reached reconfigure at start" "$(jq_ "$out" 'd["greeting"]')" "hello"
check "Response status" "$(http_code "$U/t/status")" "418"
check_contains "Response header" "$(curl -s -m 10 -i "$U/t/status" | tr -d '\r')" "X-Served-By: python"
check "Response body" "$(curl -s -m 10 "$U/t/status")" "teapot"
check "generator streams its pieces" "$(curl -s -m 10 "$U/t/stream")" "$(printf 'piece 0\npiece 1\npiece 2')"
check_contains "a stream is chunked" "$(curl -s -m 10 -i "$U/t/stream" | tr -d '\r')" "Transfer-Encoding: chunked"

# ---- an exception in a handler: 500, a short message, the traceback logged once ----
check "handler exception -> 500" "$(http_code "$U/t/fail")" "500"
check "the client sees a one-line message" "$(curl -s -m 10 "$U/t/fail")" "ValueError: bad input"
sleep 0.5
check "the traceback is logged once per failure" "$(grep -A1 'T.__call__ failed:' "$LOG" | grep -c 'Traceback (most recent call last)')" "2"
check_contains "the log shows the failing line" "$(cat "$LOG")" 'raise ValueError("bad input")'

# ---- an exception in __init__: the start fails, the traceback in the log ----
wait_until 20 grep -q "model file missing" "$LOG" && pass "__init__ failure is logged" || fail "__init__ failure is logged"
check_contains "the log names the exception" "$(grep -A20 'model file missing' "$LOG" | head -40; grep 'RuntimeError' "$LOG" | head -3)" "RuntimeError: model file missing"
check "no Boom replica serves" "$([ "$(http_code "$U/boom")" != 200 ] && echo refused)" "refused"
check "the others still serve" "$(curl -s -m 10 -d ok "$U/pyecho")" "ok"

# ---- concurrency: two slow requests on one replica with max_ongoing_requests 2 overlap ----
for kind in slow aslow; do
        curl -s -m 20 "$U/t/$kind?s=1" >"$WORK/c1" & c1=$!
        curl -s -m 20 "$U/t/$kind?s=1" >"$WORK/c2" & c2=$!
        wait $c1 $c2
        overlap=$(/usr/bin/python3 -c "
import json; a=json.load(open('$WORK/c1')); b=json.load(open('$WORK/c2'))
print('yes' if max(a['t0'], b['t0']) < min(a['t1'], b['t1']) else 'no: %r %r' % (a, b))" 2>&1)
        check "two $kind requests run at once on one replica" "$overlap" "yes"
done

# ---- user_config changed: reconfigure in place, same process ----
pid=$(jq_ "$(curl -s -m 10 -d '{}' "$U/t")" 'd["pid"]')
sed 's/greeting: hello/greeting: bonjour/' "$WORK/apps.yaml" >"$WORK/apps.new" && cp "$WORK/apps.new" "$WORK/apps.yaml"
kill -HUP "$SERVE_PID"
greeting() { [ "$(jq_ "$(curl -s -m 10 -d '{}' "$U/t")" 'd["greeting"]')" = bonjour ]; }
wait_until 20 greeting && pass "reconfigure applied the new user_config" || fail "reconfigure applied the new user_config"
check "the same replica process (no restart)" "$(jq_ "$(curl -s -m 10 -d '{}' "$U/t")" 'd["pid"]')" "$pid"

# ---- a replica killed mid-request: 502, then a new replica ----
curl -s -m 30 -o /dev/null -w '%{http_code}' "$U/t/slow?s=5" >"$WORK/killed" & cpid=$!
sleep 1
kill -KILL "$pid"
wait $cpid
check "replica SIGKILL mid-request -> 502" "$(cat "$WORK/killed")" "502"
wait_until 30 bash -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' -m 5 -d '{}' $U/t)\" = 200 ]" && pass "a restarted replica serves" || fail "a restarted replica serves"
newpid=$(jq_ "$(curl -s -m 10 -d '{}' "$U/t")" 'd["pid"]')
check "a new process replaced the killed one" "$([ "$newpid" != "$pid" ] && echo yes)" "yes"
check "the restarted replica got the current user_config" "$(jq_ "$(curl -s -m 10 -d '{}' "$U/t")" 'd["greeting"]')" "bonjour"

# ---- handles: Python calling Python, plain, async, streaming, errors ----
check "sync handle call" "$(curl -s -m 10 -d abc "$U/caller")" '{"sync":"ABC"}'
check "async handle call and a streamed one" "$(curl -s -m 10 "$U/caller/both")" '{"async":"ASYNC","stream":"0,1,2,"}'
check "a missing method raises RayServeException 404" "$(curl -s -m 10 "$U/caller/missing")" '{"status":404}'

# ---- /pysearch: the same answers as /search ----
same=0; total=0
while IFS= read -r body; do
        total=$((total + 1))
        a=$(curl -s -m 10 -w ' %{http_code}' -d "$body" "$U/search")
        b=$(curl -s -m 10 -w ' %{http_code}' -d "$body" "$U/pysearch")
        if [ "$a" = "$b" ]; then same=$((same + 1)); else echo "# $body: search '$a' pysearch '$b'"; fi
done <<'BODIES'
{"query":"cat","docs":["a dog barks","a cat sleeps"],"top_k":1}
{"query":"quick brown fox","docs":["the quick brown fox","a lazy dog","fox","brown bread","QUICK!"]}
{"query":"serve python numpy","docs":["python","numpy arrays","serve ray","C code","python numpy serve"],"top_k":3}
{"query":"zzz","docs":["a","b","c"],"top_k":2}
{"query":"café naïve","docs":["cafe","naive","café"],"top_k":5}
{"query":"x","docs":[]}
{"docs":[]}
{"query":"x","docs":["a",2]}
{"query":"x","docs":[],"top_k":0}
not json
BODIES
check "pysearch answers as search (rankings, scores, errors)" "$same/$total" "$total/$total"
check "GET /pysearch is 405 as /search" "$(curl -s -m 10 "$U/pysearch")" "$(curl -s -m 10 "$U/search")"

# ---- config errors name the module, where it was looked for, and the symbol ----
bad_run() { # CONFIG_IMPORT_PATH: serve run's error for it
        printf 'applications:\n  - name: x\n    route_prefix: /x\n    import_path: %s\n' "$1" >"$WORK/bad.yaml"
        timeout 20 "$SERVE" run --http-host 127.0.0.1 --http-port "$(free_port)" "$WORK/bad.yaml" 2>&1 | tail -n 5
}
out=$(bad_run "$WORK/t.py:nothing")
check_contains "missing symbol: names the symbol" "$out" "'nothing'"
check_contains "missing symbol: names the module" "$out" "$WORK/t.py"
out=$(bad_run "$WORK/absent.py:app")
check_contains "missing module: names the module" "$out" "absent.py"
out=$(bad_run "absentmodule:app")
check_contains "missing module by name: names the paths searched" "$out" "$top_builddir/.libs"

finish
