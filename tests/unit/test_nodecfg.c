/* worker.yaml, cluster.yaml, token files and resource discovery: full files, defaults, and one
 * test per class of error with the exact message an operator would read. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/netconn.h"
#include "common/nodecfg.h"
#include "macros.h"
#include "tap.h"
#include "worker/resources.h"

static bool near(double a, double b) {
        return a - b < 1e-9 && b - a < 1e-9;
}

static void summary(const char *yaml, char what[static 41]) {
        snprintf(what, 41, "%s", yaml);
        for (char *w = what; *w; w++)
                if (*w == '\n')
                        *w = '|';
}

static struct worker_config *worker_ok(const char *yaml) {
        struct worker_config *c = NULL;
        char *error = NULL, what[41];
        summary(yaml, what);
        int r = worker_config_parse("worker.yaml", yaml, strlen(yaml), &c, &error);
        if (!ok(r == 0 && c, "worker.yaml parses: %s", what))
                printf("#   r=%d error: %s\n", r, error ?: "(null)");
        free(error);
        return r == 0 ? c : NULL;
}

static struct cluster_config *cluster_ok(const char *yaml) {
        struct cluster_config *c = NULL;
        char *error = NULL, what[41];
        summary(yaml, what);
        int r = cluster_config_parse("cluster.yaml", yaml, strlen(yaml), &c, &error);
        if (!ok(r == 0 && c, "cluster.yaml parses: %s", what))
                printf("#   r=%d error: %s\n", r, error ?: "(null)");
        free(error);
        return r == 0 ? c : NULL;
}

/* The full message is compared, so line:column and the field path are part of the test. */
static void worker_fails(const char *yaml, const char *want) {
        struct worker_config *c = NULL;
        char *error = NULL;
        int r = worker_config_parse("worker.yaml", yaml, strlen(yaml), &c, &error);
        if (!ok(r == -EINVAL && error && strcmp(error, want) == 0, "rejected with: %s", want))
                printf("#   r=%d got: %s\n", r, error ?: "(null)");
        free(error);
        if (r == 0)
                worker_config_free(c);
}

static void cluster_fails(const char *yaml, const char *want) {
        struct cluster_config *c = NULL;
        char *error = NULL;
        int r = cluster_config_parse("cluster.yaml", yaml, strlen(yaml), &c, &error);
        if (!ok(r == -EINVAL && error && strcmp(error, want) == 0, "rejected with: %s", want))
                printf("#   r=%d got: %s\n", r, error ?: "(null)");
        free(error);
        if (r == 0)
                cluster_config_free(c);
}

static const char *label(const struct node_label *l, size_t n, const char *key) {
        for (size_t i = 0; i < n; i++)
                if (strcmp(l[i].key, key) == 0)
                        return l[i].value;
        return NULL;
}

static void test_worker_full(void) {
        struct worker_config *c = worker_ok(
                "head_address: 10.0.0.1:8266\n"
                "join_token_file: /etc/serve/my-token\n"
                "node_name: worker-1\n"
                "node_address: 127.0.0.2\n"
                "http_host: 127.0.0.2\n"
                "http_port: 8001\n"
                "data_port: 9267\n"
                "metrics_port: 0\n"
                "labels: {group: cpu-small, zone: \"a\"}\n"
                "resources:\n"
                "  num_cpus: 3.5\n"
                "  memory: 8Gi\n"
                "  num_gpus: 2\n"
                "  gpu_memory: 17179869184\n"
                "  custom: {accel: 4, fpga: 0.5}\n");
        if (!c)
                return;
        ok(strcmp(c->path, "worker.yaml") == 0, "path recorded");
        ok(strcmp(c->head_address, "10.0.0.1:8266") == 0 && strcmp(c->head_host, "10.0.0.1") == 0 &&
                   c->head_port == 8266,
           "head 10.0.0.1 port 8266");
        ok(strcmp(c->join_token_file, "/etc/serve/my-token") == 0, "join token file");
        ok(strcmp(c->node_name, "worker-1") == 0, "node name");
        ok(strcmp(c->node_address, "127.0.0.2") == 0 && strcmp(c->http_host, "127.0.0.2") == 0,
           "addresses");
        ok(c->http_port == 8001 && c->data_port == 9267 && c->metrics_port == 0,
           "ports, metrics disabled");
        is_int(c->n_labels, 2, "two labels");
        ok(streq_ptr(label(c->labels, c->n_labels, "group"), "cpu-small") &&
                   streq_ptr(label(c->labels, c->n_labels, "zone"), "a"),
           "label values");
        const struct resource_spec *s = &c->resources;
        ok(s->has_num_cpus && near(s->num_cpus, 3.5), "num_cpus 3.5");
        ok(s->has_memory && s->memory == 8ULL << 30, "memory 8Gi");
        ok(s->has_num_gpus && s->num_gpus == 2, "two GPUs");
        ok(s->has_gpu_memory && s->gpu_memory == 16ULL << 30, "gpu_memory 16 GiB");
        ok(s->has_custom && s->n_custom == 2 && strcmp(s->custom[0].name, "accel") == 0 &&
                   near(s->custom[0].amount, 4) && strcmp(s->custom[1].name, "fpga") == 0 &&
                   near(s->custom[1].amount, 0.5),
           "custom resources");
        worker_config_free(c);
}

