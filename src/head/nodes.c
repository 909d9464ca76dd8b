/* The control port: workers connect, say hello (join token, resources, the replicas they run),
 * then report every heartbeat interval and say goodbye when they stop. A node is alive while it
 * reports; silent for worker_timeout_s it is dead and its replicas are placed elsewhere, and a
 * dead node that reports again is alive again with the replicas it still runs. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "ctlmsg.h"
#include "head.h"
#include "log.h"
#include "macros.h"
#include "report.h"
#include "tls.h"

static size_t node_hash(const char *name) {
        uint64_t x = 0xcbf29ce484222325ull;
        for (const char *p = name; *p; p++)
                x = (x ^ (uint8_t)*p) * 0x100000001b3ull;
        return (size_t)(x ^ (x >> 29)) & (NODE_INDEX_SIZE - 1);
}

void node_free(struct node *n) {
        if (!n)
                return;
        if (n->h->node_index)
                for (struct node **pp = &n->h->node_index[node_hash(n->name)]; *pp; pp = &(*pp)->hash_next)
                        if (*pp == n) {
                                *pp = n->hash_next;
                                break;
                        }
        list_del(&n->link);
        if (n->nc) {
                n->nc->userdata = NULL;
                netconn_close(n->nc, false);
        }
        free(n->name);
        free(n->address);
        free(n->ready_cache);
        cJSON_Delete(n->labels);
        for (size_t i = 0; i < n->n_custom; i++)
                free((char *)n->custom[i].name);
        free(n->custom);
        cJSON_Delete(n->report);
        dash_snapshot_free(n->dash_prev);
        free(n->report_text);
        free(n->sent_assign);
        free(n->shares);
        free(n);
}

const char *node_group(const struct node *n) {
        const char *g = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(n->labels, "group"));
        return g && *g ? g : "default";
}

struct node *node_find(struct head *h, const char *name) {
        /* A hello at a time from 10,000 nodes: a list scan each made joining quadratic. */
        for (struct node *n = h->node_index ? h->node_index[node_hash(name)] : NULL; n; n = n->hash_next)
                if (streq(n->name, name))
                        return n;
        return NULL;
}

struct node *node_get(struct head *h, const char *name) {
        struct node *n = node_find(h, name);
        if (n)
                return n;
        if (!h->node_index && !(h->node_index = calloc(NODE_INDEX_SIZE, sizeof *h->node_index)))
                return NULL;
        n = calloc(1, sizeof *n);
        if (!n || !(n->name = strdup(name))) {
                free(n);
                return NULL;
        }
        size_t b = node_hash(name);
        n->hash_next = h->node_index[b];
        h->node_index[b] = n;
        n->h = h;
        n->routing_id = ++h->next_routing_id;
        n->routing_version = ROUTING_NONE;
        n->address = strdup("");
        n->labels = cJSON_CreateObject();
        list_add_tail(&h->nodes, &n->link);
        h->n_nodes++;
        return n;
}

static void node_lost(struct node *n, const char *why) {
        if (!n->alive)
                return;
        event_log_add(&n->h->events, LOG_WARNING, "node_dead", n->name, n->name,
                      "node %s is dead (%s): placing its replicas elsewhere", n->name, why);
        n->alive = false;
        cJSON_Delete(n->report);
        n->report = NULL;
        n->ready_sig = 0;
        n->h->dirty = true;
        n->h->routing_dirty = true;
}

static void node_on_close(struct netconn *nc, int err) {
        struct node *n = nc->userdata;
        if (!n)
                return;
        n->nc = NULL;
        event_log_add(&n->h->events, LOG_WARNING, "node_disconnected", n->name, n->name,
                      "node %s disconnected (%s); it counts as alive until worker_timeout_s passes", n->name,
                      err ? strerror(-err) : "closed");
}

