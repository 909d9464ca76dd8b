#!/usr/bin/env bash
# The JSON behind the dashboard, and its files, from a head and three workers on 127.0.20.x:
# the page and the chart library are served (nothing else from the disk); the history fills
# from the workers' reports (replicas running/target, requests/s and latency once traffic
# flows, nodes per group, ?since= for live updates); the event log tells deploys with their
# diff (in place / rolling), a replica killed and restarted, a config error with its line and
# column; the actions (reload, shut an application down) need the API token.
. "$(dirname "$0")/lib.sh"

command -v jq >/dev/null || { echo "1..0 # SKIP jq is not installed (scripts/install-deps test)"; exit 77; }

cluster_init 127.0.20 2
( umask 077; echo "wrong-token" >"$CONF/bad-token" )
TOKEN=$(cat "$CONF/api-token")

write_apps() { # write_apps ECHO_REPLICAS
        cat >"$CONF/apps.yaml" <<EOC
applications:
  - name: echo
    route_prefix: /echo
    import_path: echo:app
    deployments:
      - name: Echo
        num_replicas: $1
        ray_actor_options: {num_cpus: 0.25}
  - name: slow
    route_prefix: /slow
    import_path: slow:app
    deployments:
      - name: Slow
        num_replicas: 1
        ray_actor_options: {num_cpus: 0.25}
EOC
}
history() { curl -fsS -m 5 "$API/api/dashboard/history$1"; }
events() { curl -fsS -m 5 "$API/api/dashboard/events$1"; }
# last_value JQ_PATH: the latest non-null value of a history series ("" when none)
last_value() { history | jq -r "[.series$1[]? | select(. != null)] | last // empty"; }
has_event() { events | jq -e --arg k "$1" --arg m "$2" 'any(.events[]; .kind == $k and (.message | contains($m)))' >/dev/null; }

write_apps 2
start_head --history-interval 0.5 || { fail "serve-head starts"; sed 's/^/#   /' "$WORK/head.log"; finish; exit 1; }
for n in 1 2 3; do start_worker $n; done
wait_until 30 bash -c "[ \$(curl -fsS -m 5 $API/api/cluster/nodes | jq '[.nodes[] | select(.state==\"ALIVE\")] | length') = 3 ]" ||
        fail "three nodes join"

# ---- the files ----
page=$(curl -fsS -m 5 "$API/")
check_contains "GET / is the dashboard's page" "$page" "<html"
check "GET /ui/lib/dygraph.min.js is Debian's dygraphs" \
        "$(curl -sS -m 5 -o /dev/null -w '%{http_code} %{content_type}' "$API/ui/lib/dygraph.min.js")" "200 text/javascript; charset=utf-8"
check "a path out of the dashboard's folder is not served" "$(http_code --path-as-is "$API/ui/../../etc/passwd")" 404
check "a hidden file is not served" "$(http_code "$API/ui/.htaccess")" 404
check "a missing file is 404" "$(http_code "$API/ui/nope.js")" 404

# ---- the history ----
wait_until 30 bash -c "[ \"\$(curl -fsS -m 5 '$API/api/dashboard/history' | jq -r '[.series.deployments[\"echo/Echo\"].replicas_running[] | select(. != null)] | last')\" = 2 ]" ||
        fail "the history shows echo/Echo's 2 running replicas"
check "replicas_target is num_replicas" "$(last_value '.deployments["echo/Echo"].replicas_target')" 2
check "nodes per group: three in the default group" "$(last_value '.groups.default.nodes_alive')" 3
h=$(history)
check "a point every interval, for an hour" "$(jq -r '"\(.interval_s) \(.capacity)"' <<<"$h")" "0.5 7200"
check "its memory is reported" "$(jq -r '.memory_bytes > 0' <<<"$h")" true
check "every series is parallel to t" "$(jq -r '[.t | length] as $n | [.series[][][] | length] | all(. == $n[0])' <<<"$h")" true
since=$(jq -r '.t[-1]' <<<"$h")
later=$(history "?since=$since")
check "?since= gives only later points" "$(jq -r --argjson s "$since" '.t | all(. > $s)' <<<"$later")" true
check "a malformed since is refused" "$(http_code "$API/api/dashboard/history?since=abc")" 400

for _ in $(seq 200); do curl -fsS -m 5 -o /dev/null -d x "http://$NET.2:$HTTP_PORT/echo" || break; done &
LOADER=$!
wait_until 30 bash -c "[ \"\$(curl -fsS -m 5 '$API/api/dashboard/history' | jq -r '[.series.applications.echo.requests_per_s[]? | select(. != null and . > 0)] | length > 0')\" = true ]" &&
        pass "traffic shows in the application's requests/s" || fail "traffic shows in the application's requests/s"
wait "$LOADER"
check "and in its latency" "$(history | jq -r '[.series.applications.echo.p50_ms[]? | select(. != null)] | length > 0')" true
check "no errors were counted" "$(history | jq -r '[.series.deployments["echo/Echo"].errors_per_s[]? | select(. != null and . > 0)] | length')" 0