static void test_worker_node_address_auto(void) {
        struct worker_config *c = worker_ok("head_address: 10.0.0.1:8266\nnode_address: auto\n");
        if (!c)
                return;
        ok(strcmp(c->node_address, "auto") == 0, "node_address: auto is kept for the worker to resolve");
        worker_config_free(c);
        char *a = NULL;
        ok(net_local_address_towards("127.0.0.7", 8266, &a) == 0 && a && strcmp(a, "127.0.0.1") == 0,
           "the local address towards 127.0.0.7 is 127.0.0.1 (%s)", a ? a : "none");
        free(a);
        a = NULL;
        ok(net_local_address_towards("no-such-host.invalid", 8266, &a) == -EADDRNOTAVAIL && !a,
           "a name that does not resolve is -EADDRNOTAVAIL");
}

static void test_worker_defaults(void) {
        char host[256] = "";
        gethostname(host, sizeof(host) - 1);

        struct worker_config *c = worker_ok("head_address: head.example.com:8266\n");
        if (!c)
                return;
        ok(strcmp(c->head_host, "head.example.com") == 0 && c->head_port == 8266, "head by name");
        ok(strcmp(c->join_token_file, "/etc/serve/join-token") == 0, "default join token file");
        ok(strcmp(c->node_name, host[0] ? host : "localhost") == 0, "node name is the host name (%s)",
           c->node_name);
        ok(strcmp(c->node_address, "127.0.0.1") == 0, "node address 127.0.0.1");
        ok(strcmp(c->http_host, "0.0.0.0") == 0, "http host 0.0.0.0");
        ok(c->http_port == 8000 && c->data_port == 8267 && c->metrics_port == 8268,
           "default ports 8000, 8267, 8268");
        is_int(c->n_labels, 0, "no labels");
        ok(c->transport == TRANSPORT_TLS && strcmp(c->state_dir, "/var/lib/serve/worker") == 0 && !c->ca_file,
           "TLS by default, identity in /var/lib/serve/worker, no ca_file");
        const struct resource_spec *s = &c->resources;
        ok(!s->has_num_cpus && !s->has_memory && !s->has_num_gpus && !s->has_gpu_memory &&
                   !s->has_custom,
           "no resource overrides: discovery decides");
        worker_config_free(c);

        c = worker_ok("head_address: \"[fd00::1]:9000\"\nresources: {memory: 512Mi}\n");
        if (c) {
                ok(strcmp(c->head_host, "fd00::1") == 0 && c->head_port == 9000, "IPv6 head");
                ok(c->resources.has_memory && !c->resources.has_num_cpus, "only memory overridden");
                worker_config_free(c);
        }
}

static void test_memory_sizes(void) {
        static const struct {
                const char *text;
                uint64_t bytes;
        } cases[] = {
                { "8589934592", 8589934592ULL }, { "\"8589934592\"", 8589934592ULL },
                { "1e9", 1000000000ULL },        { "2G", 2000000000ULL },
                { "512Mi", 512ULL << 20 },       { "1.5Gi", 3ULL << 29 },
                { "4K", 4000 },                  { "4Ki", 4096 },
                { "1T", 1000000000000ULL },      { "1Ti", 1ULL << 40 },
                { "0.25Ki", 256 },               { "2.000000001G", 2000000001ULL },
        };
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                char yaml[128];
                snprintf(yaml, sizeof(yaml), "head_address: h:1\nresources: {memory: %s}\n",
                         cases[i].text);
                struct worker_config *c = worker_ok(yaml);
                if (c) {
                        ok(c->resources.memory == cases[i].bytes, "memory %s = %llu bytes",
                           cases[i].text, (unsigned long long) cases[i].bytes);
                        worker_config_free(c);
                }
        }
}

