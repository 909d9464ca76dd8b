#!/usr/bin/env bash
# The netns provider (providers/netns/): nodes as network namespaces on a bridge, 10.232.0.0/24
# (routed to a blackhole in the main namespace while the test runs). serve-head runs in its own
# namespace on the bridge at 10.232.0.1; the provider's hooks run from the source tree with the
# contract's stdin, as serve-head would run them.
#
# What a user would notice:
#   - create starts a node from a user-data in the format serve-head renders, prints its id and
#     address (the lowest free host number), and the node's worker joins the head with the
#     single-use token the user-data carries, labelled with its group;
#   - list shows the nodes of the group asked for, and no other group's;
#   - a node whose user-data carries a used token never joins: the head refuses it and the
#     worker's log says why;
#   - delete stops the node (the head sees it go) and frees its address; deleting it again
#     succeeds; bad names and bad user-data are refused and leave nothing behind;
#   - 20 create/delete cycles leave no namespace, process, veth or record;
#   - no hook prints the join token.
. "$(dirname "$0")/lib.sh"

[ "$(id -u)" = 0 ] || { echo "1..0 # SKIP needs root (network namespaces)"; exit 77; }
for c in jq ip flock curl; do
        command -v $c >/dev/null || { echo "1..0 # SKIP $c is not installed (scripts/install-deps test)"; exit 77; }
done

HOOKS=$top_srcdir/providers/netns
export SERVE_CLOUD_FILES=$top_builddir/providers/netns/cloud-files
SUBNET=10.232.0
SW=pnsw$$            # the bridge's namespace
HNS=pnhead$$         # the head's
PREFIX=pn$$          # the nodes' namespaces: pnPID-NAME
PSTATE=$WORK/provider

netns_cleanup() {
        local ns
        for ns in $(ip netns list | awk '{print $1}' | grep -E "^($PREFIX-.*|$HNS|$SW)$"); do
                ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null
                ip netns del "$ns" 2>/dev/null
        done
        ip route del blackhole "$SUBNET.0/24" 2>/dev/null
}
trap 'netns_cleanup; cleanup' EXIT

ip route add blackhole "$SUBNET.0/24" || { echo "1..0 # SKIP cannot route $SUBNET.0/24 to a blackhole (in use?)"; exit 77; }
ip netns add "$SW"
ip -n "$SW" link add br0 type bridge
ip -n "$SW" link set br0 up
ip netns add "$HNS"
ip -n "$SW" link add head-port type veth peer name eth0 netns "$HNS"
ip -n "$SW" link set head-port master br0 up
ip -n "$HNS" link set lo up
ip -n "$HNS" addr add "$SUBNET.1/24" dev eth0
ip -n "$HNS" link set eth0 up

# ---- cloud-files alone: what it writes, what it refuses ----
CF=$SERVE_CLOUD_FILES
cat >"$WORK/cf.yaml" <<'EOF'
#cloud-config
write_files:
  - path: /etc/serve/secret
    permissions: "0600"
    content: "s3cret-content"
  - path: /./opt//data/blob
    encoding: b64
    content: aGVsbG8gd29ybGQ=
  - path: /opt/data/blob
    append: true
    content: "!"
EOF
"$CF" "$WORK/cf.yaml" "$WORK/cf-root" 2>"$WORK/cf.err"
check "cloud-files writes every entry: modes, b64, append" \
        "$?:$(stat -c %a "$WORK/cf-root/etc/serve/secret"):$(cat "$WORK/cf-root/opt/data/blob")" "0:600:hello world!"
