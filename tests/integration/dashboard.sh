#!/usr/bin/env bash
# The web dashboard in a real browser: a head (sampling its history every second) and three
# workers on 127.0.19.x; tests/browser/dashboard.mjs drives Chromium through playwright-core
# against http://HEAD:API_PORT/ while it sends traffic, kills a replica, breaks and fixes
# apps.yaml, scales, clicks the actions with no, a wrong and the right token, and stops the
# head for a moment. Its "ok"/"not ok" lines become this test's. Screenshots go to
# dashboard-screenshots/ next to this test's log.
. "$(dirname "$0")/lib.sh"

CHROMIUM=${SERVE_CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
NODE_MODULES=${SERVE_NODE_MODULES:-$top_srcdir/tests/browser/node_modules}
[ -n "$CHROMIUM" ] || { echo "1..0 # SKIP chromium is not installed (scripts/install-deps test)"; exit 77; }
command -v node >/dev/null || { echo "1..0 # SKIP node is not installed, playwright-core cannot run (scripts/install-deps test)"; exit 77; }
[ -f "$NODE_MODULES/playwright-core/index.mjs" ] || {
        echo "1..0 # SKIP playwright-core is not in $NODE_MODULES (npm ci --prefix tests/browser, or set SERVE_NODE_MODULES)"
        exit 77
}

NODE_MODULES=$(cd "$NODE_MODULES" && pwd) # node resolves the import from the script's folder
# Next to this test's log under `make check` (the build tree's tests/integration/).
SHOTS=$PWD/tests/integration/dashboard-screenshots
mkdir -p "$SHOTS" && rm -f "$SHOTS"/*.png
export SERVE_DASHBOARD_DIR=$top_srcdir/dashboard

cluster_init 127.0.19 2
node_http() { echo "http://$NET.$(($1 + 1)):$HTTP_PORT"; }
proxy_ready() { [ "$(http_code "$(node_http "$1")/-/healthz")" = 200 ]; }
# js EXPR: EXPR evaluated on the JSON read from stdin (as `j`); node is here, jq need not be.
js() { node -e 'let s = ""; process.stdin.on("data", d => s += d).on("end", () => { let j = {}; try { j = JSON.parse(s); } catch {} console.log(eval(process.argv[1])); });' "$1"; }
alive_nodes() { nodes_json | js 'j.nodes.filter(n => n.state === "ALIVE").length'; }
healthy() { [ "$(apps_json | js "j.applications['$1'].deployments.Echo.status")" = HEALTHY ]; }

# The same applications as the browser test writes (it owns apps.yaml from here on).
cat >"$CONF/apps.yaml" <<EOF
proxy_location: EveryNode
applications:
  - name: echo
    route_prefix: /echo
    import_path: echo:app
    deployments:
      - name: Echo
        num_replicas: 2
        graceful_shutdown_timeout_s: 2
        ray_actor_options: {num_cpus: 0.25}
  - name: spare
    route_prefix: /spare
    import_path: echo:app
    deployments:
      - name: Echo
        num_replicas: 1
        ray_actor_options: {num_cpus: 0.25}
EOF

start_head --history-interval 1 || { fail "serve-head starts"; sed 's/^/#   /' "$WORK/head.log"; finish; exit 1; }
pass "serve-head starts with --history-interval 1"
for n in 1 2 3; do start_worker "$n"; done
for n in 1 2 3; do wait_until 30 proxy_ready "$n"; done
wait_until 30 eval '[ "$(alive_nodes)" = 3 ]'
check "three workers register" "$(alive_nodes)" 3
wait_until 30 healthy echo && wait_until 30 healthy spare
check "the applications are healthy before the browser opens" "$(apps_json | js 'Object.values(j.applications).map(a => a.deployments.Echo.status).join(" ")')" "HEALTHY HEALTHY"
check "GET /ui/lib/dygraph.min.js serves dygraphs" "$(http_code "$API/ui/lib/dygraph.min.js")" 200

echo "# browser: $CHROMIUM, playwright-core from $NODE_MODULES; screenshots in $SHOTS"
started=$SECONDS
API=$API API_TOKEN=$(cat "$CONF/api-token") CONF=$CONF HEAD_PID=$HEAD_PID SHOTS=$SHOTS CHROMIUM=$CHROMIUM \
NODE_MODULES=$NODE_MODULES WORKER_URLS="$(node_http 1) $(node_http 2) $(node_http 3)" \
        timeout 480 node "$top_srcdir/tests/browser/dashboard.mjs" >"$WORK/browser.out" 2>&1
rc=$?
while IFS= read -r line; do
        case $line in
        "ok - "*) pass "${line#ok - }" ;;
        "not ok - "*) fail "${line#not ok - }" ;;
        *) echo "# ${line#\# }" ;;
        esac
done <"$WORK/browser.out"
check "the browser test ran to its end (exit status)" "$rc" 0
echo "# the browser part took $((SECONDS - started)) s"

kill -CONT "$HEAD_PID" 2>/dev/null # in case the browser test died while the head was stopped
for n in 1 2 3; do kill -TERM "${WPID[$n]}"; done
for n in 1 2 3; do wait "${WPID[$n]}"; done
kill -TERM "$HEAD_PID"; wait "$HEAD_PID"
check "serve-head stops cleanly on SIGTERM" "$?" 0
[ "$FAIL" -ne 0 ] && { echo "# head log (tail):"; tail -n 40 "$WORK/head.log" | sed 's/^/#   /'; }
finish