static void test_worker_errors(void) {
        /* required */
        worker_fails("", "worker.yaml:1:1: head_address: required: HOST:PORT of serve-head's "
                         "control port (e.g. 10.0.0.1:8266)");
        worker_fails("node_name: a\n", "worker.yaml:1:1: head_address: required: HOST:PORT of "
                                       "serve-head's control port (e.g. 10.0.0.1:8266)");
        /* head_address */
        worker_fails("head_address: 10.0.0.1\n",
                     "worker.yaml:1:15: head_address: must be HOST:PORT (e.g. 10.0.0.1:8266), "
                     "got \"10.0.0.1\"");
        worker_fails("head_address: 10.0.0.1:0\n",
                     "worker.yaml:1:15: head_address: the port must be a number between 1 and "
                     "65535, got \"10.0.0.1:0\"");
        worker_fails("head_address: 10.0.0.1:65536\n",
                     "worker.yaml:1:15: head_address: the port must be a number between 1 and "
                     "65535, got \"10.0.0.1:65536\"");
        worker_fails("head_address: \"::1:8266\"\n",
                     "worker.yaml:1:15: head_address: an IPv6 address needs brackets (e.g. "
                     "[fd00::1]:8266), got \"::1:8266\"");
        worker_fails("head_address: \"[nope]:8266\"\n",
                     "worker.yaml:1:15: head_address: the host in brackets must be an IPv6 "
                     "address, got \"[nope]:8266\"");
        worker_fails("head_address: \"bad host:8266\"\n",
                     "worker.yaml:1:15: head_address: the host must be an IP address or a host "
                     "name, got \"bad host:8266\"");
        /* ports */
        worker_fails("head_address: h:1\nhttp_port: 0\n",
                     "worker.yaml:2:12: http_port: must be a port number between 1 and 65535, "
                     "got \"0\"");
        worker_fails("head_address: h:1\nmetrics_port: 70000\n",
                     "worker.yaml:2:15: metrics_port: must be a port number between 1 and 65535, "
                     "or 0 to disable it, got \"70000\"");
        /* addresses to bind */
        worker_fails("head_address: h:1\nnode_address: localhost\n",
                     "worker.yaml:2:15: node_address: must be an IPv4 or IPv6 address, got "
                     "\"localhost\"");
        /* unknown keys suggest the nearest */
        worker_fails("head_address: h:1\nhttp_prot: 80\n",
                     "worker.yaml:2:1: http_prot: unknown key (did you mean \"http_port\"?); "
                     "allowed here: head_address, join_token_file, node_name, node_address, "
                     "http_host, http_port, data_port, metrics_port, labels, resources, transport, "
                     "state_dir, ca_file");
        /* trust: the transport is spelled out; nothing else is guessed */
        worker_fails("head_address: h:1\nnode_name: my node\n",
                     "worker.yaml:2:12: node_name: must be 1 to 200 letters, digits, '.', '_' or '-' (it names "
                     "this node's certificate), got \"my node\"");
        worker_fails("head_address: h:1\ntransport: ssl\n",
                     "worker.yaml:2:12: transport: must be tls or plaintext, got \"ssl\"");
        worker_fails("head_address: h:1\nresources: {num_cpu: 4}\n",
                     "worker.yaml:2:13: resources.num_cpu: unknown key (did you mean "
                     "\"num_cpus\"?); allowed here: num_cpus, memory, num_gpus, gpu_memory, custom");
        worker_fails("head_address: h:1\nhead_address: h:2\n",
                     "worker.yaml:2:1: head_address: duplicate key (first set at line 1, column 1)");
        /* resources */
        worker_fails("head_address: h:1\nresources:\n  memory: 8GB\n",
                     "worker.yaml:3:11: resources.memory: must be a positive number of bytes or a "
                     "size such as \"8Gi\", \"512Mi\" or \"2G\" (units K, M, G, T, Ki, Mi, Gi, Ti), "
                     "got \"8GB\"");
        worker_fails("head_address: h:1\nresources:\n  memory: 0\n",
                     "worker.yaml:3:11: resources.memory: must be a positive number of bytes or a "
                     "size such as \"8Gi\", \"512Mi\" or \"2G\" (units K, M, G, T, Ki, Mi, Gi, Ti), "
                     "got \"0\"");
        worker_fails("head_address: h:1\nresources: {memory: 99999999Ti}\n",
                     "worker.yaml:2:21: resources.memory: too large: \"99999999Ti\"");
        worker_fails("head_address: h:1\nresources: {num_cpus: 0}\n",
                     "worker.yaml:2:23: resources.num_cpus: must be a positive number, got \"0\"");
        worker_fails("head_address: h:1\nresources: {num_gpus: 0.5}\n",
                     "worker.yaml:2:23: resources.num_gpus: must be a non-negative integer (whole "
                     "GPUs), got \"0.5\"");
        worker_fails("head_address: h:1\nresources: {custom: {GPU: 1}}\n",
                     "worker.yaml:2:22: resources.custom.GPU: set this with num_cpus, num_gpus or "
                     "memory instead");
        worker_fails("head_address: h:1\nresources: {custom: {a: -1}}\n",
                     "worker.yaml:2:25: resources.custom.a: must be a non-negative number, got "
                     "\"-1\"");
        /* labels */
        worker_fails("head_address: h:1\nlabels: {group: [a]}\n",
                     "worker.yaml:2:17: labels.group: must be a string, got a list");
        worker_fails("head_address: h:1\nlabels: {a: 1, a: 2}\n",
                     "worker.yaml:2:16: labels.a: duplicate key (first set at line 2, column 10)");
        /* names */
        worker_fails("head_address: h:1\nnode_name: a/b\n",
                     "worker.yaml:2:12: node_name: must not contain '/' or control characters, "
                     "got \"a/b\"");
        /* YAML itself */
        worker_fails("head_address: [\n",
                     "worker.yaml:2:1: invalid YAML: did not find expected node content (while "
                     "parsing a flow node at line 2, column 1)");
        worker_fails("- head_address\n",
                     "worker.yaml:1:1: the top level must be a mapping (head_address, node_name, "
                     "resources, ...), got a list");
}