refused() { # refused DESCRIPTION WANT_IN_STDERR: the user-data in $WORK/cf-bad is refused, nothing written
        rm -rf "$WORK/cf-bad-root"
        "$CF" "$WORK/cf-bad" "$WORK/cf-bad-root" 2>"$WORK/cf.err"
        check_contains "cloud-files refuses $1" "$? $(cat "$WORK/cf.err")" "1 cloud-files: $WORK/cf-bad:$2"
        [ -z "$(ls -A "$WORK/cf-bad-root" 2>/dev/null)" ] || fail "... and writes nothing ($1)"
}
printf '#cloud-config\nwrite_files:\n  - {path: /ok}\n  - {path: /etc/../../escape, content: x}\n' >"$WORK/cf-bad"
refused "a path with .. (and writes no entry)" '4:12: write_files[1].path: must not contain ".."'
printf '#cloud-config\nwrite_files:\n  - {path: etc/x}\n' >"$WORK/cf-bad"
refused "a relative path" "3:12: write_files[0].path: must be an absolute path"
printf '#cloud-config\nwrite_files:\n  - {path: /x, encoding: gzip, content: abc}\n' >"$WORK/cf-bad"
refused "gzip content, clearly" "3:26: write_files[0].encoding: gzip is not supported here"
{ printf '#cloud-config\nwrite_files:\n'; for i in $(seq 65); do printf '  - {path: /f%d}\n' "$i"; done; } >"$WORK/cf-bad"
refused "more than 64 files" "3:3: write_files: too many files (65, limit 64)"
printf '#cloud-config\nwrite_files:\n  - path: /big\n    content: "%s"\n' "$(head -c 1048577 /dev/zero | tr '\0' a)" >"$WORK/cf-bad"
refused "over 1 MiB of content" "4:14: write_files[0]: the files' content is over 1048576 bytes in all"
printf '#cloud-config\nwrite_files:\n  - path: /x\n    encoding: b64\n    content: "s3cret-content!"\n' >"$WORK/cf-bad"
refused "bad base64, without quoting the content" "5:14: write_files[0].content: is not valid base64"
check "... (the content is never in a message)" "$(grep -c s3cret "$WORK/cf.err")" 0
mkdir -p "$WORK/cf-link-root" "$WORK/cf-outside"
ln -s "$WORK/cf-outside" "$WORK/cf-link-root/etc"
"$CF" "$WORK/cf.yaml" "$WORK/cf-link-root" 2>"$WORK/cf.err"
check "cloud-files does not follow a symlink out of the root" "$?:$(ls -A "$WORK/cf-outside")" "1:"

# ---- the head, in its namespace ----
cluster_init "$SUBNET" 2
# The group the nodes belong to, for --render-user-data (no provider: this head launches
# nothing; the test runs the hooks itself).
cat >>"$CONF/cluster.yaml" <<EOC
autoscaler:
  head_address: "$SUBNET.1:$CTL_PORT"
worker_groups:
  - name: cpu
    resources: {num_cpus: 2, memory: 4294967296}
EOC
echo "applications: []" >"$CONF/apps.yaml"
in_head() { ip netns exec "$HNS" "$@"; }
in_head "$HEAD_BIN" -c "$CONF" --state-dir "$STATE" >>"$WORK/head.log" 2>&1 &
HEAD_PID=$!
SERVE_PIDS+=("$HEAD_PID")
wait_until 20 in_head curl -fs -o /dev/null -m 2 "$API/-/healthz" ||
        { fail "serve-head starts"; sed 's/^/#   /' "$WORK/head.log"; finish; exit 1; }
nodes() { in_head curl -fsS -m 5 "$API/api/cluster/nodes"; }
node_field() { nodes | jq -r --arg n "$1" --arg f "$2" '.nodes[] | select(.node_id == $n) | .[$f] | tostring'; }
alive() { [ "$(node_field "$1" state)" = ALIVE ] && [ "$(node_field "$1" connected)" = true ]; }
gone() { ! alive "$1"; }
# mint NODE: a single-use token bound to NODE, valid 10 minutes.
mint() { in_head "$HEAD_BIN" -c "$CONF" --state-dir "$STATE" --join-token create --ttl 10m --uses 1 --name "$1" 2>>"$WORK/mint.log"; }

# user_data NODE GROUP TOKEN: the user-data serve-head renders (the file, mode 0600).
user_data() {
        local f=$WORK/user-data-$1
        render_user_data "$CONF" "$2" "$1" "$3" "$f" || fail "serve-head --render-user-data $2 --node-name $1"
        echo "$f"
}
OPTIONS=$(jq -cn --arg s "$PSTATE" --arg b "$SW" --arg w "$WORKER_BIN" --arg p "$PREFIX" --arg n "$SUBNET" \
        '{state_dir: $s, bridge_netns: $b, bridge: "br0", subnet: $n, worker_bin: $w, netns_prefix: $p}')
