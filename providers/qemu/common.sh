# Shared by the qemu provider's create, delete and list (sourced, not run): the request on stdin,
# the group's options, the names of what a node holds, and tearing a node down.
# The caller's stdout is the head's answer: every command here writes to stderr.

die() { echo "qemu: $*" >&2; exit 1; }

# read_request: the JSON object on stdin (at most 1 MiB) into REQ.
read_request() {
        REQ=$(head -c 1048577)
        [ "${#REQ}" -le 1048576 ] || die "the request on stdin is larger than 1 MiB"
        jq -e 'type == "object"' >/dev/null 2>&1 <<<"$REQ" || die "stdin is not a JSON object"
}

# opt KEY [DEFAULT]: the group's provider option KEY (a string), or DEFAULT.
opt() { jq -r --arg k "$1" --arg d "${2-}" '.options[$k] // $d | tostring' <<<"$REQ"; }

check_name() {
        [[ "$1" =~ ^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$ ]] || die "invalid node name '${1:0:80}' (a-z, 0-9, '-', at most 63)"
}

# read_options: STATE_DIR (absolute), BRIDGE_NETNS, BRIDGE.
read_options() {
        STATE_DIR=$(opt state_dir)
        [[ "$STATE_DIR" == /* ]] || die "option state_dir must be an absolute path"
        BRIDGE_NETNS=$(opt bridge_netns)
        [[ "$BRIDGE_NETNS" =~ ^[A-Za-z0-9_.-]{1,64}$ ]] || die "option bridge_netns must name a network namespace"
        BRIDGE=$(opt bridge br0)
        [[ "$BRIDGE" =~ ^[A-Za-z0-9_.-]{1,15}$ ]] || die "option bridge must be an interface name"
}

# node_names NAME: NODE_DIR and TAP (the tap device on the bridge, at most 15 characters).
node_names() {
        NODE_DIR=$STATE_DIR/$1
        TAP=vq$(printf '%s' "$1" | md5sum | cut -c1-10)
}

# qemu_pid_of NAME: the pid in the node's pidfile, only while it is this node's qemu.
qemu_pid_of() {
        local pid
        pid=$(cat "$NODE_DIR/qemu.pid" 2>/dev/null) || return 1
        [[ "$pid" =~ ^[0-9]+$ ]] || return 1
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-name serve-$1 " || return 1
        echo "$pid"
}

# teardown NAME: stops node NAME's VM (ACPI powerdown would need a monitor; the disk overlay is
# thrown away, so SIGTERM is enough), frees its tap and state. Nothing left is not an error.
teardown() {
        local pid i
        node_names "$1"
        if pid=$(qemu_pid_of "$1"); then
                kill -TERM "$pid" 2>/dev/null
                for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
                kill -KILL "$pid" 2>/dev/null
                for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
        ip -n "$BRIDGE_NETNS" link del "$TAP" 2>/dev/null
        case $NODE_DIR in
        "$STATE_DIR"/?*) rm -rf --one-file-system "$NODE_DIR" ;;
        esac
        ! qemu_pid_of "$1" >/dev/null
}