static const char *const cluster_full =
        "head:\n"
        "  api_host: 0.0.0.0\n"
        "  api_port: 9265\n"
        "  control_host: 10.0.0.1\n"
        "  control_port: 9266\n"
        "  api_token_file: /etc/serve/api-token\n"
        "  join_token_file: /etc/serve/join-token\n"
        "worker_heartbeat_interval_s: 0.5\n"
        "worker_timeout_s: 5\n"
        "worker_groups:\n"
        "  - name: cpu\n"
        "    min_nodes: 0\n"
        "    max_nodes: 4\n"
        "    resources: {num_cpus: 4, memory: 8Gi, num_gpus: 0, custom: {}}\n"
        "    labels: {group: cpu}\n"
        "    provider: local\n"
        "    idle_timeout_s: 300\n"
        "    provider_options: {subnet: 10.232.0.0/24, spot: true, disk_gb: 20, image: \"debian-12\"}\n"
        "    cost: 0.12\n"
        "    boot_timeout_s: 120\n"
        "    max_surge: 3\n"
        "    apt_source: \"deb [trusted=yes] file:/srv/serve-repo ./\"\n"
        "    package_version: \"1:1.2.3-1~bpo12+1\"\n"
        "  - name: gpu\n"
        "    min_nodes: 1\n"
        "    resources: {num_gpus: 8, gpu_memory: 80Gi}\n"
        "autoscaler:\n"
        "  interval_s: 2\n"
        "  upscaling_mode: aggressive\n"
        "  max_concurrent_launches: 4\n"
        "  head_address: \"10.232.0.1:8266\"\n"
        "  batch_idle_s: 0.5\n"
        "  batch_max_s: 5\n"
        "  reconcile_interval_s: 30\n";

static void test_cluster_full(void) {
        struct cluster_config *c = cluster_ok(cluster_full);
        if (!c)
                return;
        ok(strcmp(c->head.api_host, "0.0.0.0") == 0 && c->head.api_port == 9265, "API on 0.0.0.0:9265");
        ok(strcmp(c->head.control_host, "10.0.0.1") == 0 && c->head.control_port == 9266,
           "control on 10.0.0.1:9266");
        ok(strcmp(c->head.api_token_file, "/etc/serve/api-token") == 0 &&
                   strcmp(c->head.join_token_file, "/etc/serve/join-token") == 0,
           "token files");
        ok(near(c->worker_heartbeat_interval_s, 0.5) && near(c->worker_timeout_s, 5),
           "heartbeat 0.5 s, timeout 5 s");
        ok(near(c->autoscaler_interval_s, 2), "autoscaler every 2 s");
        ok(c->autoscaler_upscaling_mode == UPSCALING_AGGRESSIVE && c->autoscaler_max_concurrent_launches == 4,
           "aggressive upscaling, 4 launches at once");
        ok(streq_ptr(c->autoscaler_head_address, "10.232.0.1:8266") &&
                   streq_ptr(c->autoscaler_head_host, "10.232.0.1") && c->autoscaler_head_port == 8266,
           "new nodes dial 10.232.0.1:8266");
        ok(near(c->autoscaler_batch_idle_s, 0.5) && near(c->autoscaler_batch_max_s, 5) &&
                   near(c->autoscaler_reconcile_interval_s, 30),
           "batching 0.5..5 s, provider lists reconciled every 30 s");
        is_int(c->n_groups, 2, "two worker groups");
        if (c->n_groups == 2) {
                const struct worker_group *g = &c->groups[0], *h = &c->groups[1];
                ok(strcmp(g->name, "cpu") == 0 && g->min_nodes == 0 && g->max_nodes == 4,
                   "cpu: 0..4 nodes");
                ok(g->resources.has_num_cpus && near(g->resources.num_cpus, 4) &&
                           g->resources.memory == 8ULL << 30 && g->resources.has_num_gpus &&
                           g->resources.num_gpus == 0 && g->resources.has_custom &&
                           g->resources.n_custom == 0,
                   "cpu: 4 CPUs, 8 GiB, no GPU");
                ok(g->n_labels == 1 && strcmp(g->labels[0].key, "group") == 0 &&
                           strcmp(g->labels[0].value, "cpu") == 0,
                   "cpu: labels");
                ok(streq_ptr(g->provider, "local") && near(g->idle_timeout_s, 300),
                   "cpu: provider local, idle 300 s");
                is_int(g->line, 11, "cpu group starts on line 11");
                const struct node_label *o = g->provider_options;
                ok(g->n_provider_options == 4 && streq(o[0].key, "subnet") && streq(o[0].value, "10.232.0.0/24") &&
                           streq(o[1].key, "spot") && streq(o[1].value, "true") && streq(o[2].key, "disk_gb") &&
                           streq(o[2].value, "20") && streq(o[3].key, "image") && streq(o[3].value, "debian-12"),
                   "cpu: provider options kept as written, in order");
                ok(near(g->cost, 0.12) && near(g->boot_timeout_s, 120) && g->max_surge == 3,
                   "cpu: cost 0.12/h, boot timeout 120 s, surge 3");
                ok(streq_ptr(g->apt_source, "deb [trusted=yes] file:/srv/serve-repo ./") &&
                           streq_ptr(g->package_version, "1:1.2.3-1~bpo12+1"),
                   "cpu: apt source and package version");
                ok(strcmp(h->name, "gpu") == 0 && h->min_nodes == 1 && h->max_nodes == 1,
                   "gpu: max_nodes defaults to min_nodes");
                ok(h->resources.num_gpus == 8 && h->resources.gpu_memory == 80ULL << 30 &&
                           !h->resources.has_num_cpus,
                   "gpu: 8 GPUs of 80 GiB");
                ok(!h->provider && near(h->idle_timeout_s, 60), "gpu: no provider, idle 60 s by default");
                ok(h->n_provider_options == 0 && h->cost == -1 && near(h->boot_timeout_s, 600) &&
                           h->max_surge == 1 && !h->apt_source && !h->package_version,
                   "gpu: no options, no cost, boot timeout 600 s, surge 1, the image's own apt sources");
        }
        cluster_config_free(c);
}