static int parse_hello_node(struct head *h, struct node *n, const cJSON *node, char *err, size_t errlen) {
        const cJSON *res, *labels, *gpus, *custom, *it;
        const char *address;
        long long v;
        double d;
        int r;

        if ((r = ctl_get_string(node, "address", 200, true, &address, err, errlen)) < 0 ||
            (r = ctl_get_object(node, "labels", false, &labels, err, errlen)) < 0 ||
            (r = ctl_get_object(node, "resources", true, &res, err, errlen)) < 0 ||
            (r = ctl_get_array(res, "gpus", 1024, false, &gpus, err, errlen)) < 0 ||
            (r = ctl_get_object(res, "custom", false, &custom, err, errlen)) < 0)
                return r;
        free(n->address);
        n->address = strdup(address);
        if ((r = ctl_get_int(node, "http_port", 0, 65535, true, &v, err, errlen)) < 0)
                return r;
        n->http_port = (int)v;
        if ((r = ctl_get_int(node, "data_port", 1, 65535, true, &v, err, errlen)) < 0)
                return r;
        n->data_port = (int)v;
        v = 0;
        if ((r = ctl_get_int(node, "metrics_port", 0, 65535, false, &v, err, errlen)) < 0)
                return r;
        n->metrics_port = (int)v;
        if ((r = ctl_get_double(res, "num_cpus", 0, 1e6, true, &n->cpus, err, errlen)) < 0)
                return r;
        d = 0;
        if ((r = ctl_get_double(res, "memory", 0, 1e18, false, &d, err, errlen)) < 0)
                return r;
        n->memory = (uint64_t)d;
        n->n_gpus = (unsigned)cJSON_GetArraySize(gpus);
        cJSON_Delete(n->labels);
        n->labels = labels ? cJSON_Duplicate(labels, true) : cJSON_CreateObject();
        cJSON_ArrayForEach(it, labels)
                if (!cJSON_IsString(it)) {
                        snprintf(err, errlen, "field labels: values must be strings");
                        return -EINVAL;
                }
        for (size_t i = 0; i < n->n_custom; i++)
                free((char *)n->custom[i].name);
        free(n->custom);
        n->custom = calloc((size_t)cJSON_GetArraySize(custom) + 1, sizeof *n->custom);
        n->n_custom = 0;
        cJSON_ArrayForEach(it, custom) {
                if (!cJSON_IsNumber(it) || it->valuedouble < 0) {
                        snprintf(err, errlen, "field custom: amounts must be numbers >= 0");
                        return -EINVAL;
                }
                n->custom[n->n_custom].name = strdup(it->string);
                n->custom[n->n_custom++].amount = it->valuedouble;
        }
        return 0;
}

/* A node that comes back (or a head that restarted) adopts what the node runs, so healthy
 * replicas are never restarted: its replicas of current deployments become its assignment
 * unless the assignment already names this node. */
static void adopt_replicas(struct head *h, struct node *n, const cJSON *replicas) {
        const cJSON *it;
        bool changed = false;

        for (size_t i = 0; h->spec && i < h->n_assign; i++) {
                struct assignment *a = &h->assign[i];
                const struct dep_spec *d = &h->spec->deps[i];
                unsigned count = 0;
                if (slot_for(a, n->name))
                        continue;
                cJSON_ArrayForEach(it, replicas) {
                        const char *st = cJSON_GetStringValue(cJSON_GetObjectItem(it, "state"));
                        if (streq(cJSON_GetStringValue(cJSON_GetObjectItem(it, "app")), d->app) &&
                            streq(cJSON_GetStringValue(cJSON_GetObjectItem(it, "deployment")), d->name) &&
                            streq_ptr(cJSON_GetStringValue(cJSON_GetObjectItem(it, "version")), d->version) &&
                            st && !streq(st, "STOPPING") && !cJSON_GetObjectItem(it, "gpus"))
                                count++;
                }
                if (count == 0)
                        continue;
                struct slot *ns = realloc(a->slots, (a->n_slots + 1) * sizeof *ns);
                if (!ns)
                        continue;
                a->slots = ns;
                a->slots[a->n_slots++] = (struct slot){ .node = strdup(n->name), .count = count };
                changed = true;
                log_info("node %s runs %u replica(s) of %s: keeping them", n->name, count, a->key);
        }
        if (changed)
                h->dirty = true;
}

bool token_equal(const char *a, const char *b) {
        size_t la = strlen(a), lb = strlen(b);
        unsigned char diff = la != lb;
        for (size_t i = 0; i < la; i++)
                diff |= (unsigned char)(a[i] ^ b[i % (lb ? lb : 1)]);
        return diff == 0;
}

/* Which replicas of which deployments run on a node, independent of their order: the routing
 * table is rebuilt only when this changes, not on every heartbeat. */
