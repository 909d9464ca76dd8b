#!/usr/bin/env bash
# Pipelines: deployments calling each other through handles (tests/apps/calls.c) — round trip,
# fan-out with futures, errors, backpressure, cancellation two levels deep, batching, streaming
# through a handle, graph errors — on `serve run`, then a handle call to a deployment on another
# node of a two-node cluster (head and workers on 127.0.17.x).
set -u
. "$(dirname "$0")/lib.sh"

DIR=$WORK/marks
mkdir -p "$DIR"
search_yaml() {
        cat <<YAML
  - name: search
    route_prefix: /search
    import_path: search:app
    deployments:
      - name: Pipeline
        num_replicas: ${2:-1}
      - name: Embedder
        num_replicas: 2
${1:-}
YAML
}
calls_yaml() {
        cat <<YAML
applications:
  - name: calls
    route_prefix: /c
    import_path: calls:${1:-app}
    args: {dir: "$DIR"}
    deployments:
      - name: Leaf
        user_config: {batch_wait_timeout_s: 2}
${2:-}
YAML
}
{ calls_yaml app; search_yaml; } >"$WORK/apps.yaml"
start_serve main "$WORK/apps.yaml" || { fail "serve run starts"; finish; exit 1; }
U=http://127.0.0.1:$PORT/c
wait_until 30 bash -c "[ \"\$(curl -s -m 5 -d x '$U/call?m=echo')\" = Front:x ]"

# ---- handle calls ----
check "a handle call round trip (the callee sees its caller)" "$(curl -s -m 10 -d hello "$U/call?m=echo")" "Front:hello"
check "fan-out: 8 async calls, each future gets its own answer" "$(curl -s -m 10 "$U/fanout?n=8")" \
        "Front:0,Front:1,Front:2,Front:3,Front:4,Front:5,Front:6,Front:7"
check "a failing callee: status, -EREMOTEIO and its message reach the caller" "$(curl -s -m 10 "$U/error")" \
        "status=500 rc=-121 msg=leaf failed on purpose"
check "the callee's status is the caller's to answer" "$(http_code "$U/call?m=fail")" "500"
check_contains "a call to a deployment the caller does not bind is an error naming it" "$(curl -s -m 10 "$U/unbound")" \
        "status=404 rc=-2 msg=deployment 'Front' does not bind 'Other'"
check "a call to a method the callee lacks is an error naming it" "$(curl -s -m 10 "$U/nomethod")" \
        "status=404 rc=-2 msg=deployment 'Leaf' has no method 'nosuch'"

# Busy takes one call and queues one (max_ongoing_requests 1, max_queued_requests 1): of four
# calls at once, two are refused at once with back-pressure, two are served once it lets go.
rm -f "$DIR/release"
curl -s -m 30 "$U/busy?n=4" >"$WORK/busy.out" &
busy_pid=$!
wait_until 20 test -e "$DIR/busy-holding"
touch "$DIR/release"
wait "$busy_pid"
check "a full queue is an error the caller sees (-EBUSY, 503)" "$(cat "$WORK/busy.out")" "ok=2 busy=2"

# Cancellation cascades: the client goes away while Front -> Mid -> Leaf.wait runs.
curl -s -m 60 "$U/chain" >/dev/null &
chain_pid=$!
wait_until 20 test -e "$DIR/leaf-started" || fail "Leaf.wait started"
kill "$chain_pid"
wait_until 20 test -e "$DIR/cancelled-leaf" && pass "client disconnect cancels the call two levels down (Leaf sees cancelled)" ||
        fail "client disconnect cancels the call two levels down (Leaf sees cancelled)"
wait_until 20 test -e "$DIR/cancelled-mid" && pass "... and the level between (Mid sees cancelled)" ||
        fail "... and the level between (Mid sees cancelled)"
check "the replicas keep serving after the cancellation" "$(curl -s -m 10 -d again "$U/call?m=echo")" "Front:again"

# ---- batching: max_batch_size 4, batch_wait_timeout_s 2 (user_config) ----
check "8 concurrent calls to a batched handler form two full batches" "$(curl -s -m 20 "$U/batch?n=8")" "4,4,4,4,4,4,4,4"
check "a lone request runs as a batch of one once the wait passes" "$(curl -s -m 20 "$U/batch?n=1")" "1"

# ---- streaming through a handle ----
check "a streaming call yields the callee's pieces to the caller" "$(curl -s -m 20 -d 5 "$U/pieces")" \
        "rc=0 pieces>0=1 bytes=40 first=piece 0"