static void test_cluster_defaults(void) {
        const char *empties[] = { "", "# nothing\n", "---\n", "~\n" };
        for (size_t i = 0; i < ELEMENTSOF(empties); i++) {
                struct cluster_config *c = cluster_ok(empties[i]);
                if (!c)
                        continue;
                ok(strcmp(c->head.api_host, "127.0.0.1") == 0 && c->head.api_port == 8265 &&
                           strcmp(c->head.control_host, "0.0.0.0") == 0 &&
                           c->head.control_port == 8266,
                   "API 127.0.0.1:8265, control 0.0.0.0:8266");
                ok(strcmp(c->head.api_token_file, "/etc/serve/api-token") == 0 &&
                           strcmp(c->head.join_token_file, "/etc/serve/join-token") == 0,
                   "default token files");
                ok(near(c->worker_heartbeat_interval_s, 1) && near(c->worker_timeout_s, 10) &&
                           near(c->autoscaler_interval_s, 5) && c->n_groups == 0,
                   "heartbeat 1 s, timeout 10 s, autoscaler 5 s, no groups");
                ok(c->transport == TRANSPORT_TLS && !c->ca_cert_file && !c->ca_key_file &&
                           near(c->node_cert_validity_s, 86400),
                   "TLS by default, the head's own CA, node certificates valid one day");
                ok(c->autoscaler_upscaling_mode == UPSCALING_DEFAULT && c->autoscaler_max_concurrent_launches == 10 &&
                           !c->autoscaler_head_address && near(c->autoscaler_batch_idle_s, 1) &&
                           near(c->autoscaler_batch_max_s, 10) && near(c->autoscaler_reconcile_interval_s, 60),
                   "autoscaler: default mode, 10 launches, no head address, batches 1..10 s, reconcile 60 s");
                cluster_config_free(c);
        }
        struct cluster_config *c = cluster_ok("transport: plaintext\ntls: {ca_cert_file: ca.crt, ca_key_file: ca.key, "
                                              "node_cert_validity_s: 3600}\n");
        if (c) {
                ok(c->transport == TRANSPORT_PLAINTEXT && strcmp(c->ca_cert_file, "ca.crt") == 0 &&
                           strcmp(c->ca_key_file, "ca.key") == 0 && near(c->node_cert_validity_s, 3600),
                   "transport, the operator's CA files and the validity are read");
                cluster_config_free(c);
        }
}

