#!/usr/bin/env bash
# Trust between nodes: the head's CA, join tokens, mutually authenticated TLS on the control and
# data ports, certificate renewal and node removal. Nodes on 127.0.14.x.
#
# What a user would notice:
#   - the head makes its CA on first start (key mode 0600); a node joins with a minted token and
#     stores its key and certificate (0600) under its state_dir; it restarts without any token;
#   - a token past its TTL, used up, bound to another name or revoked is refused, and the worker
#     says why and exits 1; `--join-token list` shows no secret;
#   - a client without a certificate, with a self-signed one, or with one from another CA (even
#     naming a real node) gets nothing from a data or control port: the request it sends is
#     never answered, and the refusal is logged once for a burst of attempts;
#   - a worker pointed at an impostor head (another CA) refuses it and applies nothing: with a
#     stored identity it keeps retrying and runs no replica; joining with a token, it exits 1;
#   - certificates are renewed before they expire (validity 20 s here) and serving goes on;
#   - `serve nodes remove` revokes a node: its replicas move, it cannot reconnect (exit 1, again
#     after a restart), and its certificate no longer opens another node's data port;
#   - no secret is in a log, a command line or a replica's environment.
. "$(dirname "$0")/lib.sh"

command -v jq >/dev/null || { echo "1..0 # SKIP jq is not installed (scripts/install-deps test)"; exit 77; }
command -v openssl >/dev/null || { echo "1..0 # SKIP openssl is not installed (scripts/install-deps test)"; exit 77; }

cluster_init 127.0.14 3
cat >>"$CONF/cluster.yaml" <<EOF
tls:
  node_cert_validity_s: 20
EOF
cat >"$CONF/apps.yaml" <<EOF
applications:
  - name: echo
    route_prefix: /echo
    import_path: echo:app
    deployments:
      - name: Echo
        num_replicas: 2
        max_replicas_per_node: 1
        ray_actor_options: {num_cpus: 0.5}
EOF
JT=(env "$HEAD_BIN" -c "$CONF" --state-dir "$STATE" --join-token)

start_head || { fail "serve-head starts"; sed 's/^/#   /' "$WORK/head.log"; finish; exit 1; }
check "the head made its CA, key mode 0600" "$(stat -c %a "$STATE/pki/ca.key" 2>&1)" "600"
check_contains "the head logs the CA's hash" "$(cat "$WORK/head.log")" "cluster CA in the state directory (sha256 "

# A worker with a token file: `mint ARGS...` writes a fresh token to $CONF/tok-$RANDOM, prints its name.
mint() {
        local f=$CONF/tok-$RANDOM
        (umask 077; "${JT[@]}" create "$@" >"$f" 2>>"$WORK/mint.log") || return 1
        echo "$(basename "$f")"
}
alive() { [ "$(nodes_json | jq -r --arg n "$1" '.nodes[] | select(.node_id==$n) | .state')" = ALIVE ]; }
exited() { ! kill -0 "${WPID[$1]}" 2>/dev/null; }
exit_status() { wait "${WPID[$1]}" 2>/dev/null; echo $?; }

# ---- joining ----
T1=$(mint --ttl 15m --uses 1)
check_contains "a minted token carries the CA hash" "$(cat "$CONF/$T1")" "SRV1.$(openssl x509 -in "$STATE/pki/ca.crt" -outform DER | sha256sum | cut -d' ' -f1)."
start_worker 1 "$T1"
wait_until 30 alive node-1 && pass "node-1 joins with a single-use token" || fail "node-1 joins with a single-use token"
check "node-1's key and certificate are stored 0600" "$(stat -c %a "$WORK/node-1/node.key" "$WORK/node-1/node.crt" | tr '\n' ' ')" "600 600 "
check "node-1's certificate names it, issued by the cluster CA" \
        "$(openssl verify -CAfile "$STATE/pki/ca.crt" "$WORK/node-1/node.crt" 2>&1 | tail -n 1) $(openssl x509 -in "$WORK/node-1/node.crt" -noout -subject | grep -o 'CN *= *node-1')" \
        "$WORK/node-1/node.crt: OK CN = node-1"
start_worker 2
wait_until 30 alive node-2 && pass "node-2 joins with the long-lived token and ca_file" || fail "node-2 joins with the long-lived token and ca_file"

