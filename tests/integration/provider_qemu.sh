#!/usr/bin/env bash
# The qemu node provider (providers/qemu): a KVM virtual machine booted from a cached Debian 12
# image (build-image) with a NoCloud seed; cloud-init installs the built serve package from a
# local apt repository (9p) and serve-worker joins a head over TLS; `delete` leaves nothing.
#
# First a bounded probe: one VM with a trivial user-data must print cloud-init's "finished" line
# on its serial console within 60 s. Where guests do not come up (some nested-KVM hosts hang
# right after "Booting from ROM"), the test exits 77 saying so. Every wait is bounded and every
# qemu is killed on exit: the test never hangs the suite.
# Network: 10.234.0.0/24 on a bridge in its own namespace (the head at .1 in a namespace, a
# client at .2); the main namespace routes the subnet to a blackhole while the test runs.
# Skipped (77): not root, SERVE_TEST_PACKAGES=0, no qemu-system-x86/qemu-utils/genisoimage
# (apt-get install qemu-system-x86 qemu-utils genisoimage), no /dev/kvm, no Debian mirror for
# the first image build, or a guest that does not boot. SERVE_TEST_DEBS=DIR: use those .debs.
. "$(dirname "$0")/lib.sh"

[ "${SERVE_TEST_PACKAGES:-1}" = 0 ] && { echo "1..0 # SKIP packages are tested in the main make check"; exit 77; }
skip() { echo "1..0 # SKIP $*"; exit 77; }
[ "$(id -u)" = 0 ] || skip "needs root"
for t in qemu-system-x86_64 qemu-img genisoimage debootstrap mke2fs ip jq curl dpkg-scanpackages; do
        command -v "$t" >/dev/null || skip "$t is not installed (apt-get install qemu-system-x86 qemu-utils genisoimage debootstrap)"
done
[ "${SERVE_TEST_QEMU_ACCEL:-kvm}" != kvm ] || [ -w /dev/kvm ] || skip "no usable /dev/kvm"

PROV=$top_srcdir/providers/qemu
CACHE=${SERVE_TEST_CACHE:-/var/cache/serve-test}
NET=10.234.0
P=sqemu$$
HEAD_BIN=$top_builddir/serve-head
CONF=$WORK/conf
STATE=$WORK/state
PSTATE=$WORK/nodes
mkdir -p "$CONF" "$STATE" "$PSTATE"

