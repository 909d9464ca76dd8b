# Shared helpers for integration tests: start `serve run` on a free loopback port, wait for it
# to be ready (polling, bounded), make requests, count results.
# Sourced by the tests; top_builddir/top_srcdir come from `make check` (or the defaults below).

: "${top_srcdir:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${top_builddir:=$top_srcdir/build}"
SERVE=$top_builddir/serve
export SERVE_APP_PATH="$top_builddir/.libs:$top_builddir/tests/apps/.libs:$top_srcdir/examples/python"
# Python deployments: the bridge and the serve package from the trees under test.
export SERVE_PYTHON_BRIDGE="$top_builddir/.libs/serve_python.so"
export SERVE_PYTHON_PATH="$top_srcdir/python"
# The sanitizer build: CPython's own allocations at exit are not our leaks (see the file).
export LSAN_OPTIONS="suppressions=$top_srcdir/tests/lsan-python.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
export SERVE_REPLICA_BIN="$top_builddir/serve-replica"
export SERVE_DASHBOARD_DIR=${SERVE_DASHBOARD_DIR:-$top_srcdir/dashboard}

# build_debs DIR: copies this source tree's .debs (packaging/build-deb) into DIR. They are built
# once per state of the tree and shared by the tests that install them (systemd.sh and the
# nspawn tests; make -j runs them side by side, hence the lock). Returns 1 when the build
# fails, with its log in $top_builddir/tests/debs/build-deb.log.
build_debs() {
        local out=$1 cache=$top_builddir/tests/debs key
        key=$(cd "$top_srcdir" && { git rev-parse HEAD && git status --porcelain --untracked-files=no && git diff; } 2>/dev/null |
                md5sum | cut -c1-16)
        mkdir -p "$cache" "$out" || return 1
        (
                flock 9
                if [ "$(cat "$cache/key" 2>/dev/null)" != "$key" ] || ! ls "$cache"/serve_*.deb >/dev/null 2>&1; then
                        rm -f "$cache"/*.deb "$cache/key"
                        "$top_srcdir/packaging/build-deb" "$cache" >"$cache/build-deb.log" 2>&1 || exit 1
                        echo "$key" >"$cache/key"
                fi
        ) 9>"$cache/.lock" || return 1
        cp "$cache"/*.deb "$out/"
}

# render_user_data CONF_DIR GROUP NODE TOKEN FILE: the user-data serve-head would give a
# provider's create for NODE of GROUP (CONF_DIR/cluster.yaml defines the group and
# autoscaler.head_address), with TOKEN in place of REDACTED, into FILE (mode 0600).
render_user_data() {
        local text
        text=$("$top_builddir/serve-head" -c "$1" --render-user-data "$2" --node-name "$3") || return 1
        [[ $4 =~ ^[A-Za-z0-9.]+$ ]] || return 1 # a join token: nothing sed would read
        (umask 077; sed "s/REDACTED/$4/" <<<"$text" >"$5")
}

PASS=0
FAIL=0
WORK=$(mktemp -d /tmp/serve-test.XXXXXX)
SERVE_PIDS=()

cleanup() {
        for p in "${SERVE_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
        wait 2>/dev/null
        if [ "$FAIL" -ne 0 ] || [ -n "${KEEP_WORK:-}" ]; then
                echo "# logs kept in $WORK"
        else
                rm -rf "$WORK"
        fi
}
trap cleanup EXIT

pass() { PASS=$((PASS + 1)); echo "ok $((PASS + FAIL)) - $*"; }
fail() { FAIL=$((FAIL + 1)); echo "not ok $((PASS + FAIL)) - $*"; }
# check DESCRIPTION GOT WANT
check() { if [ "$2" = "$3" ]; then pass "$1"; else fail "$1 (got '$2', want '$3')"; fi; }
check_contains() { if [[ "$2" == *"$3"* ]]; then pass "$1"; else fail "$1 (got '${2:0:300}', want it to contain '$3')"; fi; }

finish() {
        echo "1..$((PASS + FAIL))"
        echo "$PASS passed, $FAIL failed"
        [ "$FAIL" -eq 0 ]
}

# Ports handed out by free_port in this test: a port is free until something binds it, so two
# calls before anything binds must not return the same one.
FREE_PORTS_GIVEN=$WORK/.ports
free_port() {
        local p
        for _ in $(seq 1 50); do
                p=$((20000 + RANDOM % 12000)) # below the ephemeral port range
                grep -qx "$p" "$FREE_PORTS_GIVEN" 2>/dev/null && continue
                if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
                        echo "$p" >>"$FREE_PORTS_GIVEN"
                        echo "$p"
                        return
                fi
        done
        echo 0
}

# wait_until TIMEOUT_S COMMAND...: polls COMMAND every 50 ms until it succeeds or time runs out.
wait_until() {
        local deadline=$((SECONDS + $1)); shift
        until "$@"; do
                [ "$SECONDS" -ge "$deadline" ] && return 1
                sleep 0.05
        done
}

http_code() { curl -s -o /dev/null -w '%{http_code}' -m 10 "$@"; }
answers_200() { [ "$(http_code "http://127.0.0.1:$PORT$1")" = 200 ]; }

# start_serve NAME CONFIG: starts serve run in the background; sets PORT, SERVE_PID, LOG.
start_serve() {
        local name=$1 cfg=$2 try
        LOG=$WORK/$name.log
        for try in 1 2 3 4 5; do
                PORT=$(free_port)
                "$SERVE" run --http-host 127.0.0.1 --http-port "$PORT" "$cfg" >"$LOG" 2>&1 &
                SERVE_PID=$!
                SERVE_PIDS+=("$SERVE_PID")
                wait_until 30 bash -c "answers() { [ \"\$(curl -s -o /dev/null -w '%{http_code}' -m 5 http://127.0.0.1:$PORT/-/healthz)\" = 200 ]; }; answers || ! kill -0 $SERVE_PID 2>/dev/null"
                answers_200 /-/healthz && return 0
                # Lost a race for the port with another program: try another one.
                grep -q "Address already in use" "$LOG" || break
        done
        echo "# serve did not come up; log:"; sed 's/^/#   /' "$LOG"
        return 1
}

# replica_pid APP/DEPLOYMENT: pid of the newest ready replica of that deployment (from the log).
replica_pid() {
        grep -o "replica $1#[0-9]* ready (pid [0-9]*)" "$LOG" | tail -n 1 | grep -o 'pid [0-9]*' | cut -d' ' -f2
}

# raw REQUEST_BYTES: sends bytes on one connection, prints everything the server answers until it
# closes the connection (or 5 s pass).
raw() {
        local out
        out=$(
                exec 3<>"/dev/tcp/127.0.0.1/$PORT" || exit 1
                printf '%b' "$1" >&3
                timeout 5 cat <&3
        )
        printf '%s' "$out"
}

# cluster_init NET [WORKER_TIMEOUT_S]: the configuration of a head on NET.1 (workers on NET.2,
# NET.3...): CONF and STATE directories, free ports (API_PORT, CTL_PORT, HTTP_PORT, DATA_PORT,
# METRICS_PORT), API (the head's URL), fresh join and API tokens (mode 0600) and cluster.yaml
# with heartbeats every 0.2 s. HEAD_BIN, WORKER_BIN and CLI name the binaries under test.
# TRANSPORT (default tls, the product's default) goes into cluster.yaml and every worker.yaml.
cluster_init() {
        NET=$1
        HEAD_BIN=$top_builddir/serve-head
        WORKER_BIN=$top_builddir/serve-worker
        CLI=$top_builddir/serve
        export SERVE_APP_PATH="$top_builddir/.libs:$top_builddir/tests/apps/.libs:$top_srcdir/examples/python"
        CONF=$WORK/conf
        STATE=$WORK/state
        mkdir -p "$CONF" "$STATE"
        API_PORT=$(free_port)
        CTL_PORT=$(free_port)
        HTTP_PORT=$(free_port)
        DATA_PORT=$(free_port)
        METRICS_PORT=$(free_port)
        API=http://$NET.1:$API_PORT
        ( umask 077; echo "join-$RANDOM$RANDOM" >"$CONF/join-token"; echo "api-$RANDOM$RANDOM" >"$CONF/api-token" )
        cat >"$CONF/cluster.yaml" <<EOC
head:
  api_host: $NET.1
  api_port: $API_PORT
  control_host: $NET.1
  control_port: $CTL_PORT
  api_token_file: api-token
  join_token_file: join-token
worker_heartbeat_interval_s: 0.2
worker_timeout_s: ${2:-2}
transport: ${TRANSPORT:-tls}
EOC
}

# start_head [OPTIONS...]: serve-head on the cluster_init config (log: $WORK/head.log); returns
# once its API answers. Sets HEAD_PID.
start_head() {
        "$HEAD_BIN" -c "$CONF" --state-dir "$STATE" "$@" >>"$WORK/head.log" 2>&1 &
        HEAD_PID=$!
        SERVE_PIDS+=("$HEAD_PID")
        wait_until 20 curl -fs -o /dev/null -m 2 "$API/-/healthz"
}

# start_worker N [TOKEN_FILE]: serve-worker node-N on NET.(N+1) (log: $WORK/worker-N.log), in
# the background; WPID[N] is its pid. Its resources are `worker_resources N` when the test
# defines that function, else 2 CPUs.
declare -A WPID
# Each worker keeps its key and certificate in $WORK/node-N; with the head's long-lived token
# (a bare secret) it trusts the CA file in the head's state directory, as a worker on the
# head's own machine does (NO_CA_FILE=1: it does not; its token must carry the CA hash).
start_worker() {
        local n=$1 tok=${2:-join-token} res="{num_cpus: 2}"
        declare -F worker_resources >/dev/null && res=$(worker_resources "$n")
        cat >"$CONF/worker-$n.yaml" <<EOC
head_address: $NET.1:$CTL_PORT
transport: ${TRANSPORT:-tls}
state_dir: $WORK/node-$n
${NO_CA_FILE:+#}ca_file: $STATE/pki/ca.crt
join_token_file: $tok
node_name: node-$n
node_address: $NET.$((n + 1))
http_host: $NET.$((n + 1))
http_port: $HTTP_PORT
data_port: $DATA_PORT
metrics_port: $METRICS_PORT
resources: $res
EOC
        "$WORKER_BIN" -c "$CONF/worker-$n.yaml" >>"$WORK/worker-$n.log" 2>&1 &
        WPID[$n]=$!
        SERVE_PIDS+=("${WPID[$n]}")
}

# The head's REST views, and what tests ask of them.
apps_json() { curl -fsS -m 5 "$API/api/serve/applications/"; }
nodes_json() { curl -fsS -m 5 "$API/api/cluster/nodes"; }
# running APP DEP: "node pid" lines of the RUNNING replicas
running() { apps_json | jq -r --arg a "$1" --arg d "$2" '.applications[$a].deployments[$d].replicas[] | select(.state=="RUNNING") | "\(.node_id) \(.pid)"' | sort; }
reports_total() { nodes_json | jq '[.nodes[].reports] | add'; }
head_log_count() { grep -c "$1" "$WORK/head.log" || true; }