static uint64_t ready_signature(const cJSON *report) {
        const cJSON *it;
        uint64_t sum = 0;

        cJSON_ArrayForEach(it, cJSON_GetObjectItem(report, "replicas")) {
                const char *st = cJSON_GetStringValue(cJSON_GetObjectItem(it, "state"));
                const char *app = cJSON_GetStringValue(cJSON_GetObjectItem(it, "app"));
                const char *dep = cJSON_GetStringValue(cJSON_GetObjectItem(it, "deployment"));
                uint64_t x = 0xcbf29ce484222325ull;
                if (!st || !streq(st, "RUNNING") || !app || !dep)
                        continue;
                for (const char *p = app; *p; p++)
                        x = (x ^ (uint8_t)*p) * 0x100000001b3ull;
                x = (x ^ '/') * 0x100000001b3ull;
                for (const char *p = dep; *p; p++)
                        x = (x ^ (uint8_t)*p) * 0x100000001b3ull;
                sum += x * 0x9e3779b97f4a7c15ull;
        }
        return sum + 1; /* never 0: a node that reports nothing still differs from "no report yet" */
}

static const struct netconn_ops node_ops;
static struct log_limiter hello_limiter, pending_limiter;

static void refuse(struct netconn *nc, const char *reason) {
        cJSON *m = ctlmsg_new("refused");
        cJSON_AddStringToObject(m, "reason", reason);
        if (ctlmsg_encode(netconn_outbuf(nc), m) == 0)
                netconn_flush(nc);
        cJSON_Delete(m);
        nc->userdata = NULL;
        netconn_close(nc, true);
}

static void on_hello(struct pending_conn *pc, cJSON *m) {
        struct head *h = pc->h;
        struct netconn *nc = pc->nc;
        const cJSON *node, *replicas;
        const char *token, *name;
        char err[256] = "";
        struct node *n;

        _cleanup_free_ char *cert_name = TAKE_PTR(pc->cert_name);
        list_del(&pc->link);
        free(pc);
        /* With TLS the node proved its name with its certificate; in plaintext it shows the token. */
        if (!h->trust && (ctl_get_string(m, "token", 4096, true, &token, err, sizeof err) < 0 ||
                          !token_equal(token, h->join_token))) {
                log_error("refused a worker from %s: invalid join token (compare its join_token_file with %s)", nc->peer,
                          h->ccfg->head.join_token_file);
                refuse(nc, "invalid join token");
                return;
        }
        if (ctl_get_object(m, "node", true, &node, err, sizeof err) < 0 ||
            ctl_get_string(node, "name", 200, true, &name, err, sizeof err) < 0 ||
            ctl_get_array(m, "replicas", 100000, false, &replicas, err, sizeof err) < 0) {
                log_error("refused a worker from %s: invalid hello (%s)", nc->peer, err);
                refuse(nc, err);
                return;
        }
        if (!node_name_valid(name)) {
                log_error("refused a worker from %s: invalid node name '%s'", nc->peer, name);
                refuse(nc, "invalid node name");
                return;
        }
        if (cert_name && !streq(cert_name, name)) {
                log_error("refused a worker from %s: it says it is node %s, but its certificate is node %s's", nc->peer, name,
                          cert_name);
                refuse(nc, "the node name does not match the certificate");
                return;
        }
        n = node_find(h, name);
        if (!n && h->n_nodes >= MAX_NODES) {
                log_error("refused node %s from %s: the cluster already has %d nodes", name, nc->peer, MAX_NODES);
                refuse(nc, "too many nodes");
                return;
        }
        n = node_get(h, name);
        if (!n) {
                netconn_close(nc, false);
                return;
        }
        if (n->nc) {
                log_warning("node %s registered again from %s: replacing its old connection", name, nc->peer);
                n->nc->userdata = NULL;
                netconn_close(n->nc, false);
                n->nc = NULL;
        }
        if (parse_hello_node(h, n, node, err, sizeof err) < 0) {
                log_error("refused node %s from %s: invalid hello (%s)", name, nc->peer, err);
                refuse(nc, err);
                return;
        }
        /* The node that shares our address is the head node (proxy_location: HeadOnly). */
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        char local[64] = "";
        if (getsockname(nc->fd, (struct sockaddr *)&ss, &sl) == 0 && ss.ss_family == AF_INET)
                inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, local, sizeof local);
        n->head_node = streq(local, n->address);
        nc->userdata = n;
        n->nc = nc;
        n->last_seen_ns = now_ns();
        n->sent_config_epoch = -1;
        n->routing_version = ROUTING_NONE;
        free(n->sent_assign);
        n->sent_assign = NULL;
        bool was_alive = n->alive;
        n->alive = true;
        cJSON_Delete(n->report);
        n->report = NULL;
        n->ready_sig = 0;
        event_log_add(&h->events, LOG_INFO, "node_joined", name, name, "node %s registered from %s: %.1f CPUs, %.1f GiB, %u GPU(s)%s%s",
                      name, nc->peer, n->cpus, (double)n->memory / (1 << 30), n->n_gpus, n->head_node ? ", head node" : "",
                      was_alive ? "" : ", now alive");
        cJSON *w = ctlmsg_new("welcome");
        cJSON_AddNumberToObject(w, "heartbeat_interval_s", h->ccfg->worker_heartbeat_interval_s);
        node_send(n, w);
        adopt_replicas(h, n, replicas);
        groups_on_join(h, n);
        h->dirty = true;
}

