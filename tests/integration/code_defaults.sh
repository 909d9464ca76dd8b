#!/usr/bin/env bash
# user_config and autoscaling_config defaults in code (ABI 3; Python's decorator options come
# this way): used unless apps.yaml sets them, and an invalid one is a config error naming the
# deployment.
set -u
. "$(dirname "$0")/lib.sh"

cat >"$WORK/apps.yaml" <<'YAML'
applications:
  - name: cd
    route_prefix: /cd
    import_path: codedefaults:app
  - name: cdyaml
    route_prefix: /cdyaml
    import_path: codedefaults:app
    deployments:
      - name: Defaults
        num_replicas: 1
        user_config: {from: yaml}
YAML
start_serve main "$WORK/apps.yaml" || { fail "serve run starts"; finish; exit 1; }
U=http://127.0.0.1:$PORT
wait_until 30 answers_200 /cd && pass "ready" || fail "ready"
check "the code's user_config reaches init" "$(curl -s -m 10 "$U/cd")" '{"from":"code"}'
wait_until 30 answers_200 /cdyaml || fail "second application ready"
check "apps.yaml's user_config wins" "$(curl -s -m 10 "$U/cdyaml")" '{"from":"yaml"}'
wait_until 30 grep -q "replica cd/Defaults#2 ready" "$LOG" &&
        pass "the code's autoscaling_config (min_replicas 2) starts two replicas" ||
        fail "the code's autoscaling_config (min_replicas 2) starts two replicas"
grep -q "replica cdyaml/Defaults#2 " "$LOG" && fail "apps.yaml's num_replicas: 1 wins over the code's autoscaling" ||
        pass "apps.yaml's num_replicas: 1 wins over the code's autoscaling"
kill -TERM "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null

cat >"$WORK/bad.yaml" <<'YAML'
applications:
  - name: bad
    route_prefix: /bad
    import_path: codedefaults:bad
YAML
out=$(timeout 30 "$SERVE" run --http-host 127.0.0.1 --http-port "$(free_port)" "$WORK/bad.yaml" 2>&1)
check_contains "an invalid autoscaling_config default in code is a config error naming the deployment" "$out" \
        "deployment 'BadDefaults' in codedefaults:bad: its autoscaling_config default in code is invalid"
finish
