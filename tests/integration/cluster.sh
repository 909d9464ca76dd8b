#!/usr/bin/env bash
# A head and three workers on one machine, each worker on its own loopback address
# (127.0.10.2 .. 127.0.10.4; the head's API and control port on 127.0.10.1). Covers placement
# (spread, PENDING with a reason), cross-node requests, reloads (identical, counts in place,
# rolling code change under load with zero non-2xx, invalid), API auth, join tokens, and the
# loss of a worker and of the head (under load, zero failures; no healthy replica restarted).
. "$(dirname "$0")/lib.sh"

command -v jq >/dev/null || { echo "1..0 # SKIP jq is not installed (scripts/install-deps test)"; exit 77; }
command -v wrk >/dev/null || { echo "1..0 # SKIP wrk is not installed (scripts/install-deps test)"; exit 77; }

cluster_init 127.0.10 2
( umask 077; echo "wrong-token" >"$CONF/bad-token" )

# write_apps ECHO_REPLICAS ECHO_MODULE [ECHO_MAX_ONGOING]: the applications under test.
write_apps() {
        cat >"$CONF/apps.yaml.new" <<EOF
proxy_location: ${PROXY_LOCATION:-EveryNode}
applications:
  - name: echo
    route_prefix: /echo
    import_path: $2:app
    deployments:
      - name: Echo
        num_replicas: $1
        max_ongoing_requests: ${3:-8}
        graceful_shutdown_timeout_s: 5
        ray_actor_options: {num_cpus: 0.25}
  - name: pinned
    route_prefix: /pinned
    import_path: slow:app
    deployments:
      - name: Slow
        num_replicas: 1
        ray_actor_options: {num_cpus: 0.25}
  - name: big
    route_prefix: /big
    import_path: echo:app
    deployments:
      - name: Echo
        num_replicas: 1
        ray_actor_options: {num_cpus: 64}
  - name: gpu
    route_prefix: /gpu
    import_path: echo:app
    deployments:
      - name: Echo
        num_replicas: 3
        ray_actor_options: {num_cpus: 0.1, num_gpus: 0.5}
EOF
        mv "$CONF/apps.yaml.new" "$CONF/apps.yaml"
}

HEAD_PID=
# Node 1 has two GPUs (fractional-GPU placement).
worker_resources() { echo "{num_cpus: 2$( [ "$1" = 1 ] && echo ", num_gpus: 2")}"; }
n_running() { running "$1" "$2" | grep -c . ; }
all_replicas() { apps_json | jq -r '.applications[].deployments[].replicas[] | "\(.replica_id) \(.pid) \(.state)"' | sort; }
healthy() { [ "$(apps_json | jq -r --arg a "$1" --arg d "$2" '.applications[$a].deployments[$d].status')" = HEALTHY ]; }
node_http() { echo "http://$NET.$(($1 + 1)):$HTTP_PORT"; }
proxy_ready() { [ "$(http_code "$(node_http "$1")/-/healthz")" = 200 ]; }
# reports_total: heartbeats the head has received from all nodes together
# settle: wait until every alive node reported twice more (what changed is then visible)
settle() { local r0; r0=$(reports_total); wait_until 20 bash -c "[ \$(curl -fsS -m 5 $API/api/cluster/nodes | jq '[.nodes[] | select(.state==\"ALIVE\") | .reports] | add') -ge $((r0 + 6)) ]"; }

# load NAME URL SECONDS: wrk in the background (counts every non-2xx and socket error);
# load_result NAME waits for it and sets NON2XX, ERRORS, REQS.
load() { wrk -t1 -c4 -d"$3"s --timeout 10s "$2" >"$WORK/$1.wrk" 2>&1 & LOAD_PID=$!; }
load_result() {
        local f=$WORK/$1.wrk
        wait "$LOAD_PID"
        NON2XX=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$f")
        ERRORS=$(awk '/Socket errors:/ { gsub(/,/, ""); print $4 + $6 + $8 + $10 }' "$f")
        REQS=$(awk '/requests in/ { print $1 }' "$f")
        NON2XX=${NON2XX:-0} ERRORS=${ERRORS:-0} REQS=${REQS:-0}
        [ "$REQS" -gt 0 ] || sed 's/^/#   /' "$f"
}