/* The report in the frame at the start of nc->in is the same text as node n's latest: takes it
 * as that report again (the parsed, validated tree) without parsing it. A node reports every
 * heartbeat, mostly unchanged: at 10,000 nodes, parsing each was most of the head's work. */
static bool node_take_repeated_report(struct node *n, struct netconn *nc) {
        const char *body;
        size_t len;

        if (!n->report || !n->report_text || ctlmsg_peek(&nc->in, &body, &len) <= 0 || len != n->report_len ||
            memcmp(body, n->report_text, len) != 0)
                return false;
        buf_consume(&nc->in, 4 + len);
        n->last_seen_ns = now_ns();
        scaler_take_report(n->h->scaler, n->report);
        n->n_reports++;
        return true;
}

/* A copy of the JSON text of the frame at the start of nc->in (about to be parsed), or NULL. */
static char *frame_text_copy(struct netconn *nc, size_t *ret_len) {
        const char *body;
        size_t len;
        char *t;

        if (ctlmsg_peek(&nc->in, &body, &len) <= 0 || !(t = malloc(len)))
                return NULL;
        memcpy(t, body, len);
        *ret_len = len;
        return t;
}

static void node_on_data(struct netconn *nc) {
        struct node *n = nc->userdata;

        while (n && n->nc == nc) {
                cJSON *m = NULL;
                const char *type = NULL, *why = NULL;
                char err[256] = "";

                if (n->alive && node_take_repeated_report(n, nc))
                        continue;
                /* Copied before parsing consumes it; kept only for a valid report. */
                size_t text_len = 0;
                _cleanup_free_ char *text = frame_text_copy(nc, &text_len);
                int r = ctlmsg_decode(&nc->in, &m, &type, &why);

                if (r == 0)
                        return;
                if (r < 0) {
                        log_error("node %s sent an invalid message (%s): disconnecting it", n->name, why);
                        n->nc = NULL;
                        nc->userdata = NULL;
                        netconn_close(nc, false);
                        return;
                }
                n->last_seen_ns = now_ns();
                if (streq(type, "report")) {
                        if (report_validate(m, err, sizeof err) < 0) {
                                log_error("node %s sent an invalid report (%s): disconnecting it", n->name, err);
                                cJSON_Delete(m);
                                n->nc = NULL;
                                nc->userdata = NULL;
                                netconn_close(nc, false);
                                return;
                        }
                        if (!n->alive) {
                                /* It was declared dead (its replicas may be placed again
                                 * elsewhere already) but runs them still: keep those, as for a
                                 * node that registers again, rather than restart them. */
                                n->alive = true;
                                n->h->dirty = true;
                                event_log_add(&n->h->events, LOG_INFO, "node_alive", n->name, n->name,
                                              "node %s is alive again", n->name);
                                adopt_replicas(n->h, n, cJSON_GetObjectItem(m, "replicas"));
                        }
                        scaler_take_report(n->h->scaler, m);
                        dashboard_take_events(n->h, n, m);
                        cJSON_Delete(n->report);
                        n->report = TAKE_PTR(m);
                        free(n->report_text);
                        n->report_len = text ? text_len : 0;
                        n->report_text = TAKE_PTR(text);
                        n->n_reports++;
                        uint64_t sig = ready_signature(n->report);
                        if (sig != n->ready_sig) {
                                n->ready_sig = sig;
                                n->h->routing_dirty = true;
                        }
                } else if (streq(type, "renew")) {
                        trust_on_renew(n->h, n, m);
                } else if (streq(type, "resync")) {
                        /* It missed a delta (or could not use one): whole messages again. */
                        log_info("node %s asked for the whole config and routing table", n->name);
                        node_resync(n);
                } else if (streq(type, "goodbye")) {
                        event_log_add(&n->h->events, LOG_INFO, "node_stopping", n->name, n->name, "node %s is stopping", n->name);
                        node_lost(n, "it stopped");
                } else
                        log_debug("node %s: ignoring message '%s'", n->name, type);
                cJSON_Delete(m);
        }
}

