#!/usr/bin/env bash
# Rolling node upgrades: when a worker group's labels change (cluster.yaml + reload), its nodes
# are replaced one at a time — the replacement joins, the old node's replicas start on it and
# are ready before the old ones stop, then the old node is deleted — under load with zero
# failed requests and never more than max_surge (1) extra nodes.
#
# Namespaces on a bridge (10.242.0.0/24) through examples/autoscaling and the netns provider;
# the main namespace routes the subnet to a blackhole while the test runs.
. "$(dirname "$0")/lib.sh"
NET=10.242.0 P=scu$$
. "$(dirname "$0")/autoscaling-lib.sh"
export SERVE_EXAMPLE_APPS=$WORK/apps.yaml
cat >"$SERVE_EXAMPLE_APPS" <<EOF
applications:
  - name: work
    route_prefix: /work
    import_path: slow:app
    deployments:
      - name: Slow
        num_replicas: 4
        max_ongoing_requests: 8
        graceful_shutdown_timeout_s: 10
        ray_actor_options: {num_cpus: 1}
EOF

reload() { kill -HUP "$(cat "$RUN/head.pid")"; }
# cpu nodes that are not being deleted, and how many have label tier=$1
cpu_state() { api /api/cluster/nodes | jq -r --arg t "$1" '[.nodes[] | select(.group == "cpu" and .state != "DELETING")] |
        "\(length) \([.[] | select(.labels.tier == $t and .state == "ALIVE")] | length)"'; }
ready_replicas() { api /api/serve/applications/ | jq '[.applications.work.deployments.Slow.replicas[] | select(.state == "RUNNING")] | length'; }

start_example

# Two nodes of the cpu group (min_nodes 2) and the four replicas spread over three nodes.
sed -i 's/^    min_nodes: 0/    min_nodes: 2/' "$RUN/cluster.yaml"
reload
for _ in $(seq 600); do
        read -r n v1 <<<"$(cpu_state burst)"
        [ "$v1" = 2 ] && [ "$(ready_replicas)" = 4 ] && break
        sleep 0.1
done
check "min_nodes: 2 after a reload brings two nodes of the cpu group" "${v1:-0}" 2
check "the four replicas run" "$(ready_replicas)" 4
old=$(api /api/cluster/nodes | jq -r '[.nodes[] | select(.group == "cpu") | .node_id] | sort | join(" ")')

CODES=$WORK/codes
STOP=$WORK/stop-load
load() {
        while [ ! -e "$STOP" ]; do
                in_client curl -s -o /dev/null -w '%{http_code}\n' -m 30 "http://$NET.2:8000/work?ms=50" >>"$CODES"
        done
}
for _ in $(seq 4); do load & done

sed -i 's/^      tier: burst$/      tier: v2/' "$RUN/cluster.yaml"
reload
max_n=0
for _ in $(seq 1800); do
        read -r n v2 <<<"$(cpu_state v2)"
        [ "${n:-0}" -gt "$max_n" ] && max_n=$n
        [ "$v2" = 2 ] && [ "$n" = 2 ] && [ "$(ready_replicas)" = 4 ] &&
                [ "$(api /api/cluster/nodes | jq '[.nodes[] | select(.group == "cpu")] | length')" = 2 ] && break
        sleep 0.1
done
touch "$STOP"
wait
check "both nodes were replaced by nodes with the new labels" "${v2:-0}" 2
new=$(api /api/cluster/nodes | jq -r '[.nodes[] | select(.group == "cpu") | .node_id] | sort | join(" ")')
check "the new nodes are new ($old -> $new)" "$(comm -12 <(tr ' ' '\n' <<<"$old") <(tr ' ' '\n' <<<"$new") | grep -c .)" 0
check "never more than max_surge (1) extra node (saw $max_n at once)" "$([ "$max_n" -le 3 ] && echo yes)" yes
total=$(wc -l <"$CODES")
check "every request during the upgrade succeeded ($total requests)" "$(grep -cv '^200$' "$CODES")" 0
check "the four replicas run after the upgrade" "$(ready_replicas)" 4
ev=$(events)
check "each old node was drained as replaced" "$(jq -r '[.events[] | select(.kind == "node_draining" and (.message | contains("replaced by")))] | length' <<<"$ev")" 2
check "and deleted" "$(for o in $old; do jq -r --arg n "$o" '.events[] | select(.kind == "node_deleted" and .node == $n) | .node' <<<"$ev"; done | grep -c .)" 2

# ---- a restarted head adopts the group's nodes from the provider's list ----
kill -TERM "$(cat "$RUN/head.pid")"
for _ in $(seq 100); do kill -0 "$(cat "$RUN/head.pid")" 2>/dev/null || break; sleep 0.1; done
ip netns exec "$P-head" "$top_builddir/serve-head" -c "$RUN" --state-dir "$RUN/state" >>"$RUN/head.log" 2>&1 &
echo $! >"$RUN/head.pid"
for _ in $(seq 300); do
        [ "$(events | jq '[.events[] | select(.kind == "node_adopted")] | length')" = 2 ] && break
        sleep 0.1
done
ev=$(events)
check "the restarted head adopts both nodes from the provider's list" "$(jq '[.events[] | select(.kind == "node_adopted")] | length' <<<"$ev")" 2
check "and launches none" "$(jq '[.events[] | select(.kind == "node_launching")] | length' <<<"$ev")" 0
check "they are the same nodes" "$(api /api/cluster/nodes | jq -r '[.nodes[] | select(.group == "cpu") | .node_id] | sort | join(" ")')" "$new"

# ---- a node the provider lost is marked gone (and min_nodes brings another) ----
lost=${new%% *}
jq -nc --arg n "$lost" --arg d "$RUN/netns" --arg p "$P" --arg net "$NET" \
        '{name:$n, group:"cpu", id:"", options:{state_dir:$d, bridge_netns:($p + "-sw"), subnet:$net, netns_prefix:$p}}' |
        "$top_srcdir/providers/netns/delete" "$lost" >/dev/null
for _ in $(seq 600); do
        read -r n v2 <<<"$(cpu_state v2)"
        events | jq -e --arg n "$lost" '.events[] | select(.kind == "node_lost" and .node == $n)' >/dev/null &&
                [ "$v2" = 2 ] && break
        sleep 0.1
done
check_contains "a node deleted behind the head's back is marked gone at the next reconcile" \
        "$(events | jq -r --arg n "$lost" '.events[] | select(.kind == "node_lost" and .node == $n) | .message')" "no longer has"
check "min_nodes brings the group back to two nodes" "${v2:-0}" 2
check "the lost node is no longer in the nodes list" "$(api /api/cluster/nodes | jq --arg n "$lost" '[.nodes[] | select(.node_id == $n)] | length')" 0

stop_example
check "nothing of the example is left" "$(ip netns list | grep -c "^$P-")" 0
# Deleted from outside the head's mount namespace (where create made them): every worker goes.
check "no serve-worker of the example runs" "$(pgrep -f "$RUN" | grep -c .)" 0
finish