write_apps 3 echo
start_head || { fail "serve-head starts"; sed 's/^/#   /' "$WORK/head.log"; finish; exit 1; }
pass "serve-head starts and serves its API"
for n in 1 2 3; do start_worker "$n"; done
for n in 1 2 3; do wait_until 30 proxy_ready "$n"; done
wait_until 30 bash -c "[ \$(curl -fsS -m 5 $API/api/cluster/nodes | jq '[.nodes[] | select(.state==\"ALIVE\")] | length') = 3 ]"
check "three workers register" "$(nodes_json | jq '[.nodes[] | select(.state=="ALIVE")] | length')" 3
wait_until 30 healthy echo Echo
wait_until 30 healthy pinned Slow

# ---- placement ----
check "the echo replicas spread over the three nodes" "$(running echo Echo | cut -d' ' -f1 | sort -u | wc -l)" 3
check "a replica needing 64 CPUs is PENDING" "$(apps_json | jq '.applications.big.deployments.Echo.pending[0].count')" 1
reason=$(apps_json | jq -r '.applications.big.deployments.Echo.pending[0].reason')
check_contains "the pending reason names what is missing" "$reason" "64 CPUs"
check_contains "serve status shows the pending reason" "$("$CLI" status --address "$API")" "64 CPUs"

# ---- fractional GPUs pack onto one GPU; the replica gets CUDA_VISIBLE_DEVICES ----
wait_until 30 healthy gpu Echo
check "GPU replicas go to the only node with GPUs" "$(running gpu Echo | cut -d' ' -f1 | sort -u)" "node-1"
gpus=$(for p in $(running gpu Echo | cut -d' ' -f2); do tr '\0' '\n' <"/proc/$p/environ" | grep '^CUDA_VISIBLE_DEVICES=' | cut -d= -f2; done | sort | paste -sd' ')
check "0.5-GPU replicas pack two per GPU (CUDA_VISIBLE_DEVICES)" "$gpus" "0 0 1"

# ---- any node serves any application ----
pin_node=$(running pinned Slow | cut -d' ' -f1)
other=1; [ "$pin_node" = node-1 ] && other=2
check "the pinned replica runs on one node" "$(running pinned Slow | wc -l)" 1
check "a node without the replica answers through its peer" \
        "$(curl -s -m 10 "$(node_http "$other")/pinned?ms=1")" "ok"
ok=0
for n in 1 2 3; do [ "$(curl -s -m 10 -d "hi $n" "$(node_http "$n")/echo")" = "hi $n" ] && ok=$((ok + 1)); done
check "every node's proxy answers /echo" "$ok" 3
check "an unknown path is 404 on a worker" "$(http_code "$(node_http 3)/nowhere")" 404

# ---- metrics: each worker's own page, and the head's page for the whole cluster ----
wm=$(curl -s -m 5 "http://$NET.3:$METRICS_PORT/metrics")
check_contains "a worker's /metrics counts its proxy's requests" "$wm" 'serve_num_http_requests{node="node-2",application="echo",deployment="Echo"} 1'
check_contains "a worker's /metrics has the latency histogram" "$wm" 'serve_deployment_processing_latency_ms_bucket{node="node-2",application="echo",deployment="Echo",le="+Inf"} 1'
settle
hm=$(curl -s -m 5 "$API/metrics")
check_contains "the head's /metrics has every node's counters" "$hm" 'serve_num_http_requests{node="node-3",application="echo",deployment="Echo"} 1'
check_contains "the head's /metrics has per-replica gauges" "$hm" 'serve_replica_processing_queries{node="node-1"'
check_contains "the head's /metrics counts replica starts" "$hm" 'serve_deployment_replica_starts{node="node-1",application="gpu",deployment="Echo"} 3'
check_contains "the head's /metrics counts pending replicas" "$hm" 'serve_pending_replicas 1'
check_contains "the head's /metrics counts error responses per deployment" "$hm" 'serve_num_http_error_requests{node="node-2",application="echo",deployment="Echo"} 0'