# ---- the package, its repository, the image (cached; bounded) ----
if [ -n "${SERVE_TEST_DEBS:-}" ]; then
        cp "$SERVE_TEST_DEBS"/*.deb "$WORK/" 2>/dev/null
else
        timeout 900 "$top_srcdir/packaging/build-deb" "$WORK" >"$WORK/build-deb.log" 2>&1
        check "packaging/build-deb builds the packages" "$?" 0
fi
DEB=$(ls "$WORK"/serve_*.deb 2>/dev/null | head -n 1)
[ -n "$DEB" ] || { fail "a serve .deb was built"; finish; exit 1; }
REPO=$("$top_srcdir/providers/nspawn/make-repo" "$DEB" "$WORK/repo" 2>"$WORK/make-repo.log")
IMAGE=$CACHE/qemu-bookworm
timeout 600 "$PROV/build-image" "$IMAGE" --root "$("$top_srcdir/providers/nspawn/build-root" "$CACHE/nspawn-bookworm" --repo-deps "$REPO" 2>"$WORK/build-root.log")" \
        >"$WORK/build-image.log" 2>&1 || {
        tail -n 5 "$WORK/build-root.log" "$WORK/build-image.log" | sed 's/^/# /'
        skip "build-image failed (no Debian mirror?)"
}

# ---- network ----
NS=()
NODES=()
req() { # req NODE USER_DATA: the create request
        jq -n --arg n "$1" --arg ud "$2" --argjson o "$OPTS" \
                '{name: $n, group: "vm", shape: {cpus: 1, memory: 1073741824, gpus: 0, custom: {}}, labels: {group: "vm"}, user_data: $ud, options: $o}'
}
delete_node() { jq -n --arg n "$1" --argjson o "$OPTS" '{name: $n, group: "vm", id: ("qemu:" + $n), options: $o}' | (cd / && "$PROV/delete" "$1"); }
cleanup_all() {
        for n in "${NODES[@]}"; do timeout 60 bash -c "$(declare -f delete_node); PROV='$PROV' OPTS='$OPTS' delete_node '$n'" >/dev/null 2>&1; done
        for p in "${SERVE_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
        wait 2>/dev/null
        for n in "${NS[@]}"; do ip netns del "$n" 2>/dev/null; done
        ip route del blackhole $NET.0/24 2>/dev/null
        cleanup
}
trap cleanup_all EXIT
ip route add blackhole $NET.0/24
ip netns add "$P-sw"; NS+=("$P-sw")
ip -n "$P-sw" link add br0 type bridge && ip -n "$P-sw" link set br0 up
add_host() {
        local h=$P-$1
        ip netns add "$h"; NS+=("$h")
        ip -n "$P-sw" link add "$1-$$" type veth peer name eth0 netns "$h"
        ip -n "$P-sw" link set "$1-$$" master br0 up
        ip -n "$h" link set lo up
        ip -n "$h" addr add "$NET.$2/24" dev eth0
        ip -n "$h" link set eth0 up
}
add_host head 1
add_host cl 2
# SERVE_TEST_QEMU_ACCEL=tcg: emulate (slow: minutes) where KVM guests hang.
ACCEL=${SERVE_TEST_QEMU_ACCEL:-kvm}
PROBE_S=60
[ "$ACCEL" = kvm ] || PROBE_S=240
OPTS=$(jq -n --arg image "$IMAGE" --arg state "$PSTATE" --arg brns "$P-sw" --arg net "$NET" --arg repo "$REPO" --arg accel "$ACCEL" \
        '{image: $image, state_dir: $state, bridge_netns: $brns, subnet: $net, repo: $repo, accel: $accel}')

# ---- the probe: does a guest boot here at all? ----
PROBE=$P-probe
printf '#cloud-config\nruncmd:\n  - [echo, serve-probe]\n' >"$WORK/probe-data"
chmod 600 "$WORK/probe-data"
NODES+=("$PROBE")
out=$(req "$PROBE" "$WORK/probe-data" | (cd / && timeout 60 "$PROV/create" "$PROBE") 2>"$WORK/probe.err")
rc=$?
# Results count once the probe says this machine runs guests at all (else the test is skipped).
probe_ok=$( [ "$rc" = 0 ] && echo 0 || echo "$rc")
probe_out=$(jq -c . <<<"$out" 2>&1)
SERIAL=$PSTATE/$PROBE/serial.log
# A guest that hangs prints nothing at all: say so after 20 s instead of the whole probe time.
if [ "$rc" = 0 ] && { ! wait_until 20 test -s "$SERIAL" || ! wait_until "$PROBE_S" grep -qE 'Cloud-init v\. .* finished' "$SERIAL"; }; then
        last=$(tr -d '\r' <"$SERIAL" 2>/dev/null | grep -v '^\s*$' | tail -n 1 | tr -cd '[:print:]' | cut -c1-120)
        delete_node "$PROBE" >/dev/null 2>&1
        [ -n "$last" ] || skip "a $ACCEL guest prints nothing on its serial console within 20 s: it does not boot on this machine (SERVE_TEST_QEMU_ACCEL=tcg emulates)"
        skip "a $ACCEL guest does not finish booting within $PROBE_S s (last serial line: '$last'; SERVE_TEST_QEMU_ACCEL=tcg emulates)"
fi
check "create starts a VM" "$probe_ok" 0
check "create prints its id and address" "$probe_out" "{\"id\":\"qemu:$PROBE\",\"address\":\"$NET.100\"}"
[ "$rc" = 0 ] || { sed 's/^/#   /' "$WORK/probe.err"; finish; exit 1; }
pass "the probe VM boots and cloud-init finishes"
delete_node "$PROBE" 2>"$WORK/probe-delete.err"
check "delete stops the probe VM" "$?" 0
check "nothing of it is left" "$(ls -A "$PSTATE" | grep -v '^\.lock$') $(ip -n "$P-sw" -o link show master br0 2>/dev/null | grep -c vq)" " 0"

# ---- a node with the head's user-data joins a head ----
NODE=$P-vm
API=http://$NET.1:8265
( umask 077; echo "api-$RANDOM$RANDOM" >"$CONF/api-token"; echo "join-$RANDOM$RANDOM" >"$CONF/join-token" )
printf 'head:\n  api_host: %s\n  api_port: 8265\n  control_host: %s\n  control_port: 8266\n  api_token_file: api-token\n  join_token_file: join-token\nworker_heartbeat_interval_s: 0.5\nworker_timeout_s: 5\ntransport: tls\n' \
        "$NET.1" "$NET.1" >"$CONF/cluster.yaml"
# The VM's group, for --render-user-data (no provider: this head launches nothing).
printf 'autoscaler:\n  head_address: "%s:8266"\nworker_groups:\n  - name: vm\n    resources: {num_cpus: 1, memory: 1073741824}\n    apt_source: "deb [trusted=yes] file:/srv/serve-repo ./"\n' \
        "$NET.1" >>"$CONF/cluster.yaml"
printf 'applications:\n  - name: echo\n    route_prefix: /echo\n    import_path: echo:app\n    deployments:\n      - name: Echo\n        num_replicas: 1\n        ray_actor_options: {num_cpus: 0.1}\n' >"$CONF/apps.yaml"
# The head resolves import paths in its own file system and the node loads them at the same path:
# it sees the package's applications where the node has them (see provider_nspawn.sh).
dpkg-deb -x "$DEB" "$WORK/pkg"
LIBDIR=$(dirname "$(dirname "$(ls -d "$WORK"/pkg/usr/lib/*/serve/apps)")")
HOST_LIBDIR=${LIBDIR#"$WORK/pkg"}
ip netns exec "$P-head" unshare -m --propagation private sh -c 'mount -t overlay overlay -o "lowerdir=$1:$2" "$2" && shift 2 && exec "$@"' _ \
        "$LIBDIR" "$HOST_LIBDIR" env SERVE_APP_PATH="$HOST_LIBDIR/serve/apps" "$HEAD_BIN" -c "$CONF" --state-dir "$STATE" >"$WORK/head.log" 2>&1 &
SERVE_PIDS+=($!)
wait_until 20 ip netns exec "$P-head" curl -fs -o /dev/null -m 2 "$API/-/healthz"
TOKEN=$("$HEAD_BIN" -c "$CONF" --state-dir "$STATE" --join-token create --ttl 10m --uses 1 --name "$NODE" 2>>"$WORK/mint.log")
render_user_data "$CONF" vm "$NODE" "$TOKEN" "$WORK/user-data"
check "serve-head --render-user-data renders the node's user-data" "$?" 0
NODES+=("$NODE")
T0=$SECONDS
out=$(req "$NODE" "$WORK/user-data" | (cd / && timeout 60 "$PROV/create" "$NODE") 2>"$WORK/create.err")
check "create starts the node" "$?" 0
ADDR=$(jq -r .address <<<"$out" 2>/dev/null)
alive() { [ "$(ip netns exec "$P-head" curl -fsS -m 5 "$API/api/cluster/nodes" | jq -r --arg n "$NODE" '.nodes[] | select(.node_id == $n) | .state')" = ALIVE ]; }
wait_until 300 alive && pass "the VM's worker joined the head ($((SECONDS - T0)) s)" || {
        fail "the VM's worker joined the head"; tail -n 20 "$PSTATE/$NODE/serial.log" | sed 's/^/#   /'; }
wait_until 60 bash -c "[ \"\$(ip netns exec $P-cl curl -s -m 5 -o /dev/null -w '%{http_code}' -d x http://$ADDR:8000/echo)\" = 200 ]"
check "echo answers through the VM's :8000" "$(ip netns exec "$P-cl" curl -s -m 5 -d hello "http://$ADDR:8000/echo")" hello
delete_node "$NODE" 2>"$WORK/delete.err"
check "delete exits 0" "$?" 0
check "no qemu, tap or state left" "$(pgrep -f "qemu-system-x86_64 -name serve-$NODE " | wc -l) $(ip -n "$P-sw" -o link show master br0 2>/dev/null | grep -c vq) $(ls -A "$PSTATE" | grep -v '^\.lock$')" "0 0 "
delete_node "$NODE" 2>>"$WORK/delete.err"
check "delete again exits 0" "$?" 0
finish
