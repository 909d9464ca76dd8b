#!/usr/bin/env bash
# Replica autoscaling end to end, on one machine (`serve run`) and in a cluster (a head and three
# workers on 127.0.16.1 .. 127.0.16.4): replicas follow a load ramp up and back down with no
# failed request while they drain, a deployment at zero replicas serves its first request, and
# the head shows its decisions in `serve status` and /metrics.
. "$(dirname "$0")/lib.sh"

command -v jq >/dev/null || { echo "1..0 # SKIP jq is not installed (scripts/install-deps test)"; exit 77; }
command -v wrk >/dev/null || { echo "1..0 # SKIP wrk is not installed (scripts/install-deps test)"; exit 77; }

# The autoscaled deployments under test: short delays so the test takes seconds.
autoscaled_slow() {
        cat <<EOF
  - name: slow
    route_prefix: /slow
    import_path: slow:app
    deployments:
      - name: Slow
        max_ongoing_requests: 2
        graceful_shutdown_timeout_s: 10
        ray_actor_options: {num_cpus: 0.25}
        autoscaling_config:
          min_replicas: 1
          max_replicas: 4
          target_ongoing_requests: 1
          metrics_interval_s: 0.2
          look_back_period_s: 1
          upscale_delay_s: 0.5
          downscale_delay_s: 2
EOF
}
autoscaled_cold() {
        cat <<EOF
  - name: cold
    route_prefix: /cold
    import_path: echo:app
    deployments:
      - name: Echo
        ray_actor_options: {num_cpus: 0.25}
        autoscaling_config:
          min_replicas: 0
          max_replicas: 2
          metrics_interval_s: 0.2
          look_back_period_s: 1
          downscale_to_zero_delay_s: 1
EOF
}

# light URL CODES STOPFILE: one client at a time, paced well below one replica's share, until
# STOPFILE exists; every status code goes to CODES.
light() {
        while [ ! -e "$3" ]; do
                curl -s -o /dev/null -w '%{http_code}\n' -m 30 "$1" >>"$2"
                sleep 0.1
        done
}
all_200() { [ -s "$1" ] && ! grep -qv '^200$' "$1"; }

# ---- serve run ----
children() { pgrep -P "$SERVE_PID" | grep -c .; }
children_at_least() { [ "$(children)" -ge "$1" ]; }
children_are() { [ "$(children)" -eq "$1" ]; }

{ echo "applications:"; autoscaled_slow; } >"$WORK/slow.yaml"
start_serve slow "$WORK/slow.yaml" || { fail "serve run starts"; finish; exit 1; }
wait_until 30 answers_200 "/slow?ms=1" || fail "slow replica ready"
check "serve run: one replica at rest (min_replicas)" "$(children)" 1
U=http://127.0.0.1:$PORT
wrk -t1 -c4 -d20s --timeout 10s "$U/slow?ms=300" >"$WORK/ramp.wrk" 2>&1 &
WRK=$!
wait_until 20 children_at_least 3 && pass "serve run: 4 clients at target 1 per replica: 1 -> >= 3 replicas" \
        || fail "serve run: replicas under load (have $(children))"
check_contains "serve run: the decision is logged with its inputs" "$(grep 'autoscaler: deployment slow/Slow: 1 ->' "$LOG")" "on 1 replica(s), target 1 per replica"
wait "$WRK"
check "serve run: no request failed during the ramp" "$(awk '/Non-2xx|Socket errors/' "$WORK/ramp.wrk")" ""
light "$U/slow?ms=50" "$WORK/down.codes" "$WORK/down.stop" &
LIGHT=$!
wait_until 60 children_are 1 && pass "serve run: back to 1 replica once the load is gone" \
        || fail "serve run: replicas after the load (have $(children))"
touch "$WORK/down.stop"; wait "$LIGHT"
all_200 "$WORK/down.codes" && pass "serve run: $(wc -l <"$WORK/down.codes") requests during the downscale, all 200" \
        || fail "serve run: requests during the downscale: $(sort "$WORK/down.codes" | uniq -c | tr '\n' ' ')"