# hook create|delete NAME [USER_DATA] / hook list GROUP: runs a hook as serve-head does (cwd /,
# the contract's stdin); stdout to $WORK/out, stderr to $WORK/err; returns its exit status.
hook() {
        local in
        case $1 in
        create) in=$(jq -cn --arg n "$2" --arg u "$3" --argjson o "$OPTIONS" \
                        '{name: $n, group: "cpu", shape: {cpus: 2, memory: 4294967296, gpus: 0, custom: {}},
                          labels: {group: "cpu"}, user_data: $u, options: $o}') ;;
        delete) in=$(jq -cn --arg n "$2" --argjson o "$OPTIONS" '{name: $n, group: "cpu", id: "netns:\($n)", options: $o}') ;;
        list) in=$(jq -cn --arg g "$2" --argjson o "$OPTIONS" '{group: $g, options: $o}') ;;
        esac
        local args=("$2")
        [ "$1" = list ] && args=() # list takes no argument: the group is in stdin
        (cd / && "$HOOKS/$1" "${args[@]}" <<<"$in" >"$WORK/out" 2>"$WORK/err")
        local st=$?
        cat "$WORK/err" >>"$WORK/hooks.log"
        return $st
}

# ---- a node joins ----
T1=$(mint tn-1) || { fail "mint a token for tn-1"; finish; exit 1; }
SECRET=$(cut -d. -f4 <<<"$T1")
UD1=$(user_data tn-1 cpu "$T1")
hook create tn-1 "$UD1"
check "create tn-1 exits 0" "$?" 0
check "... and prints its id and the first free address" "$(cat "$WORK/out")" '{"id":"netns:tn-1","address":"10.232.0.100"}'
wait_until 30 alive tn-1 && pass "tn-1's worker joins the head" || { fail "tn-1's worker joins the head"; sed 's/^/#   /' "$PSTATE/tn-1/worker.log"; }
check "the head sees tn-1 at its address, in group cpu" "$(node_field tn-1 node_ip) $(node_field tn-1 group)" "10.232.0.100 cpu"
check "tn-1 runs in its own namespace" "$(ip netns identify "$(jq .pid "$PSTATE/tn-1/record.json")")" "$PREFIX-tn-1"
check "the join token is written mode 0600 under the node's root" \
        "$(stat -c %a "$PSTATE/tn-1/root/etc/serve/join-token")" 600
check_contains "worker.yaml points the worker at the node's root" "$(cat "$PSTATE/tn-1/root/etc/serve/worker.yaml")" \
        "join_token_file: \"$PSTATE/tn-1/root/etc/serve/join-token\""

# ---- list ----
hook list cpu
check "list cpu: tn-1 with its id and group" "$(jq -c '[.name, .group, .id, (.created | type)]' "$WORK/out")" \
        '["tn-1","cpu","netns:tn-1","number"]'
hook list gpu
check "list gpu: nothing (tn-1 is in group cpu)" "$?:$(cat "$WORK/out")" "0:"

# ---- a used token ----
UD2=$(user_data tn-2 cpu "$T1")
hook create tn-2 "$UD2"
check "create tn-2 (a used token) exits 0: it does not wait for the join" "$?" 0
check "... tn-2 gets the next free address" "$(jq -r .address "$WORK/out")" "10.232.0.101"
wait_until 30 grep -qE "token (used up|is for another node)" "$PSTATE/tn-2/worker.log" &&
        pass "the head refuses tn-2's token and its worker log says why" ||
        { fail "the head refuses tn-2's token and its worker log says why"; sed 's/^/#   /' "$PSTATE/tn-2/worker.log"; }
check "the head never lists tn-2" "$(nodes | jq '[.nodes[] | select(.node_id == "tn-2")] | length')" 0

