#!/usr/bin/env bash
# The user-data serve-head hands a provider's create hook is valid cloud-config: rendered with
# `serve-head --render-user-data` for several worker groups (plain, GPU with its own apt source
# and package version, hostile labels, plaintext with an IPv6 head) and checked by cloud-init's
# own `cloud-init schema`; a broken document fails the same check, so the check can fail. The
# worker.yaml inside is read with PyYAML (what cloud-init reads the document with): operator
# text in labels stays values. Also: an unknown group or a broken cluster.yaml exit 1 with a
# message. Nothing here touches the network.
. "$(dirname "$0")/lib.sh"

command -v cloud-init >/dev/null ||
        { echo "1..0 # SKIP cloud-init is not installed (scripts/install-deps test installs it)"; exit 77; }
command -v python3 >/dev/null && python3 -c 'import yaml' 2>/dev/null ||
        { echo "1..0 # SKIP python3-yaml is not installed"; exit 77; }

HEAD=$top_builddir/serve-head

mkdir -p "$WORK/tls" "$WORK/plain" "$WORK/bad"
cat >"$WORK/tls/cluster.yaml" <<'EOF'
autoscaler:
  head_address: "10.232.0.1:8266"
worker_groups:
  - name: cpu
    min_nodes: 0
    max_nodes: 4
    provider: local
    resources: {num_cpus: 2, memory: 4Gi}
  - name: gpu
    provider: local
    resources: {num_cpus: 8, memory: 64Gi, num_gpus: 2, gpu_memory: 80Gi, custom: {tpu: 1, fast_disk: 0.5}}
    labels: {zone: b, accel: h100}
    apt_source: "deb [trusted=yes] file:/srv/serve-repo ./"
    package_version: "1:1.2.3-1~bpo12+1"
    provider_options: {image: debian-12, spot: true}
  - name: hostile
    provider: local
    resources: {num_cpus: 1}
    labels:
      owner: 'x" head_address: "evil:1" #'
      "k: v": "- [a, {b: c}] &x *y"
      note: "ends with \\"
      "yes": "no"
EOF
cat >"$WORK/plain/cluster.yaml" <<'EOF'
transport: plaintext
autoscaler: {head_address: "[fd00::1]:8266"}
worker_groups:
  - name: small
    provider: local
    resources: {num_cpus: 0.5, custom: {}}
EOF

# render NAME CONFIG_DIR GROUP [ARGS...]: writes $WORK/NAME.yaml, checks the exit status.
render() {
        local name=$1 dir=$2 group=$3
        shift 3
        "$HEAD" --config-dir "$dir" --render-user-data "$group" "$@" >"$WORK/$name.yaml" 2>"$WORK/$name.err"
        check "$name: serve-head --render-user-data $group exits 0" "$?" 0
}

# schema_ok FILE: cloud-init's schema check passes.
schema_ok() {
        local out st
        out=$(cloud-init schema --config-file "$1" 2>&1)
        st=$?
        check "$(basename "$1"): cloud-init schema accepts it" "$st" 0
        [ "$st" -eq 0 ] || echo "$out" | sed 's/^/# /'
}
schema_fails() {
        cloud-init schema --config-file "$1" >"$1.out" 2>&1
        local st=$?
        if [ "$st" -ne 0 ]; then pass "$2: cloud-init schema rejects it"; else fail "$2: cloud-init schema accepted it"; fi
}

# worker_yaml FILE EXPR: a Python expression over w (worker.yaml as PyYAML reads it) and d (the
# whole document).
worker_yaml() {
        python3 - "$1" "$2" <<'EOF'
import sys, yaml
d = yaml.safe_load(open(sys.argv[1]))
w = yaml.safe_load(d["write_files"][0]["content"])
print(eval(sys.argv[2]))
EOF
}

render cpu "$WORK/tls" cpu
render gpu "$WORK/tls" gpu --node-name gpu-3f9a2c
render hostile "$WORK/tls" hostile
render small "$WORK/plain" small
for f in cpu gpu hostile small; do schema_ok "$WORK/$f.yaml"; done

check "cpu: the default node name is GROUP-example" "$(worker_yaml "$WORK/cpu.yaml" 'w["node_name"]')" cpu-example
check "cpu: no apt block, the package from the image's sources" \
        "$(worker_yaml "$WORK/cpu.yaml" '("apt" in d, d["packages"])')" "(False, ['serve'])"