# ---- identical reload: nothing restarts ----
before=$(all_replicas)
n0=$(head_log_count "applied file config")
kill -HUP "$HEAD_PID"
wait_until 10 bash -c "[ \$(grep -c 'applied file config' $WORK/head.log) -gt $n0 ]"
settle
check_contains "the identical reload is recognised" "$(tail -n 20 "$WORK/head.log")" "(unchanged)"
check "identical reload: every replica keeps its process" "$(all_replicas)" "$before"

# ---- num_replicas 3 -> 2 -> 4 -> 1, in place ----
pids3=$(running echo Echo | cut -d' ' -f2)
write_apps 2 echo; kill -HUP "$HEAD_PID"
wait_until 30 bash -c "[ \"\$(curl -fsS -m 5 $API/api/serve/applications/ | jq '[.applications.echo.deployments.Echo.replicas[]] | length')\" = 2 ] && [ \"\$(curl -fsS -m 5 $API/api/serve/applications/ | jq -r .applications.echo.deployments.Echo.status)\" = HEALTHY ]"
pids2=$(running echo Echo | cut -d' ' -f2)
check "num_replicas 2: two replicas run" "$(echo "$pids2" | grep -c .)" 2
check "num_replicas 2: both were running before (scaled in place)" "$(comm -12 <(echo "$pids3" | sort) <(echo "$pids2" | sort) | wc -l)" 2
write_apps 4 echo; kill -HUP "$HEAD_PID"
wait_until 30 bash -c "[ \"\$(curl -fsS -m 5 $API/api/serve/applications/ | jq '[.applications.echo.deployments.Echo.replicas[] | select(.state==\"RUNNING\")] | length')\" = 4 ]"
pids4=$(running echo Echo | cut -d' ' -f2)
check "num_replicas 4: four replicas run" "$(echo "$pids4" | grep -c .)" 4
check "num_replicas 4: the two old ones kept their processes" "$(comm -12 <(echo "$pids2" | sort) <(echo "$pids4" | sort) | wc -l)" 2
write_apps 1 echo; kill -HUP "$HEAD_PID"
wait_until 30 bash -c "[ \"\$(curl -fsS -m 5 $API/api/serve/applications/ | jq '[.applications.echo.deployments.Echo.replicas[]] | length')\" = 1 ]"
pids1=$(running echo Echo | cut -d' ' -f2)
check "num_replicas 1: one replica runs, one of the four" "$(comm -12 <(echo "$pids4" | sort) <(echo "$pids1" | sort) | wc -l)" 1
write_apps 3 echo; kill -HUP "$HEAD_PID"
wait_until 30 bash -c "[ \"\$(curl -fsS -m 5 $API/api/serve/applications/ | jq -r .applications.echo.deployments.Echo.status)\" = HEALTHY ] && [ \$(curl -fsS -m 5 $API/api/serve/applications/ | jq '[.applications.echo.deployments.Echo.replicas[]] | length') = 3 ]"

# ---- max_ongoing_requests in place ----
before=$(running echo Echo)
write_apps 3 echo 16; kill -HUP "$HEAD_PID"
wait_until 20 bash -c "[ \$(cat $WORK/worker-*.log | grep -c 'max_ongoing_requests is now 16') -ge 3 ]"
check "max_ongoing_requests 8 -> 16 reaches every replica" "$(cat "$WORK"/worker-*.log | grep -c 'max_ongoing_requests is now 16')" 3
settle
check "max_ongoing_requests changes in place (same processes)" "$(running echo Echo)" "$before"

# ---- code change rolls under load: zero non-2xx ----
old_version=$(apps_json | jq -r '.applications.echo.deployments.Echo.version')
old_pids=$(running echo Echo | cut -d' ' -f2)
load roll "$(node_http 2)/echo" 6
write_apps 3 echo2 16; kill -HUP "$HEAD_PID"
wait_until 30 bash -c "v=\$(curl -fsS -m 5 $API/api/serve/applications/ | jq -r '.applications.echo.deployments.Echo | select(.status==\"HEALTHY\") | .version'); [ -n \"\$v\" ] && [ \"\$v\" != $old_version ] && [ \$(curl -fsS -m 5 $API/api/serve/applications/ | jq '[.applications.echo.deployments.Echo.replicas[]] | length') = 3 ]"
load_result roll
check "rolling import_path change: every replica was replaced" \
        "$(comm -12 <(echo "$old_pids" | sort) <(running echo Echo | cut -d' ' -f2 | sort) | wc -l)" 0