static const struct netconn_ops node_ops = { .on_data = node_on_data, .on_close = node_on_close };

static void pending_free(struct pending_conn *pc) {
        list_del(&pc->link);
        free(pc->cert_name);
        free(pc);
}

/* The TLS handshake is done: a node's certificate may say hello; none may only join. */
static void pending_on_secure(struct netconn *nc) {
        struct pending_conn *pc = nc->userdata;
        const char *name = NULL;

        if (!pc)
                return;
        int r = trust_check_peer(pc->h, nc, &name);
        if (r < 0) {
                pending_free(pc);
                cJSON *m = ctlmsg_new("refused");
                cJSON_AddStringToObject(m, "reason", "this node was removed from the cluster: its certificate is revoked");
                cJSON_AddBoolToObject(m, "revoked", true);
                if (ctlmsg_encode(netconn_outbuf(nc), m) == 0)
                        netconn_flush(nc);
                cJSON_Delete(m);
                nc->userdata = NULL;
                netconn_close(nc, true);
                return;
        }
        if (r > 0) {
                pc->cert_name = strdup(name);
                if (!pc->cert_name) {
                        pending_free(pc);
                        nc->userdata = NULL;
                        netconn_close(nc, false);
                        return;
                }
                nc->in_limit = CTLMSG_MAX + 4; /* authenticated: a hello may list many replicas */
        } else
                pc->may_join = true;
}

static void pending_on_data(struct netconn *nc) {
        struct pending_conn *pc = nc->userdata;
        struct head *h;
        cJSON *m = NULL;
        const char *type = NULL, *why = NULL;
        int r;

        if (!pc)
                return;
        h = pc->h;
        r = ctlmsg_decode(&nc->in, &m, &type, &why);
        if (r == 0)
                return;
        if (r >= 0 && streq(type, "join") && pc->may_join) {
                pending_free(pc);
                trust_on_join(h, nc, m);
                cJSON_Delete(m);
                return;
        }
        if (r < 0 || !streq(type, "hello") || (h->trust && !pc->cert_name)) {
                const char *reason = r < 0                    ? why
                                     : streq(type, "join")     ? "this connection already has a certificate"
                                     : !streq(type, "hello")   ? "the first message must be hello"
                                                               : "no certificate: join first with a join token";
                log_limited(&hello_limiter, LOG_ERR, "refused a connection from %s: %s", nc->peer, reason);
                pending_free(pc);
                cJSON_Delete(m);
                refuse(nc, reason);
                return;
        }
        nc->ops = &node_ops;
        on_hello(pc, m);
        cJSON_Delete(m);
        if (nc->userdata && !nc->closed && nc->in.len)
                node_on_data(nc);
}

static void pending_on_close(struct netconn *nc, int err) {
        struct pending_conn *pc = nc->userdata;
        if (!pc)
                return;
        if (netconn_is_tls(nc) && !netconn_tls_peer(nc))
                trust_note_refused_handshake(pc->h, nc);
        pending_free(pc);
}

static const struct netconn_ops pending_ops = {
        .on_connect = pending_on_secure, .on_data = pending_on_data, .on_close = pending_on_close
};

void on_ctl_accept(struct netlistener *l, int fd) {
        struct head *h = l->userdata;
        struct pending_conn *pc;
        struct list *pos, *tmp;
        size_t n = 0;

        list_for_each_safe(pos, tmp, &h->pending)
                n++;
        if (n >= MAX_PENDING_CONNS) {
                log_limited(&pending_limiter, LOG_WARNING,
                            "refusing a control connection from a new peer: %d are still unauthenticated", MAX_PENDING_CONNS);
                close(fd);
                return;
        }
        pc = calloc(1, sizeof *pc);
        if (!pc) {
                close(fd);
                return;
        }
        pc->h = h;
        pc->since_ns = now_ns();
        if (netconn_adopt(&h->loop, fd, &pending_ops, pc, &pc->nc) < 0) {
                free(pc);
                return;
        }
        if (h->trust && netconn_start_tls(pc->nc, trust_ctx(h)) < 0) {
                pc->nc->userdata = NULL;
                netconn_close(pc->nc, false);
                free(pc);
                return;
        }
        /* Until it is authenticated, a stranger's message is small: a join or, in plaintext, a
         * hello whose token is checked first. A plaintext hello lists the node's replicas. */
        pc->nc->in_limit = h->trust ? UNAUTH_MSG_MAX : CTLMSG_MAX + 4;
        list_add_tail(&h->pending, &pc->link);
}

