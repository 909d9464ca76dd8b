# Shared by the tests that drive examples/autoscaling (cluster_autoscaler.sh, node_upgrade.sh):
# sourced after lib.sh with NET (the example's /24, e.g. 10.241.0) and P (its namespace prefix)
# set. Skips (77) without root or the tools; exports what the example's start needs to run the
# build tree's daemons with the source tree's netns provider; stops the example at exit.
skip() { echo "1..0 # SKIP $*"; exit 77; }
[ "$(id -u)" = 0 ] || skip "needs root (network namespaces)"
for t in ip jq curl; do command -v "$t" >/dev/null || skip "$t is not installed (scripts/install-deps test)"; done

EX=$top_srcdir/examples/autoscaling
RUN=$WORK/run
export SERVE_EXAMPLE_NET=$NET SERVE_EXAMPLE_PREFIX=$P
export BUILD=$top_builddir
export SERVE_PROVIDER_PATH=$top_srcdir/providers SERVE_CLOUD_FILES=$top_builddir/providers/netns/cloud-files

stopped=0
stop_example() { [ "$stopped" = 1 ] || { stopped=1; "$EX/stop" "$RUN" >"$WORK/stop.log" 2>&1; }; }
trap 'stop_example; cleanup' EXIT

api() { ip netns exec "$P-head" curl -s -m 5 "http://127.0.0.1:8265$1"; }
in_client() { ip netns exec "$P-client" "$@"; }
cli() { "$EX/serve" "$RUN" "$@"; }
events() { api "/api/dashboard/events?limit=1000"; }

# start_example: examples/autoscaling/start into $RUN (the test's SERVE_EXAMPLE_* apply); ends
# the test when it fails.
start_example() {
        "$EX/start" "$RUN" >"$WORK/start.log" 2>&1
        check "examples/autoscaling/start brings up the head and node-1" "$?" 0
        [ -f "$RUN/head.pid" ] || { sed 's/^/#   /' "$WORK/start.log"; finish; exit 1; }
}