# ---- the search pipeline: Pipeline -> Embedder (batched) -> Ranker ----
S=http://127.0.0.1:$PORT/search
search() { curl -s -m 20 -d "$1" "$S"; }
wait_until 30 bash -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' -m 5 -d '{\"query\":\"a\",\"docs\":[\"a\"]}' '$S')\" = 200 ]"
check "search: the README's query ranks the cat first" \
        "$(search '{"query":"cat","docs":["a dog barks","a cat sleeps"],"top_k":1}' | jq -c '[.results[].index]')" "[1]"
out=$(search '{"query":"red apple pie","docs":["blue sky","red apple pie","apple","pie in the sky","red"],"top_k":5}')
check "search: results in descending score, every document ranked" "$(jq -c '[.results[].index]' <<<"$out")" "[1,2,4,3,0]"
check "search: the same text scores 1" "$(jq '.results[0].score' <<<"$out")" "1"
check "search: scores descend" "$(jq '[.results[].score] | . == (sort | reverse)' <<<"$out")" "true"
check "search: top_k limits the results" "$(search '{"query":"a","docs":["a","b","c"],"top_k":2}' | jq '.results | length')" "2"
check "search: bad JSON is 400" "$(http_code -d '{"query":' "$S")" "400"
check_contains "search: ... with a message" "$(search '{"query":')" "not valid JSON"
check_contains "search: a missing field is named" "$(search '{"docs":["a"]}')" "query"
check_contains "search: a document that is not a string is named" "$(search '{"query":"a","docs":["a",3]}')" '\"docs\"[1] must be a string'
check "search: top_k 0 is 400" "$(http_code -d '{"query":"a","docs":["a"],"top_k":0}' "$S")" "400"
check "search: GET is 405" "$(http_code "$S")" "405"
check_contains "search: the Ranker says where it ranks" "$(cat "$LOG")" "Ranker: no GPU visible, ranking on the CPU"

# ---- the graph is checked when the module loads ----
calls_yaml cyclic >"$WORK/cyclic.yaml"
out=$("$SERVE" run --http-host 127.0.0.1 --http-port "$(free_port)" "$WORK/cyclic.yaml" 2>&1)
check_contains "binds that form a cycle are a config error naming it" "$out" "binds form a call cycle: A > B > A"
check_contains "... with the file, line and column" "$out" "cyclic.yaml:2:"
calls_yaml dangling >"$WORK/dangling.yaml"
out=$("$SERVE" run --http-host 127.0.0.1 --http-port "$(free_port)" "$WORK/dangling.yaml" 2>&1)
check_contains "a bind to a deployment the application lacks is a config error naming it" "$out" \
        "deployment 'D' binds 'Missing', which is not a deployment of the application"

kill "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null

# ---- two nodes: Front on node-1, Leaf only on node-2 (custom resources pin them) ----
cluster_init 127.0.17 3
worker_resources() { echo "{num_cpus: 16, custom: {$( [ "$1" = 1 ] && echo front || echo leaf): 1}}"; }
calls_yaml app "      - name: Front
        ray_actor_options: {resources: {front: 0.5}}
      - name: Mid
        ray_actor_options: {resources: {front: 0.1}}
      - name: Busy
        ray_actor_options: {resources: {front: 0.1}}" | sed 's/^      - name: Leaf$/      - name: Leaf\n        ray_actor_options: {resources: {leaf: 0.5}}/' >"$CONF/apps.yaml"
search_yaml "        ray_actor_options: {resources: {front: 0.2}}
      - name: Ranker
        ray_actor_options: {resources: {leaf: 0.2}}" 2 >>"$CONF/apps.yaml"
start_head || { fail "serve-head starts"; sed 's/^/#   /' "$WORK/head.log"; finish; exit 1; }
for n in 1 2; do start_worker "$n"; done
node_http() { echo "http://$NET.$(($1 + 1)):$HTTP_PORT"; }
N1=$(node_http 1)/c
wait_until 60 bash -c "[ \"\$(curl -s -m 5 -d x '$N1/call?m=echo')\" = Front:x ]" || fail "the cluster serves the calls application"
check "Front runs on node-1 only" "$(running calls Front | cut -d' ' -f1 | sort -u)" "node-1"
check "Leaf runs on node-2 only" "$(running calls Leaf | cut -d' ' -f1 | sort -u)" "node-2"
leaf_pid=$(running calls Leaf | cut -d' ' -f2)
check "a handle call reaches a deployment on another node" "$(curl -s -m 10 "$N1/where")" "status=200 rc=0 msg=- $leaf_pid"
check "... with the argument and the answer intact" "$(curl -s -m 10 -d remote "$N1/call?m=echo")" "Front:remote"
check "fan-out across the link" "$(curl -s -m 10 "$N1/fanout?n=4")" "Front:0,Front:1,Front:2,Front:3"
check "errors come back across the link" "$(curl -s -m 10 "$N1/error")" "status=500 rc=-121 msg=leaf failed on purpose"
rm -f "$DIR/leaf-started" "$DIR/cancelled-leaf" "$DIR/cancelled-mid"
curl -s -m 60 "$N1/chain" >/dev/null &
chain_pid=$!
wait_until 20 test -e "$DIR/leaf-started" || fail "Leaf.wait started on node-2"
kill "$chain_pid"
wait_until 20 test -e "$DIR/cancelled-leaf" && pass "cancellation crosses the link (Leaf on node-2 sees cancelled)" ||
        fail "cancellation crosses the link (Leaf on node-2 sees cancelled)"

wait_until 60 bash -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' -m 5 -d '{\"query\":\"a\",\"docs\":[\"a\"]}' $(node_http 2)/search)\" = 200 ]"
check "search: Embedder runs on node-1 only" "$(running search Embedder | cut -d' ' -f1 | sort -u)" "node-1"
check "search: Ranker runs on node-2 only" "$(running search Ranker | cut -d' ' -f1 | sort -u)" "node-2"
for n in 1 2; do
        check "search end to end through node-$n's proxy, Embedder and Ranker on different nodes" \
                "$(curl -s -m 20 -d '{"query":"red apple pie","docs":["blue sky","red apple pie","apple","pie in the sky","red"],"top_k":5}' "$(node_http "$n")/search" | jq -c '[.results[].index]')" "[1,2,4,3,0]"
done

finish
