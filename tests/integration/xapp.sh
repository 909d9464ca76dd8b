#!/usr/bin/env bash
# Handle calls between applications ("APP/DEPLOYMENT"; Python's serve.get_deployment_handle and
# serve.get_app_handle): a Python deployment calling the C application `echo`, a C deployment
# (tests/apps/calls.c) calling Python deployments of other applications (tests/apps/xapp.py),
# a missing application (404 naming both), the same deployment name in two applications (not a
# cycle) and a real cycle across applications (508) — on a two-node cluster (127.0.22.x) where
# some of these calls stay on their node and others cross to the other one. Skipped without
# the Python bridge.
set -u
. "$(dirname "$0")/lib.sh"

BRIDGE=$top_builddir/.libs/serve_python.so
[ -f "$BRIDGE" ] || { echo "SKIP: built without Python support (no $BRIDGE)"; exit 77; }
export SERVE_PYTHON_BRIDGE=$BRIDGE SERVE_PYTHON_PATH=$top_srcdir/python
PY=$top_srcdir/tests/apps/xapp.py

cluster_init 127.0.22 3
# node-1 runs calls (Front, Leaf...) and pyecho; node-2 runs echo and pyapp.
worker_resources() { echo "{num_cpus: 16, custom: {n$1: 1}}"; }
on() { echo "        ray_actor_options: {resources: {n$1: 0.1}}"; }
cat >"$CONF/apps.yaml" <<YAML
applications:
  - name: calls
    route_prefix: /c
    import_path: calls:app
    args: {dir: "$WORK"}
    deployments:
      - name: Front
$(on 1)
      - name: Mid
$(on 1)
      - name: Leaf
$(on 1)
      - name: Busy
$(on 1)
  - name: echo
    route_prefix: /echo
    import_path: echo:app
    deployments:
      - name: Echo
$(on 2)
  - name: pyapp
    route_prefix: /py
    import_path: $PY:pyapp
    deployments:
      - name: Front
$(on 2)
  - name: pyecho
    route_prefix: /pyecho
    import_path: $PY:pyecho
    deployments:
      - name: PyEcho
$(on 1)
YAML
start_head || { fail "serve-head starts"; sed 's/^/#   /' "$WORK/head.log"; finish; exit 1; }
for n in 1 2; do start_worker "$n"; done
node_http() { echo "http://$NET.$(($1 + 1)):$HTTP_PORT"; }
N1=$(node_http 1) N2=$(node_http 2)
for u in "$N1/c/call?m=echo" "$N2/echo" "$N2/py/x" "$N1/pyecho"; do
        wait_until 90 bash -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' -m 5 -d x '$u')\" = 200 ]" || fail "$u answers"
done
wait_until 30 bash -c "[ \"\$(curl -fsS -m 5 $API/api/serve/applications/ | jq -r '.applications.pyapp.deployments.Front.replicas[]? | select(.state==\"RUNNING\") | .node_id' | sort -u)\" = node-2 ]"
check "pyapp's Front runs on node-2 only" "$(running pyapp Front | cut -d' ' -f1 | sort -u)" "node-2"
check "calls' Front runs on node-1 only" "$(running calls Front | cut -d' ' -f1 | sort -u)" "node-1"

# ---- Python -> C (pyapp/Front and echo/Echo on node-2) ----
for n in 1 2; do
        check "Python calls the C application's Echo by name (through node-$n)" \
                "$(curl -s -m 20 -d hello "$(node_http $n)/py/echo")" "hello"
done
check "get_app_handle calls the C application's ingress" "$(curl -s -m 20 -d hi "$N2/py/ingress")" "hi"
check "get_app_handle to a Python application on the other node" "$(curl -s -m 20 -d hi "$N2/py/ingress?app=pyecho")" "py:hi"
out=$(curl -s -m 20 "$N2/py/missing")
check_contains "a call to a missing application is a 404 ..." "$out" '"status":404'
check_contains "... naming the application and the deployment" "$out" "application 'noapp' has no deployment 'Nope'"

# ---- C -> Python ----
check "C calls a Python deployment of another application (same node)" \
        "$(curl -s -m 20 -d hi "$N1/c/x?t=pyecho/PyEcho")" "status=200 rc=0 msg=py:hi"
check "C calls another application's ingress (\"APP/\")" "$(curl -s -m 20 -d hi "$N1/c/x?t=pyecho/")" \
        "status=200 rc=0 msg=py:hi"
check "C -> Python on the other node -> C back: the same name in two applications is no cycle" \
        "$(curl -s -m 20 -d leaf "$N1/c/x?t=pyapp/Front")" "status=200 rc=0 msg=pyapp/Front:x"
out=$(curl -s -m 20 -d cycle "$N1/c/x?t=pyapp/Front")
check_contains "a cycle across applications is refused with 508 ..." "$out" '"status":508'
check_contains "... naming it with the applications" "$out" "calls/Front > pyapp/Front > calls/Front"
check "C: a missing application is 404 / -ENOENT naming both" "$(curl -s -m 20 "$N1/c/x?t=noapp/Nope")" \
        "status=404 rc=-2 msg=application 'noapp' has no deployment 'Nope' (or no such application)"
check "C: a missing application's ingress is 404 / -ENOENT" "$(curl -s -m 20 "$N1/c/x?t=noapp/")" \
        "status=404 rc=-2 msg=no application 'noapp' (for its ingress)"
check "C: a missing deployment of its own application, qualified, is 404 at once" \
        "$(curl -s -m 20 "$N1/c/x?t=calls/Nope")" "status=404 rc=-2 msg=application 'calls' has no deployment 'Nope'"
check "C: unqualified names still need a bind" "$(curl -s -m 20 "$N1/c/x?t=Echo")" \
        "status=404 rc=-2 msg=deployment 'Front' does not bind 'Echo' (it binds: Mid, Leaf, Busy): add it to its .binds to call it"
check_contains "C: a malformed qualified name is refused" "$(curl -s -m 20 "$N1/c/x?t=/Echo")" "status=400 rc=-22"

finish