check "no worker logged the join token's secret" "$(cat "$PSTATE"/tn-*/worker.log | grep -c -- "$SECRET")" 0

# ---- delete ----
hook delete tn-1
check "delete tn-1 exits 0" "$?" 0
check "... its namespace is gone" "$(ip netns list | grep -c "^$PREFIX-tn-1\b")" 0
wait_until 30 gone tn-1 && pass "the head sees tn-1 go" || fail "the head sees tn-1 go ($(node_field tn-1 state))"
hook delete tn-1
check "delete tn-1 again exits 0" "$?" 0
hook delete tn-2
check "delete tn-2 exits 0" "$?" 0
hook list cpu
check "list cpu after the deletes: nothing" "$(cat "$WORK/out")" ""
# As installed: the hooks beside cloud-files, found there without SERVE_CLOUD_FILES.
mkdir -p "$WORK/installed"
cp "$HOOKS/create" "$HOOKS/delete" "$HOOKS/list" "$SERVE_CLOUD_FILES" "$WORK/installed/"
T3=$(mint tn-3)
HOOKS=$WORK/installed SERVE_CLOUD_FILES='' hook create tn-3 "$(user_data tn-3 cpu "$T3")"
check "installed layout: create finds cloud-files beside itself" "$?:$(cat "$WORK/err")" "0:"
check "a node created after the deletes gets the lowest free address again" "$(jq -r .address "$WORK/out")" "10.232.0.100"
wait_until 30 alive tn-3 && pass "tn-3 joins" || fail "tn-3 joins"
HOOKS=$WORK/installed hook delete tn-3

# ---- refusals leave nothing behind ----
hook create "../x" "$UD1"
check_contains "create refuses a name outside [A-Za-z0-9._-]{1,63}" "$? $(cat "$WORK/err")" "1 netns create: invalid node name"
hook create ".." "$UD1"
check "create refuses the name '..'" "$?" 1
printf 'write_files: []\n' >"$WORK/not-cloud-config"
hook create tn-bad "$WORK/not-cloud-config"
check_contains "create refuses a user-data that is no #cloud-config, naming file and line" "$? $(cat "$WORK/err")" \
        "1 cloud-files: $WORK/not-cloud-config:1:1: the first line must be \"#cloud-config\""
check "... and leaves no namespace or record" "$(ip netns list | grep -c "^$PREFIX-tn-bad\b") $(ls "$PSTATE" | wc -l)" "0 0"

# ---- 20 cycles ----
DUMMY=SRV1.$(printf '0%.0s' $(seq 64)).0123456789abcdef.$(printf '1%.0s' $(seq 64))
UDC=$(user_data cyc cpu "$DUMMY")
bad=0
for i in $(seq 20); do
        hook create "cyc-$i" "$UDC" || { bad=$((bad + 1)); echo "# create cyc-$i: $(cat "$WORK/err")"; }
        hook delete "cyc-$i" || { bad=$((bad + 1)); echo "# delete cyc-$i: $(cat "$WORK/err")"; }
done
check "20 create/delete cycles succeed" "$bad" 0
check "... and leave no namespace" "$(ip netns list | grep -c "^$PREFIX-")" 0
live_workers() { # workers started by the provider that still run (zombies are not running)
        local p n=0
        for p in $(pgrep -f -- "--config $PSTATE/" || true); do
                [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" = Z ] || [ ! -e "/proc/$p" ] || n=$((n + 1))
        done
        echo "$n"
}
check "... no worker process" "$(live_workers)" 0
check "... no veth in the bridge's namespace but the head's" "$(ip -n "$SW" -o link show master br0 | awk -F': ' '{print $2}' | cut -d@ -f1 | tr '\n' ' ')" "head-port "
check "... no record in state_dir" "$(find "$PSTATE" -mindepth 1 ! -name .lock | wc -l)" 0

# ---- secrets ----
check "no hook printed the join token's secret" "$(grep -c -- "$SECRET" "$WORK/hooks.log" "$WORK/out" | awk -F: '{s += $2} END {print s}')" 0
check "... nor did the head" "$(grep -c -- "$SECRET" "$WORK/head.log")" 0

finish