check_contains "serve run: the downscale is logged" "$(grep 'autoscaler: deployment slow/Slow: [0-9] -> 1 ' "$LOG")" "scaling down"
kill "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null

{ echo "applications:"; autoscaled_cold; } >"$WORK/cold.yaml"
start_serve cold "$WORK/cold.yaml" || { fail "serve run starts (scale to zero)"; finish; exit 1; }
check "serve run: min_replicas 0 starts no replica" "$(children)" 0
check "serve run: the first request waits for a replica and is served" "$(curl -s -m 30 -d first "http://127.0.0.1:$PORT/cold")" "first"
check_contains "serve run: scaling from zero skips the delay" "$(cat "$LOG")" "scaling from zero to 1 at once"
wait_until 30 children_are 0 && pass "serve run: back to zero after downscale_to_zero_delay_s" || fail "serve run: back to zero (have $(children))"
check "serve run: served again from zero" "$(curl -s -m 30 -d again "http://127.0.0.1:$PORT/cold")" "again"
kill "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null

# Beyond request counts: CPU time from the load monitor (eBPF or its /proc fallback). The request
# target is out of reach, so only the CPU signal can add the replica.
cat >"$WORK/burn.yaml" <<'EOF'
applications:
  - name: burn
    route_prefix: /burn
    import_path: burn:app
    deployments:
      - name: Burn
        max_ongoing_requests: 4
        autoscaling_config:
          min_replicas: 1
          max_replicas: 3
          target_ongoing_requests: 100
          target_cpu_utilization: 0.3
          metrics_interval_s: 0.2
          look_back_period_s: 1
          upscale_delay_s: 0.5
EOF
start_serve burn "$WORK/burn.yaml" || { fail "serve run starts (CPU signal)"; finish; exit 1; }
wait_until 30 answers_200 "/burn?ms=1" || fail "burn replica ready"
wrk -t1 -c2 -d20s --timeout 10s "http://127.0.0.1:$PORT/burn?ms=50" >"$WORK/burn.wrk" 2>&1 &
WRK=$!
wait_until 20 children_at_least 2 && pass "serve run: a replica burning CPU past target_cpu_utilization gets company" \
        || fail "serve run: CPU signal (have $(children) replicas)"
check_contains "serve run: the CPU signal made that decision" "$(grep 'autoscaler: deployment burn/Burn: 1 ->' "$LOG")" "replicas: cpu: load"
kill "$WRK" 2>/dev/null; wait "$WRK" 2>/dev/null
kill "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null

cat >"$WORK/bad.yaml" <<'EOF'
applications:
  - name: slow
    import_path: slow:app
    deployments:
      - name: Slow
        num_replicas: 3
        autoscaling_config: {max_replicas: 4}
EOF
bad=$("$SERVE" run --http-host 127.0.0.1 --http-port "$(free_port)" "$WORK/bad.yaml" 2>&1)
check_contains "num_replicas with autoscaling_config: an error naming both" "$bad" "bad.yaml:6:23: applications[0].deployments[0].num_replicas: must not be a number when autoscaling_config is set"

# ---- the cluster ----
cluster_init 127.0.16 5
{ echo "applications:"; autoscaled_slow; autoscaled_cold; } >"$CONF/apps.yaml"
start_head || { fail "serve-head starts"; sed 's/^/#   /' "$WORK/head.log"; finish; exit 1; }
for n in 1 2 3; do start_worker "$n"; done
node_http() { echo "http://$NET.$(($1 + 1)):$HTTP_PORT"; }
n_running() { running "$1" "$2" | grep -c .; }
running_at_least() { [ "$(n_running slow Slow)" -ge "$1" ]; }
running_are() { [ "$(n_running "$1" "$2")" -eq "$3" ]; }
wait_until 30 running_are slow Slow 1 && pass "cluster: one Slow replica at rest" || fail "cluster: Slow at rest (have $(n_running slow Slow))"
wait_until 30 bash -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' -m 5 $(node_http 1)/slow?ms=1)\" = 200 ]" || fail "cluster: node-1 serves /slow"

