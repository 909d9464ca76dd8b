#!/usr/bin/env bash
# The provider examples for real infrastructure (providers/examples/libvirt and aws) against
# fakes of virt-install, virsh and aws on PATH that record their arguments and print canned
# answers. Nothing here reaches libvirt or a cloud.
#
# What an operator would notice:
#   - create passes the user-data file, the node's name and the shape's sizes (and the group
#     and node tags) to the tool, and prints the contract's {"id", "address"};
#   - a retried AWS create asks EC2 with the same client token (one instance, not two);
#   - delete stops and removes the node, and exits 0 for a node that is already gone;
#   - list turns the tool's answer into the contract's JSON lines, for the asked group only;
#   - no hook prints the user-data (it holds the join token).
. "$(dirname "$0")/lib.sh"

command -v jq >/dev/null || { echo "1..0 # SKIP jq is not installed (scripts/install-deps test)"; exit 77; }

EX=$top_srcdir/providers/examples
FAKE=$WORK/fake
mkdir -p "$WORK/bin" "$FAKE"
export FAKE
# Each fake appends its command line to $FAKE/calls (one line, shell-quoted) and keeps its last
# argv, NUL-separated, in $FAKE/TOOL.argv.
for tool in virt-install virsh aws; do
        cat >"$WORK/bin/$tool" <<'EOF'
#!/usr/bin/env bash
tool=$(basename "$0")
printf '%s\0' "$@" >"$FAKE/$tool.argv"
{ printf '%s' "$tool"; printf ' %q' "$@"; echo; } >>"$FAKE/calls"
args=" $* "
case $tool in
virt-install) echo "Starting install..."; exit 0 ;;
virsh)
        # The domain is the last argument but options.
        for a in "$@"; do [[ $a == -* ]] || dom=$a; done
        case $args in
        *" list "*) cat "$FAKE/virsh-list" ;;
        *" desc "*) cat "$FAKE/desc-$dom" 2>/dev/null || { echo "error: failed to get domain '$dom'" >&2; exit 1; } ;;
        *" domstate "*) grep -qx "$dom" "$FAKE/virsh-list" 2>/dev/null && echo running ||
                { echo "error: failed to get domain '$dom'" >&2; exit 1; } ;;
        *" destroy "* | *" undefine "*) grep -qx "$dom" "$FAKE/virsh-list" ||
                { echo "error: failed to get domain '$dom'" >&2; exit 1; } ;;
        esac ;;
aws)
        case $args in
        *" run-instances "*) echo '{"Instances": [{"InstanceId": "i-0abc", "PrivateIpAddress": "10.0.1.5", "State": {"Name": "pending"}}]}' ;;
        *" describe-instances "*) cat "$FAKE/describe" ;;
        *" terminate-instances "*i-gone*) echo "An error occurred (InvalidInstanceID.NotFound) when calling the TerminateInstances operation: The instance ID 'i-gone' does not exist" >&2; exit 254 ;;
        *" terminate-instances "*) echo '{"TerminatingInstances": []}' ;;
        esac ;;
esac
EOF
        chmod +x "$WORK/bin/$tool"
done
export PATH=$WORK/bin:$PATH