static bool node_overdue(const struct head *h, const struct node *n, uint64_t now) {
        return n->alive && n->last_seen_ns + sec_to_ns(h->ccfg->worker_timeout_s) < now;
}

void nodes_check_liveness(struct head *h) {
        struct list *pos, *tmp;
        uint64_t now = now_ns();
        bool overdue = false;

        /* A scan of every node: every LIVENESS_INTERVAL_NS, not after every loop round (at
         * 10,000 nodes that was thousands of scans a second). */
        if (now < h->liveness_next_ns)
                return;
        h->liveness_next_ns = now + LIVENESS_INTERVAL_NS;

        list_for_each_safe(pos, tmp, &h->nodes)
                overdue |= node_overdue(h, list_entry(pos, struct node, link), now);
        if (overdue) {
                /* Before blaming a node, take in what already arrived: completions waiting in
                 * the ring (each recv re-armed by its callback may find more, hence a few
                 * rounds). A report that sits there was sent in time. */
                for (int i = 0; i < 8 && loop_run_once(&h->loop, 0) > 0; i++)
                        ;
                now = now_ns();
        }
        list_for_each_safe(pos, tmp, &h->nodes) {
                struct node *n = list_entry(pos, struct node, link);
                if (node_overdue(h, n, now))
                        node_lost(n, n->nc ? "no heartbeat within worker_timeout_s" : "not reconnected within worker_timeout_s");
        }
        list_for_each_safe(pos, tmp, &h->pending) {
                struct pending_conn *pc = list_entry(pos, struct pending_conn, link);
                if (pc->since_ns + HELLO_TIMEOUT_NS < now) {
                        log_limited(&pending_limiter, LOG_WARNING, "closing a connection from %s that never said hello",
                                    pc->nc->peer);
                        pc->nc->userdata = NULL;
                        netconn_close(pc->nc, false);
                        pending_free(pc);
                }
        }
}

void nodes_restart_clocks(struct head *h) {
        struct list *pos, *tmp;
        uint64_t now = now_ns();

        list_for_each_safe(pos, tmp, &h->nodes)
                list_entry(pos, struct node, link)->last_seen_ns = now;
}

void nodes_free_all(struct head *h) {
        struct list *pos, *tmp;

        list_for_each_safe(pos, tmp, &h->nodes)
                node_free(list_entry(pos, struct node, link));
        free(h->node_index);
        h->node_index = NULL;
        list_for_each_safe(pos, tmp, &h->pending) {
                struct pending_conn *pc = list_entry(pos, struct pending_conn, link);
                pc->nc->userdata = NULL;
                netconn_close(pc->nc, false);
                pending_free(pc);
        }
}

int nodes_remove(struct head *h, const char *name) {
        struct node *n = node_find(h, name);
        int r;

        if (!n)
                return -ENOENT;
        r = trust_revoke(h, name);
        if (r < 0)
                return r;
        event_log_add(&h->events, LOG_INFO, "node_removed", name, name, "removing node %s from the cluster%s", name,
                      n->alive ? ": placing its replicas elsewhere" : "");
        node_free(n); /* closes its link */
        h->n_nodes--;
        h->dirty = true;
        h->routing_dirty = true;
        /* Forget its place in the assignment, so its replicas are placed elsewhere. */
        for (size_t i = 0; i < h->n_assign; i++) {
                struct assignment *a = &h->assign[i];
                for (size_t k = 0; k < a->n_slots; k++)
                        if (streq(a->slots[k].node, name)) {
                                free(a->slots[k].node);
                                if (a->slots[k].gpus)
                                        for (unsigned j = 0; j < a->slots[k].count; j++)
                                                free(a->slots[k].gpus[j]);
                                free(a->slots[k].gpus);
                                a->slots[k--] = a->slots[--a->n_slots];
                        }
        }
        save_state(h);
        return 0;
}