# The used token again, for another node: refused, and the worker exits 1 saying why.
start_worker 3 "$T1"
wait_until 20 exited 3
check "a used-up token: the worker exits 1" "$(exit_status 3)" 1
check_contains "... and says why" "$(cat "$WORK/worker-3.log")" "token used up"
T_EXP=$(mint --ttl 1)
deadline=$(( $(date +%s) + 2 ))
wait_until 5 bash -c "[ \$(date +%s) -gt $deadline ]" # the token's TTL passes (wall clock)
start_worker 3 "$T_EXP"
wait_until 20 exited 3
check_contains "a token past its TTL is refused" "$(exit_status 3) $(cat "$WORK/worker-3.log")" "token expired"
T_NAMED=$(mint --name node-9)
start_worker 3 "$T_NAMED"
wait_until 20 exited 3
check_contains "a token bound to another node name is refused" "$(exit_status 3) $(cat "$WORK/worker-3.log")" "token is for another node"
T_REV=$(mint)
id=$(cut -d. -f3 "$CONF/$T_REV")
"${JT[@]}" revoke "$id" >/dev/null
start_worker 3 "$T_REV"
wait_until 20 exited 3
check_contains "a revoked token is refused" "$(exit_status 3) $(cat "$WORK/worker-3.log")" "token revoked"
list=$("${JT[@]}" list 2>&1)
check_contains "--join-token list shows the tokens" "$list" "$id"
secret=$(cut -d. -f4 "$CONF/$T_REV")
check "... and never a secret" "$(grep -c "$secret" <<<"$list")" 0

# ---- serving across nodes, over TLS ----
W1=http://$NET.2:$HTTP_PORT W2=http://$NET.3:$HTTP_PORT
wait_until 30 bash -c "[ \$(curl -s -o /dev/null -w '%{http_code}' -m 5 $W1/echo) = 200 ] && [ \$(curl -s -o /dev/null -w '%{http_code}' -m 5 $W2/echo) = 200 ]" &&
        pass "both nodes serve /echo" || fail "both nodes serve /echo"
m=$(curl -fsS -m 5 "http://$NET.2:$METRICS_PORT/metrics")
check_contains "worker /metrics says TLS is in use" "$m" "serve_transport_tls 1"
check_contains "... and whether kTLS is" "$m" 'serve_tls_ktls_handshakes_total{direction="tx"}'
grep -q "data connection to node node-2 .* is up: " "$WORK/worker-1.log" && pass "the data link logs its TLS mode" || fail "the data link logs its TLS mode"

# ---- strangers on the ports ----
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -keyout "$WORK/self.key" -out "$WORK/self.crt" \
        -subj "/O=serve/OU=serve-node/CN=node-2" 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -keyout "$WORK/ca2.key" -out "$WORK/ca2.crt" \
        -subj "/CN=another cluster" -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$WORK/other.key" -subj "/O=serve/OU=serve-node/CN=node-2" 2>/dev/null |
        openssl x509 -req -CA "$WORK/ca2.crt" -CAkey "$WORK/ca2.key" -CAcreateserial -days 1 -out "$WORK/other.crt" 2>/dev/null
# probe PORT [s_client options]: a TLS client that sends an HTTP request and a control frame;
# prints what it gets back after the handshake.
probe() {
        local port=$1; shift
        { printf 'GET /echo HTTP/1.1\r\nHost: x\r\n\r\n'; sleep 1; } |
                timeout 10 openssl s_client -quiet -connect "$NET.2:$port" "$@" 2>/dev/null
}
before=$(grep -c "refused a data connection" "$WORK/worker-1.log")
for kind in none self other; do
        case $kind in
        none) out=$(probe "$DATA_PORT") ;;
        self) out=$(probe "$DATA_PORT" -cert "$WORK/self.crt" -key "$WORK/self.key") ;;
        other) out=$(probe "$DATA_PORT" -cert "$WORK/other.crt" -key "$WORK/other.key") ;;
        esac
        check "data port, client with $kind certificate: nothing answered" "$out" ""