check "rolling import_path change under load: no non-2xx responses" "$NON2XX" 0
check "rolling import_path change under load: no connection errors" "$ERRORS" 0
[ "$REQS" -gt 100 ] && pass "the load generator ran during the roll ($REQS requests)" || fail "the load generator ran ($REQS requests)"

# ---- invalid config: rejected, the old one keeps serving ----
cp "$CONF/apps.yaml" "$WORK/apps.good"
printf 'applications:\n  - name: echo\n    route_prefix: /echo\n    import_path: echo:app\n    num_replicaz: 2\n' >"$CONF/apps.yaml"
n0=$(head_log_count "reload failed")
kill -HUP "$HEAD_PID"
wait_until 10 bash -c "[ \$(grep -c 'reload failed' $WORK/head.log) -gt $n0 ]"
check_contains "an invalid reload is logged with file:line:column" "$(grep 'reload failed' "$WORK/head.log" | tail -n 1)" "apps.yaml:5:5"
check_contains "serve status shows the config error" "$("$CLI" status --address "$API")" "apps.yaml:5:5"
check "the old config still serves after an invalid reload" "$(curl -s -m 10 -d still "$(node_http 1)/echo")" "still"
code=$(curl -s -o "$WORK/put.out" -w '%{http_code}' -m 10 -X PUT -H "Authorization: Bearer $(cat "$CONF/api-token")" \
        --data-binary @"$CONF/apps.yaml" "$API/api/serve/applications/")
check "PUT of an invalid config is 400" "$code" 400
check_contains "the 400 names line and column" "$(cat "$WORK/put.out")" ":5:5"
cp "$WORK/apps.good" "$CONF/apps.yaml"

# ---- the API needs its token ----
check "PUT without a token is 401" "$(curl -s -o /dev/null -w '%{http_code}' -m 10 -X PUT --data-binary @"$CONF/apps.yaml" "$API/api/serve/applications/")" 401
check "DELETE with a wrong token is 401" "$(curl -s -o /dev/null -w '%{http_code}' -m 10 -X DELETE -H 'Authorization: Bearer nope' "$API/api/serve/applications/")" 401
check "GET needs no token" "$(curl -s -o /dev/null -w '%{http_code}' -m 10 "$API/api/serve/applications/")" 200
SERVE_API_TOKEN_FILE=$CONF/api-token "$CLI" deploy "$CONF/apps.yaml" --address "$API" >"$WORK/deploy.out" 2>&1
check "serve deploy with the token succeeds" "$?" 0

# ---- a worker with the wrong join token is refused ----
start_worker 9 bad-token
wait_until 20 bash -c "! kill -0 ${WPID[9]} 2>/dev/null"
wait "${WPID[9]}"; rc=$?
check "a worker with a bad join token exits with an error" "$rc" 1
check_contains "the worker says it was refused" "$(cat "$WORK/worker-9.log")" "refused to let this node join: unknown token"
check_contains "the head says why it refused" "$(cat "$WORK/head.log")" "refused to let node-9 join from"
check "the refused worker is not a node" "$(nodes_json | jq '[.nodes[] | select(.node_id=="node-9")] | length')" 0

# ---- the head dies under load: nothing fails; on restart nothing restarts ----
settle
before=$(all_replicas)
load headloss "$(node_http 3)/echo" 6
kill -KILL "$HEAD_PID"
wait "$HEAD_PID" 2>/dev/null
check "the workers serve while the head is down" "$(curl -s -m 10 -d up "$(node_http 1)/echo")" "up"
check "cross-node requests work while the head is down" "$(curl -s -m 10 "$(node_http "$other")/pinned?ms=1")" "ok"
start_head || fail "serve-head restarts"
wait_until 30 bash -c "[ \$(curl -fsS -m 5 $API/api/cluster/nodes | jq '[.nodes[] | select(.state==\"ALIVE\" and .connected)] | length') = 3 ]"
load_result headloss
check "head killed under load: no non-2xx responses" "$NON2XX" 0
check "head killed under load: no connection errors" "$ERRORS" 0
[ "$REQS" -gt 100 ] && pass "the load generator ran while the head was down ($REQS requests)" || fail "the load generator ran ($REQS requests)"
settle
check "after the head restarts, no healthy replica was restarted" "$(all_replicas)" "$before"
check "the restarted head kept the placement (nothing pending but the 64-CPU replica)" \
        "$(awk '/recovered the state/ { n = 0; seen = 1 } seen && /PENDING: no alive nodes/ { n++ } END { print n + 0 }' "$WORK/head.log")" 0