wrk -t1 -c4 -d20s --timeout 10s "$(node_http 1)/slow?ms=300" >"$WORK/cramp.wrk" 2>&1 &
WRK=$!
wait_until 20 running_at_least 3 && pass "cluster: under load 1 -> >= 3 replicas" || fail "cluster: replicas under load (have $(n_running slow Slow))"
check "cluster: the added replicas are spread over several nodes" "$(running slow Slow | cut -d' ' -f1 | sort -u | grep -c . | awk '{ print ($1 >= 2) }')" 1
st=$("$CLI" status --address "$API")
echo "$st" >"$WORK/status-under-load.txt"
check_contains "serve status lists the autoscaled deployment" "$st" "AUTOSCALED"
check_contains "serve status shows the last decision" "$st" "requests: load"
# A head restarted under load starts from the replicas it finds, not from min_replicas.
before=$(n_running slow Slow)
kill -KILL "$HEAD_PID"; wait "$HEAD_PID" 2>/dev/null
start_head || fail "serve-head restarts"
target_after() { apps_json | jq -r '.applications.slow.deployments.Slow.target_replicas'; }
wait_until 10 bash -c "[ -n \"\$(curl -fsS -m 2 $API/api/serve/applications/ 2>/dev/null | jq -r '.applications.slow.deployments.Slow.target_replicas // empty')\" ]"
t=$(target_after)
[ "$t" -ge "$before" ] 2>/dev/null && pass "cluster: a restarted head keeps the autoscaled count ($t, with $before running)" \
        || fail "cluster: a restarted head keeps the autoscaled count (target $t, $before were running)"
wait "$WRK"
check "cluster: no request failed during the ramp" "$(awk '/Non-2xx|Socket errors/' "$WORK/cramp.wrk")" ""
light "$(node_http 2)/slow?ms=50" "$WORK/cdown.codes" "$WORK/cdown.stop" &
LIGHT=$!
wait_until 60 running_are slow Slow 1 && pass "cluster: back to 1 replica once the load is gone" \
        || fail "cluster: replicas after the load (have $(n_running slow Slow))"
touch "$WORK/cdown.stop"; wait "$LIGHT"
all_200 "$WORK/cdown.codes" && pass "cluster: $(wc -l <"$WORK/cdown.codes") requests during the downscale, all 200" \
        || fail "cluster: requests during the downscale: $(sort "$WORK/cdown.codes" | uniq -c | tr '\n' ' ')"
hm=$(curl -s -m 5 "$API/metrics")
check_contains "head /metrics: serve_autoscaler_desired_replicas" "$hm" 'serve_autoscaler_desired_replicas{application="slow",deployment="Slow"} 1'
check_contains "head /metrics: an upscale counted" "$hm" 'serve_autoscaler_decisions_total{application="slow",deployment="Slow",direction="up"}'
check "head /metrics: the downscale counted" "$(echo "$hm" | awk '/serve_autoscaler_decisions_total\{application="slow",deployment="Slow",direction="down"\}/ { print ($2 >= 1) }')" 1

check "cluster: no Echo replica at min_replicas 0" "$(n_running cold Echo)" 0
check "cluster: the first request to a deployment at zero is served" "$(curl -s -m 30 -d first "$(node_http 3)/cold")" "first"
check_contains "cluster: the head scaled it from zero at once" "$(cat "$WORK/head.log")" "cold/Echo: 0 -> 1 replicas"
wait_until 30 running_are cold Echo 0 && pass "cluster: back to zero" || fail "cluster: back to zero (have $(n_running cold Echo))"
check "cluster: served again from zero, through another node" "$(curl -s -m 30 -d again "$(node_http 1)/cold")" "again"

finish