# ---- the events ----
check "the nodes' joins are events" "$(events | jq '[.events[] | select(.kind == "node_joined")] | length')" 3
has_event deploy "applied file config" && pass "the deploy is an event" || fail "the deploy is an event"
pid=$(apps_json | jq -r '.applications.echo.deployments.Echo.replicas[0].pid')
node=$(apps_json | jq -r '.applications.echo.deployments.Echo.replicas[0].node_id')
next=$(events | jq -r .next)
kill -9 "$pid"
wait_until 30 has_event replica_crashed "(pid $pid) was killed by signal 9" && pass "a killed replica is a crash event" ||
        fail "a killed replica is a crash event"
wait_until 30 has_event replica_restarted "in place of a crashed one" && pass "and its replacement a restart event" ||
        fail "and its replacement a restart event"
check "the crash names the node it happened on" \
        "$(events "?since=$next" | jq -r '[.events[] | select(.kind == "replica_crashed")][0].node')" "$node"
check "?since= gives only later events" "$(events "?since=$next" | jq --argjson n "$next" '[.events[].id] | all(. > $n)')" true
check "limit= bounds the page" "$(events '?limit=2' | jq '.events | length')" 2
wait_until 30 bash -c "[ \"\$(curl -fsS -m 5 '$API/api/serve/applications/' | jq '[.applications.echo.deployments.Echo.replicas[] | select(.restarts == 1)] | length')\" = 1 ]" &&
        pass "the replacement counts one restart" || fail "the replacement counts one restart"

write_apps 3
kill -HUP "$HEAD_PID"
wait_until 30 has_event deployment_changed "echo/Echo: in place" && pass "a count change is an in-place change" ||
        fail "a count change is an in-place change"
wait_until 30 bash -c "[ \"\$(curl -fsS -m 5 '$API/api/dashboard/history' | jq -r '[.series.deployments[\"echo/Echo\"].replicas_running[] | select(. != null)] | last')\" = 3 ]" &&
        pass "the history follows it to 3 running replicas" || fail "the history follows it to 3 running replicas"
printf 'applications:\n  - name: echo\n    import_path: echo:app\n    deployments:\n      - name: Echo\n        num_replicas: lots\n' >"$CONF/apps.yaml"
kill -HUP "$HEAD_PID"
wait_until 30 has_event config_error "apps.yaml:6:23" && pass "a config error is an event with its line and column" ||
        fail "a config error is an event with its line and column"
write_apps 3

# ---- the applications' config as applied; the nodes' group ----
check "an application's config as applied" "$(apps_json | jq -r '.applications.echo.config.import_path')" "echo:app"
check "every node has a group" "$(nodes_json | jq -r '[.nodes[].group] | unique | join(",")')" default

# ---- actions need the token ----
check "reload without the token is refused" "$(http_code -X POST "$API/api/serve/reload")" 401
check "reload with a wrong token is refused" "$(http_code -X POST -H "Authorization: Bearer wrong" "$API/api/serve/reload")" 401
next=$(events | jq -r .next)
check "reload with the token" "$(http_code -X POST -H "Authorization: Bearer $TOKEN" "$API/api/serve/reload")" 202
wait_until 30 bash -c "curl -fsS -m 5 '$API/api/dashboard/events?since=$next' | jq -e 'any(.events[]; .kind == \"deploy\")' >/dev/null" &&
        pass "the reload applies the file" || fail "the reload applies the file"
check "shutting an application down without the token is refused" "$(http_code -X DELETE "$API/api/serve/applications/slow")" 401
check "it still runs" "$(apps_json | jq -r '.applications | has("slow")')" true
check "an unknown application is 404" \
        "$(http_code -X DELETE -H "Authorization: Bearer $TOKEN" "$API/api/serve/applications/nope")" 404
check "shutting it down with the token" "$(http_code -X DELETE -H "Authorization: Bearer $TOKEN" "$API/api/serve/applications/slow")" 200
check "it is gone, the other stays" "$(apps_json | jq -r '.applications | keys | join(",")')" echo
check "the config is the API's now" "$(apps_json | jq -r .config_source)" api

# ---- a deployment whose replicas fail to start: why, in its status message ----
if [ -f "$SERVE_PYTHON_BRIDGE" ]; then
        cat >"$WORK/broken.yaml" <<EOC
applications:
  - name: broken
    route_prefix: /broken
    import_path: $top_srcdir/tests/apps/pybridge.py:failing
    deployments:
      - name: PyBridge
        ray_actor_options: {num_cpus: 0.1}
EOC
        check "a deployment whose __init__ raises deploys" \
                "$(http_code -X PUT -H "Authorization: Bearer $TOKEN" --data-binary @"$WORK/broken.yaml" "$API/api/serve/applications/")" 200
        wait_until 30 bash -c "curl -fsS -m 5 '$API/api/serve/applications/' | jq -r '.applications.broken.deployments.PyBridge.message' | grep -q 'init refused'" &&
                pass "its status message says why its replicas fail" || fail "its status message says why its replicas fail"
        check_contains "and so does serve status" "$("$CLI" status --address "$API" 2>&1)" "init refused: fail_init was set"
        check "the failure is an event" "$(events | jq '[.events[] | select(.kind == "replica_failed")] | length > 0')" true
else
        echo "# (no Python support built: the start-failure message is checked by python.sh only)"
fi

finish