# ---- a worker dies: its replicas come back elsewhere ----
victim=${pin_node#node-}
victim_pid=${WPID[$victim]}
survivor=1; [ "$victim" = 1 ] && survivor=2
kill -KILL "$victim_pid"
wait_until 30 bash -c "[ \"\$(curl -fsS -m 5 $API/api/cluster/nodes | jq -r '.nodes[] | select(.node_id==\"node-$victim\") | .state')\" = DEAD ]"
check "the killed worker is marked DEAD" "$(nodes_json | jq -r ".nodes[] | select(.node_id==\"node-$victim\") | .state")" DEAD
wait_until 30 bash -c "[ \"\$(curl -s -m 5 $(node_http $survivor)/pinned?ms=1)\" = ok ]"
wait_until 10 bash -c "curl -fsS -m 5 $API/api/serve/applications/ | jq -e '.applications.pinned.deployments.Slow.replicas[] | select(.state==\"RUNNING\" and .node_id!=\"node-$victim\")' >/dev/null"
check "the lost node's replica runs elsewhere" "$(running pinned Slow | cut -d' ' -f1 | grep -vc "node-$victim")" 1
check "requests succeed again after the worker loss" "$(curl -s -m 10 "$(node_http $survivor)/pinned?ms=1")" "ok"
wait_until 30 bash -c "[ \$(curl -fsS -m 5 $API/api/serve/applications/ | jq '[.applications.echo.deployments.Echo.replicas[] | select(.state==\"RUNNING\")] | length') = 3 ]"
check "all echo replicas run on the surviving nodes" "$(running echo Echo | cut -d' ' -f1 | grep -c "node-$victim")" 0

# ---- a worker that starts while the head is away holds requests until it has routes ----
kill -TERM "$HEAD_PID"; wait "$HEAD_PID"
start_worker 4
wait_until 20 bash -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' -m 2 $(node_http 4)/-/healthz)\" = 503 ]"
check "a worker without routes answers /-/healthz 503" "$(http_code "$(node_http 4)/-/healthz")" 503
curl -s -m 30 -d held "$(node_http 4)/echo" >"$WORK/held.out" 2>&1 &
held=$!
wait_until 10 bash -c "ss -tn state established '( dport = :$HTTP_PORT )' | grep -q '$NET.5:$HTTP_PORT'"
start_head || fail "serve-head restarts"
wait "$held"
check "a request that arrived before the routes is answered once they come" "$(cat "$WORK/held.out")" "held"

# ---- proxy_location: Disabled closes the proxies (none of these nodes is the head node) ----
PROXY_LOCATION=Disabled write_apps 3 echo2 16
kill -HUP "$HEAD_PID"
wait_until 20 bash -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' -m 2 $(node_http $survivor)/echo)\" = 000 ]"
check "proxy_location: Disabled closes the worker's HTTP port" "$(http_code "$(node_http $survivor)/echo")" 000
check_contains "the worker says why" "$(cat "$WORK/worker-$survivor.log")" "proxy_location leaves this node without an HTTP proxy"

# ---- stopping ----
for n in 1 2 3 4; do [ "$n" != "$victim" ] && kill -TERM "${WPID[$n]}"; done
stopped=0
for n in 1 2 3 4; do [ "$n" != "$victim" ] && wait "${WPID[$n]}" && stopped=$((stopped + 1)); done
check "workers stop cleanly on SIGTERM" "$stopped" 3
check "no replica process is left" "$(pgrep -f "serve-replica.*" -P "$(echo "${WPID[@]}" | tr ' ' ,)" | wc -l)" 0
kill -TERM "$HEAD_PID"; wait "$HEAD_PID"
check "serve-head stops cleanly on SIGTERM" "$?" 0
finish