done
for _ in 1 2 3 4 5; do probe "$DATA_PORT" >/dev/null; done
after=$(grep -c "refused a data connection" "$WORK/worker-1.log")
check "a burst of refusals is logged once" "$((after - before))" 1
m=$(curl -fsS -m 5 "http://$NET.2:$METRICS_PORT/metrics")
refused=$(grep '^serve_peer_links_refused_total ' <<<"$m" | cut -d' ' -f2)
[ "${refused:-0}" -ge 8 ] && pass "refused data links are counted ($refused)" || fail "refused data links are counted (got '$refused', want >= 8)"
# A plaintext client (the old protocol) on the data port.
out=$( (exec 3<>"/dev/tcp/$NET.2/$DATA_PORT" && printf 'GET /echo HTTP/1.1\r\nHost: x\r\n\r\n' >&3 && timeout 3 cat <&3) 2>/dev/null)
check "data port, plaintext client: no HTTP answer" "$(grep -c 'HTTP' <<<"$out")" 0
# The control port: the same three, each sending a hello as a worker would.
hello='{"v":1,"type":"hello","node":{"name":"node-2"}}'
ctl_probe() {
        { printf '\x00\x00\x00%b%s' "\\x$(printf '%02x' ${#hello})" "$hello"; sleep 1; } |
                timeout 10 openssl s_client -quiet -connect "$NET.1:$CTL_PORT" "$@" 2>/dev/null | tr -d '\0'
}
check_contains "control port, no certificate: a hello is refused" "$(ctl_probe)" "join first"
check "control port, self-signed certificate: nothing answered" "$(ctl_probe -cert "$WORK/self.crt" -key "$WORK/self.key")" ""
check "control port, another CA's certificate: nothing answered" "$(ctl_probe -cert "$WORK/other.crt" -key "$WORK/other.key")" ""
check_contains "the head logs the refused handshakes" "$(cat "$WORK/head.log")" "refused a connection to the control port from"

# ---- renewal ----
serial0=$(openssl x509 -in "$WORK/node-1/node.crt" -noout -serial)
wait_until 40 bash -c "[ \"\$(openssl x509 -in $WORK/node-1/node.crt -noout -serial)\" != '$serial0' ]" &&
        pass "node-1's certificate is renewed before it expires" || fail "node-1's certificate is renewed before it expires"
check_contains "... and the worker logs it" "$(cat "$WORK/worker-1.log")" "renewed this node's certificate"
wait_until 30 bash -c "grep -c 'renewed this node' $WORK/worker-1.log | grep -qv '^1$'" # a second renewal: the renewed one works too
check "after renewals, both nodes still serve /echo" "$(http_code "$W1/echo") $(http_code "$W2/echo")" "200 200"
alive node-1 && alive node-2 && pass "both nodes stay ALIVE through renewals" || fail "both nodes stay ALIVE through renewals"

# ---- restart without a token ----
kill -TERM "${WPID[1]}"; wait "${WPID[1]}" 2>/dev/null
rm -f "$CONF/$T1"
start_worker 1 "$T1"
wait_until 30 bash -c "grep -q 'registered with serve-head' <(sed -n '/from the stored identity/,\$p' $WORK/worker-1.log)" &&
        pass "node-1 restarts with its stored certificate and no token file" || fail "node-1 restarts with its stored certificate and no token file"
wait_until 30 alive node-1 || true

# ---- an impostor head ----
IMP=$WORK/impostor; mkdir -p "$IMP/conf" "$IMP/state"
IMP_PORT=$(free_port) IMP_API=$(free_port)
(umask 077; echo imp-token >"$IMP/conf/join-token"; echo imp-api >"$IMP/conf/api-token")
cp "$CONF/apps.yaml" "$IMP/conf/apps.yaml"
cat >"$IMP/conf/cluster.yaml" <<EOF
head: {api_host: $NET.1, api_port: $IMP_API, control_host: $NET.1, control_port: $IMP_PORT, api_token_file: api-token, join_token_file: join-token}
EOF
"$HEAD_BIN" -c "$IMP/conf" --state-dir "$IMP/state" >>"$WORK/impostor.log" 2>&1 &
SERVE_PIDS+=($!)
wait_until 20 curl -fs -o /dev/null -m 2 "http://$NET.1:$IMP_API/-/healthz"
kill -TERM "${WPID[2]}"; wait "${WPID[2]}" 2>/dev/null
sed -i "s/^head_address: .*/head_address: $NET.1:$IMP_PORT/" "$CONF/worker-2.yaml"
: >"$WORK/worker-2.log"
"$WORKER_BIN" -c "$CONF/worker-2.yaml" >>"$WORK/worker-2.log" 2>&1 &
WPID[2]=$!; SERVE_PIDS+=("${WPID[2]}")
wait_until 20 grep -q "cannot authenticate serve-head" "$WORK/worker-2.log" &&
        pass "a worker with a stored identity refuses an impostor head" || fail "a worker with a stored identity refuses an impostor head"
