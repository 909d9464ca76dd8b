# Shared by the tests that boot nodes as systemd-nspawn containers (provider_nspawn.sh, which
# calls the provider itself, and cluster_nspawn.sh, where serve-head's autoscaler does); sourced
# after lib.sh. When to skip, the built serve .deb and the local apt repository nodes install it
# from, the cached container root, the view of the package's applications a head needs, and the
# bridge the nodes join.

PROV=$top_srcdir/providers/nspawn
CACHE=${SERVE_TEST_CACHE:-/var/cache/serve-test}

# nspawn_skip_unless_able: exits 77 (SKIP) where these tests cannot run: SERVE_TEST_PACKAGES=0,
# not root, a tool missing, no cgroup hierarchy to give containers.
nspawn_skip_unless_able() {
        local t
        [ "${SERVE_TEST_PACKAGES:-1}" = 0 ] && { echo "1..0 # SKIP packages are tested in the main make check"; exit 77; }
        [ "$(id -u)" = 0 ] || nspawn_skip "needs root"
        for t in systemd-nspawn debootstrap nsenter unshare findmnt ip dpkg-buildpackage dpkg-scanpackages jq curl; do
                command -v "$t" >/dev/null || nspawn_skip "$t is not installed (scripts/install-deps test)"
        done
        [ -d /sys/fs/cgroup/unified ] && [ -d /sys/fs/cgroup/systemd ] || [ -f /sys/fs/cgroup/cgroup.procs ] ||
                nspawn_skip "no cgroup hierarchy for containers"
}
nspawn_skip() { echo "1..0 # SKIP $*"; exit 77; }

# nspawn_package: DEB, the serve .deb built from this tree (SERVE_TEST_DEBS=DIR: the .debs in
# DIR instead, to iterate on a test), and REPO, a flat apt repository of it in $WORK/repo.
# Exits (after `finish`) when there is no package.
nspawn_package() {
        if [ -n "${SERVE_TEST_DEBS:-}" ]; then
                cp "$SERVE_TEST_DEBS"/*.deb "$WORK/" 2>/dev/null
        else
                build_debs "$WORK"
                check "packaging/build-deb builds the packages" "$?" 0
                cp "$top_builddir/tests/debs/build-deb.log" "$WORK/" 2>/dev/null
        fi
        DEB=$(ls "$WORK"/serve_*.deb 2>/dev/null | head -n 1)
        [ -n "$DEB" ] || { sed 's/^/#   /' "$WORK/build-deb.log" | tail -n 30; fail "a serve .deb was built"; finish; exit 1; }
        REPO=$("$PROV/make-repo" "$DEB" "$WORK/repo" 2>"$WORK/make-repo.log")
        check "make-repo makes a flat apt repository" "$(grep -c '^Package: serve$' "$REPO/Packages" 2>/dev/null)" 1
}

# nspawn_root: ROOT, the root the containers boot from, cached in $CACHE (the first build takes
# about 2 minutes and needs a Debian mirror: without one the test is skipped).
nspawn_root() {
        local t0=$SECONDS
        ROOT=$CACHE/nspawn-bookworm
        "$PROV/build-root" "$ROOT" --repo-deps "$REPO" >"$WORK/build-root.log" 2>&1 || {
                tail -n 5 "$WORK/build-root.log" | sed 's/^/# /'
                [ -f "$ROOT/.serve-root" ] || nspawn_skip "build-root failed (no Debian mirror?)"
                fail "build-root rebuilds the cached root"; finish; exit 1
        }
        echo "# build-root: $((SECONDS - t0)) s"
}

# nspawn_package_view: a head resolves import paths to files in its own file system
# (serve-replica --describe) and nodes load them at the same path, so the head must see the
# package's applications where a node has them. Sets LIBDIR (the package's multiarch library
# directory, unpacked in $WORK/pkg), HOST_LIBDIR (where the package puts it) and PKG_VIEW, a
# command prefix that runs a program in a mount namespace of its own where a read-only overlay
# shows LIBDIR over HOST_LIBDIR. Nothing changes on the machine: the overlay's parent mount is
# made private in that namespace first, while the mounts already shared with the machine's (the
# network namespaces in /run/netns, a provider's state directory made shared) stay shared, so
# what a provider mounts or adds from inside is seen, and undone, outside too.
nspawn_package_view() {
        dpkg-deb -x "$DEB" "$WORK/pkg"
        LIBDIR=$(dirname "$(dirname "$(ls -d "$WORK"/pkg/usr/lib/*/serve/apps)")")
        HOST_LIBDIR=${LIBDIR#"$WORK/pkg"}
        PKG_VIEW=(unshare -m --propagation unchanged sh -c 'mount --make-private "$(findmnt -n -o TARGET -T "$2")" &&
                mount -t overlay overlay -o "lowerdir=$1:$2" "$2" && shift 2 && exec "$@"' _ "$LIBDIR" "$HOST_LIBDIR")
}

# nspawn_head_config: in $CONF, fresh API and join tokens and the head part of cluster.yaml (the
# head at $NET.1, API :8265, control :8266, TLS); the caller appends the rest. Sets API.
nspawn_head_config() {
        API=http://$NET.1:8265
        ( umask 077; echo "api-$RANDOM$RANDOM" >"$CONF/api-token"; echo "join-$RANDOM$RANDOM" >"$CONF/join-token" )
        cat >"$CONF/cluster.yaml" <<EOC
head:
  api_host: $NET.1
  api_port: 8265
  control_host: $NET.1
  control_port: 8266
  api_token_file: api-token
  join_token_file: join-token
worker_heartbeat_interval_s: 0.5
worker_timeout_s: 5
transport: tls
EOC
}

# nspawn_bridge NET PREFIX: namespace PREFIX-sw with bridge br0, for add_host and the nodes.
# The caller's trap deletes the namespaces in NS and the blackhole route to NET.0/24.
NS=()
nspawn_bridge() {
        NET=$1 P=$2
        ip route add blackhole "$NET.0/24"
        ip netns add "$P-sw"; NS+=("$P-sw")
        ip -n "$P-sw" link add br0 type bridge && ip -n "$P-sw" link set br0 up
}
# add_host NAME I: namespace $P-NAME with $NET.I on the bridge
add_host() {
        local h=$P-$1
        ip netns add "$h"; NS+=("$h")
        ip -n "$P-sw" link add "$1-$$" type veth peer name eth0 netns "$h"
        ip -n "$P-sw" link set "$1-$$" master br0 up
        ip -n "$h" link set lo up
        ip -n "$h" addr add "$NET.$2/24" dev eth0
        ip -n "$h" link set eth0 up
}
