# Shared by the nspawn and qemu providers' hooks (sourced through their common.sh, not run):
# reading the request on stdin and the options every hook needs. The caller sets PROVIDER (its
# name, for messages). Its stdout is the head's answer: everything here writes to stderr.

die() { echo "$PROVIDER: $*" >&2; exit 1; }

# read_request: the JSON object on stdin (at most 1 MiB) into REQ.
read_request() {
        REQ=$(head -c 1048577)
        [ "${#REQ}" -le 1048576 ] || die "the request on stdin is larger than 1 MiB"
        jq -e 'type == "object"' >/dev/null 2>&1 <<<"$REQ" || die "stdin is not a JSON object"
}

# opt KEY [DEFAULT]: the group's provider option KEY (a string), or DEFAULT.
opt() { jq -r --arg k "$1" --arg d "${2-}" '.options[$k] // $d | tostring' <<<"$REQ"; }

# check_name NAME: a node name is a host name label (it names directories, a netns, a machine).
check_name() {
        [[ "$1" =~ ^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$ ]] || die "invalid node name '${1:0:80}' (a-z, 0-9, '-', at most 63)"
}

# read_options: the options every script needs: STATE_DIR (absolute), BRIDGE_NETNS, BRIDGE.
read_options() {
        STATE_DIR=$(opt state_dir)
        [[ "$STATE_DIR" == /* ]] || die "option state_dir must be an absolute path"
        BRIDGE_NETNS=$(opt bridge_netns)
        [[ "$BRIDGE_NETNS" =~ ^[A-Za-z0-9_.-]{1,64}$ ]] || die "option bridge_netns must name a network namespace"
        BRIDGE=$(opt bridge br0)
        [[ "$BRIDGE" =~ ^[A-Za-z0-9_.-]{1,15}$ ]] || die "option bridge must be an interface name"
}