/* The autoscaler's group fields and its own section. */
static void test_cluster_autoscaler_errors(void) {
#define G "worker_groups:\n  - name: cpu\n"
        cluster_fails(G "    cost: -1\n",
                      "cluster.yaml:3:11: worker_groups[0].cost: must be a non-negative number, got \"-1\"");
        cluster_fails(G "    boot_timeout_s: 0\n",
                      "cluster.yaml:3:21: worker_groups[0].boot_timeout_s: must be a positive number, got \"0\"");
        cluster_fails(G "    max_surge: 0\n",
                      "cluster.yaml:3:16: worker_groups[0].max_surge: must be an integer of at least 1, got \"0\"");
        cluster_fails(G "    apt_source: \"http://example/ ./\"\n",
                      "cluster.yaml:3:17: worker_groups[0].apt_source: must be one sources.list line starting with "
                      "\"deb \" (at most 1024 characters, no control characters), got \"http://example/ ./\"");
        cluster_fails(G "    apt_source: \"deb file:/x ./\\ndeb http://evil/ ./\"\n",
                      "cluster.yaml:3:17: worker_groups[0].apt_source: must be one sources.list line starting with "
                      "\"deb \" (at most 1024 characters, no control characters), got "
                      "\"deb file:/x ./\\x0adeb http://evil/ ./\"");
        cluster_fails(G "    package_version: \"1.0; rm -rf /\"\n",
                      "cluster.yaml:3:22: worker_groups[0].package_version: must be a Debian version (at most 64 of "
                      "A-Z a-z 0-9 . + ~ : -), got \"1.0; rm -rf /\"");
        cluster_fails(G "    provider_options: {zone-a: x}\n",
                      "cluster.yaml:3:24: worker_groups[0].provider_options.zone-a: option names are letters, "
                      "digits and '_', got \"zone-a\"");
        cluster_fails(G "    provider_options: {zone: [a, b]}\n",
                      "cluster.yaml:3:30: worker_groups[0].provider_options.zone: must be a string, number or "
                      "bool, got a list");
        cluster_fails(G "    provider_options: {zone: }\n",
                      "cluster.yaml:3:30: worker_groups[0].provider_options.zone: must be a string, number or "
                      "bool, got an empty value");
        cluster_fails(G "    provider: local\n",
                      "cluster.yaml:2:5: worker_groups[0].resources.num_cpus: required when the group has a "
                      "provider (the autoscaler packs replicas into the shape of the nodes it would launch)");
        cluster_fails(G "    labels: {serve.config: x}\n",
                      "cluster.yaml:3:28: worker_groups[0].labels.serve.config: is set by serve-head on every node "
                      "(the hash of the group's node config); remove it");
        cluster_fails(G "    labels: {group: gpu}\n",
                      "cluster.yaml:3:21: worker_groups[0].labels.group: is the group's name (\"cpu\") on its "
                      "nodes; remove it");
        /* head_address: where the error can be fixed, naming the group that needs it. */
        cluster_fails("worker_groups:\n  - name: gpu\n  - name: cpu\n    provider: local\n    resources: {num_cpus: 2}\n",
                      "cluster.yaml:1:1: autoscaler.head_address: required when a worker group has a provider "
                      "(cpu at line 3)");
        cluster_fails("autoscaler:\n  interval_s: 1\n" G "    provider: local\n    resources: {num_cpus: 2}\n",
                      "cluster.yaml:2:3: autoscaler.head_address: required when a worker group has a provider "
                      "(cpu at line 4)");
        cluster_fails("autoscaler: {head_address: \"fd00::1:8266\"}\n",
                      "cluster.yaml:1:28: autoscaler.head_address: an IPv6 address needs brackets (e.g. "
                      "[fd00::1]:8266), got \"fd00::1:8266\"");
        cluster_fails("autoscaler: {upscaling_mode: fast}\n",
                      "cluster.yaml:1:30: autoscaler.upscaling_mode: must be conservative, default or aggressive, "
                      "got \"fast\"");
        cluster_fails("autoscaler: {max_concurrent_launches: 0}\n",
                      "cluster.yaml:1:39: autoscaler.max_concurrent_launches: must be an integer of at least 1, "
                      "got \"0\"");
        cluster_fails("autoscaler: {reconcile_interval_s: 0}\n",
                      "cluster.yaml:1:36: autoscaler.reconcile_interval_s: must be a positive number, got \"0\"");
        cluster_fails("autoscaler: {batch_idle_s: 2, batch_max_s: 1}\n",
                      "cluster.yaml:1:44: autoscaler.batch_max_s: must be at least batch_idle_s (2), got 1");
        cluster_fails("autoscaler: {batch_idle_s: 20}\n",
                      "cluster.yaml:1:28: autoscaler.batch_idle_s: must be at most batch_max_s (10, the default), "
                      "got 20");
#undef G
        /* A group may repeat its own name as its "group" label; a fixed group needs no provider. */
        struct cluster_config *c = cluster_ok("worker_groups:\n  - name: cpu\n    labels: {group: cpu}\n"
                                              "autoscaler: {batch_idle_s: 0, batch_max_s: 0, head_address: "
                                              "\"[fd00::1]:8266\"}\n");
        if (c) {
                ok(streq_ptr(c->autoscaler_head_host, "fd00::1") && c->autoscaler_head_port == 8266 &&
                           c->autoscaler_batch_max_s == 0,
                   "an IPv6 head address; no batching");
                cluster_config_free(c);
        }
}

