# Shared by the nspawn provider's create, delete and list (sourced, not run): reading the
# request on stdin, checking the group's options, the names of what a node holds, and tearing
# a node down (delete, and create when it fails half-way).
# The caller's stdout is the head's answer: every command here writes to stderr.

# The request and the options: providers/request.sh beside the shipped providers (a copy in
# /etc/serve/providers/NAME/ uses the installed one).
PROVIDER=nspawn
_serve_here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
if [ -f "$_serve_here/../request.sh" ]; then . "$_serve_here/../request.sh"; else . /usr/libexec/serve/providers/request.sh; fi

# node_names NAME: the names of what node NAME holds: NODE_DIR, NETNS, VETH (the bridge side,
# at most 15 characters: a hash of the name), CGROUPS (one per hierarchy the machine has).
node_names() {
        NODE_DIR=$STATE_DIR/$1
        NETNS=serve-nspawn-$1
        VETH=vn$(printf '%s' "$1" | md5sum | cut -c1-10)
        CGROUPS=()
        if [ -d /sys/fs/cgroup/unified ] && [ -d /sys/fs/cgroup/systemd ]; then
                CGROUPS=(/sys/fs/cgroup/unified/serve-nspawn-$1 /sys/fs/cgroup/systemd/serve-nspawn-$1)
        elif [ -f /sys/fs/cgroup/cgroup.procs ]; then
                CGROUPS=(/sys/fs/cgroup/serve-nspawn-$1)
        fi
}

# nspawn_pid_of NAME: the pid of node NAME's systemd-nspawn from its record, only while that
# pid still is the nspawn of this node's merged directory (never a recycled pid).
nspawn_pid_of() {
        local pid
        pid=$(jq -r '.pid // empty' "$NODE_DIR/record.json" 2>/dev/null) || return 1
        [[ "$pid" =~ ^[0-9]+$ ]] || return 1
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "systemd-nspawn -q -D $NODE_DIR/merged " || return 1
        echo "$pid"
}

# cgroup_procs: the pids in the node's cgroups (all levels).
cgroup_procs() {
        local c
        for c in "${CGROUPS[@]}"; do
                [ -d "$c" ] && find "$c" -name cgroup.procs -exec cat {} + 2>/dev/null
        done
}

# teardown NAME: stops node NAME and frees everything it holds; nothing left is not an error.
teardown() {
        local pid i p
        node_names "$1"
        # Power off: SIGTERM makes nspawn ask the container's systemd to shut down (1-2 s).
        if pid=$(nspawn_pid_of "$1"); then
                kill -TERM "$pid" 2>/dev/null
                for i in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
                kill -KILL "$pid" 2>/dev/null
        fi
        # Whatever is left in the container's cgroups (a killed nspawn leaves its payload).
        for i in $(seq 50); do
                p=$(cgroup_procs)
                [ -n "$p" ] || break
                kill -KILL $p 2>/dev/null
                sleep 0.1
        done
        if mountpoint -q "$NODE_DIR/merged" 2>/dev/null; then
                umount "$NODE_DIR/merged" 2>/dev/null || umount -l "$NODE_DIR/merged" ||
                        echo "nspawn: cannot unmount $NODE_DIR/merged" >&2
        fi
        for i in "${CGROUPS[@]}"; do
                [ -d "$i" ] && find "$i" -depth -type d -exec rmdir {} + 2>/dev/null
        done
        ip -n "$BRIDGE_NETNS" link del "$VETH" 2>/dev/null
        ip netns del "$NETNS" 2>/dev/null
        case $NODE_DIR in
        "$STATE_DIR"/?*) rm -rf --one-file-system "$NODE_DIR" ;;
        esac
        ! mountpoint -q "$NODE_DIR/merged" 2>/dev/null && ! [ -e "/run/netns/$NETNS" ]
}
