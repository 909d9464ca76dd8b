# Shared by the qemu provider's create, delete and list (sourced, not run): the request on stdin,
# the group's options, the names of what a node holds, and tearing a node down.
# The caller's stdout is the head's answer: every command here writes to stderr.

# The request and the options: providers/request.sh beside the shipped providers (a copy in
# /etc/serve/providers/NAME/ uses the installed one).
PROVIDER=qemu
_serve_here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
if [ -f "$_serve_here/../request.sh" ]; then . "$_serve_here/../request.sh"; else . /usr/libexec/serve/providers/request.sh; fi

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