static void test_cluster_errors(void) {
        cluster_fails("worker_timeout_s: 1\n",
                      "cluster.yaml:1:19: worker_timeout_s: must be greater than "
                      "worker_heartbeat_interval_s (1), got 1");
        cluster_fails("worker_heartbeat_interval_s: 20\n",
                      "cluster.yaml:1:30: worker_heartbeat_interval_s: must be less than "
                      "worker_timeout_s (10, the default), got 20");
        cluster_fails("worker_heartbeat_interval_s: 0\n",
                      "cluster.yaml:1:30: worker_heartbeat_interval_s: must be a positive number, "
                      "got \"0\"");
        cluster_fails("worker_groups:\n  - name: cpu\n    min_nodes: 3\n    max_nodes: 2\n",
                      "cluster.yaml:4:16: worker_groups[0].max_nodes: must be at least min_nodes "
                      "(3), got 2");
        cluster_fails("worker_groups:\n  - name: cpu\n  - name: cpu\n",
                      "cluster.yaml:3:11: worker_groups[1].name: duplicate worker group name "
                      "\"cpu\" (also at line 2)");
        cluster_fails("worker_groups:\n  - min_nodes: 1\n",
                      "cluster.yaml:2:5: worker_groups[0].name: required (the group's name, e.g. "
                      "cpu)");
        cluster_fails("worker_groups:\n  - name: cpu\n    min_nodes: -1\n",
                      "cluster.yaml:3:16: worker_groups[0].min_nodes: must be a non-negative "
                      "integer, got \"-1\"");
        cluster_fails("worker_groups: {cpu: 1}\n",
                      "cluster.yaml:1:16: worker_groups: must be a list of worker groups, got a "
                      "mapping");
        cluster_fails("worker_groups:\n  - name: cpu\n    provider: \"..\"\n",
                      "cluster.yaml:3:15: worker_groups[0].provider: must name a provider, got "
                      "\"..\"");
        cluster_fails("head:\n  api_prot: 1\n",
                      "cluster.yaml:2:3: head.api_prot: unknown key (did you mean \"api_port\"?); "
                      "allowed here: api_host, api_port, control_host, control_port, "
                      "api_token_file, join_token_file");
        cluster_fails("head:\n  control_port: 99999\n",
                      "cluster.yaml:2:17: head.control_port: must be a port number between 1 and "
                      "65535, got \"99999\"");
        cluster_fails("head:\n  api_host: my-host\n",
                      "cluster.yaml:2:13: head.api_host: must be an IPv4 or IPv6 address, got "
                      "\"my-host\"");
        cluster_fails("autoscaler: {interval: 1}\n",
                      "cluster.yaml:1:14: autoscaler.interval: unknown key (did you mean "
                      "\"interval_s\"?); allowed here: interval_s, upscaling_mode, max_concurrent_launches, "
                      "head_address, batch_idle_s, batch_max_s, reconcile_interval_s");
        cluster_fails("worker_group: []\n",
                      "cluster.yaml:1:1: worker_group: unknown key (did you mean "
                      "\"worker_groups\"?); allowed here: head, worker_heartbeat_interval_s, "
                      "worker_timeout_s, worker_groups, autoscaler, transport, tls");
        cluster_fails("transport: none\n", "cluster.yaml:1:12: transport: must be tls or plaintext, got \"none\"");
        cluster_fails("tls: {ca_cert_file: /etc/ca.crt}\n",
                      "cluster.yaml:1:21: tls.ca_key_file: ca_cert_file and ca_key_file go together (the CA's "
                      "certificate and its key)");
        cluster_fails("tls:\n  node_cert_validity_s: 5\n",
                      "cluster.yaml:2:25: tls.node_cert_validity_s: must be at least 10 (seconds), got 5");
        cluster_fails("tls: {ca_file: x}\n",
                      "cluster.yaml:1:7: tls.ca_file: unknown key; allowed here: "
                      "ca_cert_file, ca_key_file, node_cert_validity_s");
        test_cluster_autoscaler_errors();
        cluster_fails("a: &x 1\nb: *x\n",
                      "cluster.yaml:2:4: YAML aliases (*x) are not supported; write the value out");
}

static void test_files(void) {
        struct worker_config *w = NULL;
        struct cluster_config *c = NULL;
        char *error = NULL;

        int r = worker_config_load_file("/nonexistent/serve/worker.yaml", &w, &error);
        is_int(r, -ENOENT, "missing worker.yaml: -ENOENT");
        ok(error && strcmp(error, "/nonexistent/serve/worker.yaml: No such file or directory") == 0,
           "message names the file: %s", error);
        free(error);

        char path[] = "/tmp/test_nodecfg.XXXXXX";
        int fd = mkstemp(path);
        if (!ok(fd >= 0, "temporary file"))
                return;
        ok(write(fd, cluster_full, strlen(cluster_full)) == (ssize_t) strlen(cluster_full),
           "wrote cluster.yaml");
        close(fd);
        error = NULL;
        r = cluster_config_load_file(path, &c, &error);
        if (!ok(r == 0 && c && c->n_groups == 2 && strcmp(c->path, path) == 0,
                "cluster.yaml loads from a file"))
                printf("#   r=%d %s\n", r, error ?: "");
        free(error);
        cluster_config_free(c);
        unlink(path);
}