# arg TOOL OPTION: the argument after OPTION in TOOL's last command line.
arg() {
        local a i
        mapfile -d '' a <"$FAKE/$1.argv"
        for ((i = 0; i < ${#a[@]} - 1; i++)); do [ "${a[i]}" = "$2" ] && { printf '%s' "${a[i + 1]}"; return; }; done
}
has() { grep -qzxF -- "$2" "$FAKE/$1.argv"; } # has TOOL WORD: TOOL's last argv holds WORD
# run HOOK ARG JSON: runs a hook as serve-head does (cwd /, the JSON on stdin); stdout in OUT,
# stderr appended to $WORK/hooks.err; returns its status.
run() {
        local st
        : >"$FAKE/calls"
        OUT=$(cd / && "$EX/$1" ${2:+"$2"} <<<"$3" 2>>"$WORK/hooks.err")
        st=$?
        printf '%s\n' "$OUT" >>"$WORK/hooks.out"
        return $st
}
SECRET=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
UD=$WORK/user-data
(umask 077; printf '#cloud-config\nwrite_files:\n  - path: /etc/serve/join-token\n    content: "SRV1.x.y.%s"\n' "$SECRET" >"$UD")
create_in() { # create_in GROUP NAME CPUS MEMORY GPUS OPTIONS_JSON
        jq -cn --arg g "$1" --arg n "$2" --argjson c "$3" --argjson m "$4" --argjson gp "$5" --arg u "$UD" --argjson o "$6" \
                '{name: $n, group: $g, shape: {cpus: $c, memory: $m, gpus: $gp, custom: {}}, labels: {group: $g}, user_data: $u, options: $o}'
}

# ---- libvirt ----
LV='{"image": "/var/lib/serve/images/debian-12.qcow2", "network": "serve-net", "os_variant": "debian12", "connect": "qemu+ssh://kvm1/system"}'
run libvirt/create cpu-1 "$(create_in cpu cpu-1 2 4294967296 0 "$LV")"
check "libvirt create exits 0 and prints the id" "$?:$OUT" '0:{"id":"libvirt:serve-cpu-1"}'
check "... virt-install gets the name, the shape and the user-data" \
        "$(arg virt-install --name) $(arg virt-install --vcpus) $(arg virt-install --memory) $(arg virt-install --cloud-init)" \
        "serve-cpu-1 2 4096 user-data=$UD"
check "... the libvirt URI, network, OS variant and a disk backed by the image" \
        "$(arg virt-install --connect) $(arg virt-install --network) $(arg virt-install --os-variant) $(arg virt-install --disk)" \
        "qemu+ssh://kvm1/system network=serve-net debian12 size=20,backing_store=/var/lib/serve/images/debian-12.qcow2,format=qcow2"
check_contains "... and a description holding the group, for list" "$(arg virt-install --metadata)" "description=serve:group=cpu;node=cpu-1;created="
has virt-install --noautoconsole && pass "... and does not wait on a console" || fail "... and does not wait on a console"
run libvirt/create cpu-2 "$(create_in cpu cpu-2 1.5 1610612736 0 "$LV")"
check "a fractional shape rounds up: 2 vCPUs, 1536 MiB" "$(arg virt-install --vcpus) $(arg virt-install --memory)" "2 1536"
run libvirt/create gpu-1 "$(create_in gpu gpu-1 8 4294967296 1 "$LV")"
check_contains "a GPU shape without gpu_hostdevs is refused" "$? $(tail -n 1 "$WORK/hooks.err")" "1 libvirt create: the shape asks for 1 GPUs"
run libvirt/create gpu-1 "$(create_in gpu gpu-1 8 4294967296 1 "$(jq -c '. + {gpu_hostdevs: "pci_0000_65_00_0"}' <<<"$LV")")"
check "... with it, the GPU is passed through" "$?:$(arg virt-install --hostdev)" "0:pci_0000_65_00_0"
run libvirt/create cpu-3 "$(create_in cpu cpu-3 2 4294967296 0 '{}')"
check_contains "create without an image is refused" "$? $(tail -n 1 "$WORK/hooks.err")" "1 libvirt create: option image is required"

printf 'serve-cpu-1\nserve-gpu-1\nother-vm\n' >"$FAKE/virsh-list"
echo "serve:group=cpu;node=cpu-1;created=1764560000" >"$FAKE/desc-serve-cpu-1"
echo "serve:group=gpu;node=gpu-1;created=1764560100" >"$FAKE/desc-serve-gpu-1"
echo "a VM someone else made" >"$FAKE/desc-other-vm"
run libvirt/list "" '{"group": "cpu", "options": {"connect": "qemu+ssh://kvm1/system"}}'
check "libvirt list cpu: the cpu node only, in the contract's JSON" "$?:$OUT" \
        '0:{"name":"cpu-1","group":"cpu","id":"libvirt:serve-cpu-1","created":1764560000}'
run libvirt/list "" '{"group": "gpu", "options": {}}'
check "libvirt list gpu: the gpu node only" "$(jq -r .name <<<"$OUT")" "gpu-1"
run libvirt/delete cpu-1 '{"name": "cpu-1", "group": "cpu", "id": "libvirt:serve-cpu-1", "options": {"connect": "qemu+ssh://kvm1/system"}}'
check "libvirt delete exits 0" "$?" 0
check "... after virsh destroy and undefine --remove-all-storage" \
        "$(grep -c '^virsh --connect qemu+ssh://kvm1/system destroy serve-cpu-1$' "$FAKE/calls") $(grep -c '^virsh --connect qemu+ssh://kvm1/system undefine serve-cpu-1 --remove-all-storage$' "$FAKE/calls")" "1 1"
run libvirt/delete cpu-9 '{"name": "cpu-9", "group": "cpu", "id": "", "options": {}}'
check "libvirt delete of a missing node exits 0, touching nothing" "$?:$(grep -c 'destroy\|undefine' "$FAKE/calls")" "0:0"

# ---- aws ----
AO='{"image_id": "ami-0123", "instance_type": "m7i.large", "region": "eu-west-1", "subnet_id": "subnet-9", "security_group_ids": "sg-1,sg-2"}'
run aws/create cpu-1 "$(create_in cpu cpu-1 2 4294967296 0 "$AO")"
check "aws create exits 0 and prints the instance's id and address" "$?:$OUT" '0:{"id":"i-0abc","address":"10.0.1.5"}'
check "... run-instances gets the user-data file, image, type, region and subnet" \
        "$(arg aws --user-data) $(arg aws --image-id) $(arg aws --instance-type) $(arg aws --region) $(arg aws --subnet-id)" \
        "file://$UD ami-0123 m7i.large eu-west-1 subnet-9"
check "... and tags the instance with its group and node" \
        "$(arg aws --tag-specifications | jq -c '.[0] | [.ResourceType, ([.Tags[] | select(.Key | startswith("serve:")) | {(.Key): .Value}] | add)]')" \
        '["instance",{"serve:group":"cpu","serve:node":"cpu-1"}]'
has aws sg-2 && pass "... and both security groups" || fail "... and both security groups"
token1=$(arg aws --client-token)
run aws/create cpu-1 "$(create_in cpu cpu-1 2 4294967296 0 "$AO")"
token2=$(arg aws --client-token)
run aws/create cpu-2 "$(create_in cpu cpu-2 2 4294967296 0 "$AO")"
check "a retried create sends the same client token, another node another" \
        "$([ -n "$token1" ] && [ "$token1" = "$token2" ] && echo same) $([ "$token1" != "$(arg aws --client-token)" ] && echo other)" "same other"
run aws/create cpu-3 "$(create_in cpu cpu-3 2 4294967296 0 '{"image_id": "ami-0123"}')"
check_contains "create without an instance type is refused" "$? $(tail -n 1 "$WORK/hooks.err")" "1 aws create: option instance_type is required"

cat >"$FAKE/describe" <<'EOF'
{"Reservations": [
  {"Instances": [{"InstanceId": "i-0abc", "LaunchTime": "2025-12-01T04:05:06+00:00",
                  "Tags": [{"Key": "Name", "Value": "cpu-1"}, {"Key": "serve:group", "Value": "cpu"}, {"Key": "serve:node", "Value": "cpu-1"}]}]},
  {"Instances": [{"InstanceId": "i-0def", "LaunchTime": "2025-12-01T04:05:07.000Z",
                  "Tags": [{"Key": "serve:node", "Value": "cpu-2"}, {"Key": "serve:group", "Value": "cpu"}]}]}
]}
EOF
run aws/list "" '{"group": "cpu", "options": {"region": "eu-west-1"}}'
check "aws list: a JSON line per instance, launch time as unix seconds" "$?:$(tr '\n' ' ' <<<"$OUT")" \
        '0:{"name":"cpu-1","group":"cpu","id":"i-0abc","created":1764561906} {"name":"cpu-2","group":"cpu","id":"i-0def","created":1764561907} '
check "... asking only for the group's live instances" \
        "$(arg aws --filters | jq -c 'map({(.Name): .Values}) | add')" \
        '{"tag:serve:group":["cpu"],"instance-state-name":["pending","running","stopping","stopped"]}'
run aws/delete cpu-1 '{"name": "cpu-1", "group": "cpu", "id": "i-0abc", "options": {"region": "eu-west-1"}}'
check "aws delete terminates the instance" "$?:$(grep -c '^aws --region eu-west-1 ec2 terminate-instances --output json --instance-ids i-0abc$' "$FAKE/calls")" "0:1"
run aws/delete cpu-8 '{"name": "cpu-8", "group": "cpu", "id": "i-gone", "options": {}}'
check "aws delete of an instance that is gone exits 0" "$?" 0
echo '{"Reservations": []}' >"$FAKE/describe"
run aws/delete cpu-9 '{"name": "cpu-9", "group": "cpu", "id": "", "options": {}}'
check "aws delete without an id looks the node up by tag; none: exits 0, terminates nothing" \
        "$?:$(arg aws --filters | jq -r '.[0].Values[0]'):$(grep -c terminate "$FAKE/calls")" "0:cpu-9:0"

# ---- secrets ----
check "no hook printed the user-data's join token" "$(cat "$WORK/hooks.out" "$WORK/hooks.err" | grep -c "$SECRET")" 0

finish