check "cpu: the token is REDACTED" "$(worker_yaml "$WORK/cpu.yaml" 'd["write_files"][1]["content"]')" REDACTED
check "cpu: head address, node_address auto, shape" \
        "$(worker_yaml "$WORK/cpu.yaml" '(w["head_address"], w["node_address"], w["resources"])')" \
        "('10.232.0.1:8266', 'auto', {'num_cpus': 2, 'memory': 4294967296})"
check "gpu: apt source and package version" \
        "$(worker_yaml "$WORK/gpu.yaml" '(d["apt"]["sources"]["serve.list"]["source"], d["packages"])')" \
        "('deb [trusted=yes] file:/srv/serve-repo ./', ['serve=1:1.2.3-1~bpo12+1'])"
check "gpu: node name, group labels" \
        "$(worker_yaml "$WORK/gpu.yaml" '(w["node_name"], w["labels"]["group"], w["labels"]["zone"], len(w["labels"]["serve.config"]))')" \
        "('gpu-3f9a2c', 'gpu', 'b', 16)"
check "gpu: GPUs and custom resources" \
        "$(worker_yaml "$WORK/gpu.yaml" '(w["resources"]["num_gpus"], w["resources"]["custom"])')" \
        "(2, {'fast_disk': 0.5, 'tpu': 1})"
check "hostile: labels stay values, strings all" \
        "$(worker_yaml "$WORK/hostile.yaml" 'sorted((k, v) for k, v in w["labels"].items() if k != "serve.config")')" \
        "[('group', 'hostile'), ('k: v', '- [a, {b: c}] &x *y'), ('note', 'ends with \\\\'), ('owner', 'x\" head_address: \"evil:1\" #'), ('yes', 'no')]"
check "hostile: the keys of worker.yaml" "$(worker_yaml "$WORK/hostile.yaml" 'sorted(w)')" \
        "['head_address', 'labels', 'node_address', 'node_name', 'resources']"
check "small: plaintext, IPv6 head" "$(worker_yaml "$WORK/small.yaml" '(w["transport"], w["head_address"])')" \
        "('plaintext', '[fd00::1]:8266')"
check "the config hash differs between groups" \
        "$(worker_yaml "$WORK/cpu.yaml" 'w["labels"]["serve.config"]' | grep -c "$(worker_yaml "$WORK/gpu.yaml" 'w["labels"]["serve.config"]')")" 0

# The check can fail: a missing header, a wrong type, broken YAML.
tail -n +2 "$WORK/cpu.yaml" >"$WORK/no-header.yaml"
schema_fails "$WORK/no-header.yaml" "without #cloud-config"
sed 's/^package_update: true$/package_update: [1, 2]/' "$WORK/cpu.yaml" >"$WORK/wrong-type.yaml"
schema_fails "$WORK/wrong-type.yaml" "package_update: a list"
sed 's/^  - \[systemctl, enable, serve-worker\]$/  - [systemctl, enable/' "$WORK/cpu.yaml" >"$WORK/broken.yaml"
schema_fails "$WORK/broken.yaml" "an unclosed flow sequence"

# Mistakes an operator makes.
out=$("$HEAD" --config-dir "$WORK/tls" --render-user-data gpus 2>&1)
check "an unknown group exits 1" "$?" 1
check_contains "... and lists the groups" "$out" 'has no worker group "gpus"; its groups: cpu, gpu, hostile'
printf 'worker_groups:\n  - name: cpu\n    provider: local\n' >"$WORK/bad/cluster.yaml"
out=$("$HEAD" --config-dir "$WORK/bad" --render-user-data cpu 2>&1)
check "a broken cluster.yaml exits 1" "$?" 1
check_contains "... with its file:line:column" "$out" \
        "$WORK/bad/cluster.yaml:2:5: worker_groups[0].resources.num_cpus: required when the group has a provider"
out=$("$HEAD" --config-dir "$WORK/tls" --render-user-data cpu --node-name 'a b' 2>&1)
check "a bad node name exits 1" "$?" 1
check_contains "... saying what a node name is" "$out" '"a b" is no node name'

finish