static int write_file(const char *text, mode_t mode, char path[static 32]) {
        strcpy(path, "/tmp/test_token.XXXXXX");
        int fd = mkstemp(path);
        if (fd < 0)
                return -errno;
        bool good = write(fd, text, strlen(text)) == (ssize_t) strlen(text) && fchmod(fd, mode) == 0;
        close(fd);
        return good ? 0 : -EIO;
}

static void token_case(const char *text, mode_t mode, int want_r, const char *want_token,
                       const char *want_error_tmpl) {
        char path[32], want_error[256] = "";
        char *token = NULL, *error = NULL;

        if (!ok(write_file(text, mode, path) == 0, "token file written"))
                return;
        int r = read_token_file(path, &token, &error);
        /* "@" in the expected message stands for the file's (random) name. */
        for (const char *t = want_error_tmpl; t && *t; t++)
                if (*t == '@')
                        strcat(want_error, path);
                else
                        strncat(want_error, t, 1);
        if (want_r == 0)
                ok(r == 0 && token && strcmp(token, want_token) == 0, "mode %04o: token \"%s\"",
                   (unsigned) mode, want_token);
        else if (!ok(r == want_r && error && strcmp(error, want_error) == 0, "refused: %s",
                     want_error))
                printf("#   r=%d got: %s\n", r, error ?: "(null)");
        free(token);
        free(error);
        unlink(path);
}

static void test_tokens(void) {
        token_case("  s3cret-token\n\n", 0600, 0, "s3cret-token", NULL);
        token_case("abc", 0400, 0, "abc", NULL);
        token_case("s3cret\n", 0644, -EPERM, NULL,
                   "@: token file is accessible by group or others (mode 0644); run chmod 600 @");
        token_case("s3cret\n", 0620, -EPERM, NULL,
                   "@: token file is accessible by group or others (mode 0620); run chmod 600 @");
        token_case(" \n\t\n", 0600, -EINVAL, NULL, "@: token file is empty");
        token_case("two words\n", 0600, -EINVAL, NULL,
                   "@: the token must be one word, without spaces or control characters");

        char *token = NULL, *error = NULL;
        int r = read_token_file("/nonexistent/serve/join-token", &token, &error);
        ok(r == -ENOENT && error &&
                   strcmp(error, "/nonexistent/serve/join-token: No such file or directory") == 0,
           "missing token file: %s", error ?: "(null)");
        free(error);
}

static void test_resources(void) {
        struct node_resources res;

        int r = resources_discover(&res);
        is_int(r, 0, "resources_discover succeeds");
        if (r < 0)
                return;
        ok(res.num_cpus >= 1, "at least one CPU (%g)", res.num_cpus);
        ok(res.num_cpus <= sysconf(_SC_NPROCESSORS_CONF), "no more CPUs than the machine has");
        ok(res.memory > 0, "memory found (%llu bytes)", (unsigned long long) res.memory);
        ok(res.n_numa >= 1, "at least one NUMA node");

        /* No NVML means no driver, and CUDA cannot see a GPU without one. */
        void *nvml = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
        if (!nvml)
                is_int(res.n_gpus, 0, "no libnvidia-ml.so.1: no GPUs");
        else {
                ok(res.n_gpus <= RESOURCES_MAX_GPUS, "%u GPUs found through NVML", res.n_gpus);
                for (unsigned i = 0; i < res.n_gpus; i++)
                        printf("# GPU %u: %s, %llu bytes\n", res.gpus[i].index, res.gpus[i].name,
                               (unsigned long long) res.gpus[i].memory);
                dlclose(nvml);
        }

        struct worker_config *c = worker_ok("head_address: h:1\n"
                                            "resources: {num_cpus: 2.5, memory: 1Gi, num_gpus: 2, "
                                            "gpu_memory: 16Gi}\n");
        if (!c)
                return;
        struct node_resources o = res;
        resources_apply_overrides(&o, c);
        ok(near(o.num_cpus, 2.5) && o.memory == 1ULL << 30, "CPU and memory overridden");
        ok(o.n_gpus == 2 && o.gpus[0].memory == 16ULL << 30 && o.gpus[1].memory == 16ULL << 30 &&
                   o.gpus[1].index == o.gpus[0].index + 1,
           "two GPUs of 16 GiB");
        worker_config_free(c);

        c = worker_ok("head_address: h:1\nresources: {memory: 2Gi}\n");
        if (c) {
                o = res;
                resources_apply_overrides(&o, c);
                ok(o.num_cpus == res.num_cpus && o.n_gpus == res.n_gpus && o.memory == 2ULL << 30,
                   "only memory overridden");
                worker_config_free(c);
        }
}

int main(void) {
        test_worker_full();
        test_worker_node_address_auto();
        test_worker_defaults();
        test_memory_sizes();
        test_worker_errors();
        test_cluster_full();
        test_cluster_defaults();
        test_cluster_errors();
        test_files();
        test_tokens();
        test_resources();
        return tap_done();
}