check "... which never registers it" "$(curl -fsS -m 5 "http://$NET.1:$IMP_API/api/cluster/nodes" | jq '.nodes | length')" 0
check "... and it applies nothing: no replica starts" "$(grep -c 'ready (pid' "$WORK/worker-2.log")" 0
kill -TERM "${WPID[2]}"; wait "${WPID[2]}" 2>/dev/null
# A node joining with this cluster's token through the impostor: it never sends the secret.
T_IMP=$(mint)
mkdir -p "$WORK/node-7"
sed -e "s/^head_address: .*/head_address: $NET.1:$IMP_PORT/" -e "s/^join_token_file: .*/join_token_file: $T_IMP/" \
        -e "s/node-2/node-7/" -e "s#/node-2#/node-7#" -e '/^ca_file/d' "$CONF/worker-2.yaml" >"$CONF/worker-7.yaml"
"$WORKER_BIN" -c "$CONF/worker-7.yaml" >>"$WORK/worker-7.log" 2>&1
check "joining through an impostor: the worker exits 1" "$?" 1
check_contains "... saying it is not this cluster's head" "$(cat "$WORK/worker-7.log")" "not this cluster's head"
check "... and the impostor never saw a join" "$(grep -c 'joined\|refused to let' "$WORK/impostor.log")" 0
sed -i "s/^head_address: .*/head_address: $NET.1:$CTL_PORT/" "$CONF/worker-2.yaml"
"$WORKER_BIN" -c "$CONF/worker-2.yaml" >>"$WORK/worker-2.log" 2>&1 &
WPID[2]=$!; SERVE_PIDS+=("${WPID[2]}")
wait_until 30 alive node-2 && pass "node-2 comes back to the real head" || fail "node-2 comes back to the real head"

# ---- the long-lived token with the CA hash (`--join-token show`) ----
(umask 077; "${JT[@]}" show >"$CONF/show-token")
check_contains "--join-token show prints the long-lived token with the CA hash" "$(cat "$CONF/show-token")" "SRV1."
NO_CA_FILE=1 start_worker 3 show-token
wait_until 30 alive node-3 && pass "node-3 joins with the shown token and no ca_file" || fail "node-3 joins with the shown token and no ca_file"

# ---- removing a node ----
(umask 077; echo wrong >"$CONF/wrong-token")
out=$("$CLI" --address "$API" --token-file "$CONF/wrong-token" nodes remove node-2 2>&1)
check_contains "serve nodes remove with a wrong token is refused" "$? $out" "1 serve: serve-head at $API refused the API token"
out=$("$CLI" --address "$API" --token-file "$CONF/api-token" nodes remove node-2 2>&1)
check_contains "serve nodes remove node-2" "$out" "removed node node-2"
wait_until 20 exited 2
check "the removed node cannot reconnect: its worker exits 1" "$(exit_status 2)" 1
check_contains "... saying it was removed and how to come back" "$(cat "$WORK/worker-2.log")" "refused this node: this node was removed from the cluster: its certificate is revoked; to join again, remove"
"$WORKER_BIN" -c "$CONF/worker-2.yaml" >>"$WORK/worker-2b.log" 2>&1
check "... and again after a restart" "$?" 1
check "the head no longer lists it" "$(nodes_json | jq '[.nodes[] | select(.node_id=="node-2")] | length')" 0
out=$(probe "$DATA_PORT" -cert "$WORK/node-2/node.crt" -key "$WORK/node-2/node.key")
check "its certificate no longer opens node-1's data port" "$out" ""
on_1_and_3() { [ "$(running echo Echo | cut -d' ' -f1 | tr '\n' ' ')" = "node-1 node-3 " ]; }
wait_until 30 on_1_and_3 && pass "its replica moved: node-1 and node-3 run Echo" || fail "its replica moved (got '$(running echo Echo | tr '\n' ' ')')"

# ---- secrets ----
secrets=("$(cat "$CONF/join-token")" "$(cut -d. -f4 "$CONF/$T_NAMED")")
leaks=0
for s in "${secrets[@]}"; do
        grep -rqF -- "$s" "$WORK"/*.log && leaks=$((leaks + 1))
        for p in $(pgrep -f "serve-(head|worker|replica)" || true); do
                tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF -- "$s" && leaks=$((leaks + 1))
                tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qF -- "$s" && leaks=$((leaks + 1))
        done
done
check "no secret in a log, a command line or an environment" "$leaks" 0

finish
