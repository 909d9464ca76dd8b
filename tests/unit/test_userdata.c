/* The user-data serve-head gives a provider for a new node: rendered for groups of every kind,
 * read back with the project's own YAML layer, its worker.yaml parsed as serve-worker would
 * parse it; hostile label values stay values; the config hash follows the node config only. */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/nodecfg.h"
#include "common/yamltree.h"
#include "head/userdata.h"
#include "macros.h"
#include "tap.h"

static struct cluster_config *cluster(const char *yaml) {
        struct cluster_config *c = NULL;
        char *error = NULL;
        int r = cluster_config_parse("cluster.yaml", yaml, strlen(yaml), &c, &error);
        if (!ok(r == 0, "cluster.yaml parses"))
                printf("#   %s\n", error ?: strerror(-r));
        free(error);
        return r == 0 ? c : NULL;
}

static const struct worker_group *group(const struct cluster_config *c, const char *name) {
        for (size_t i = 0; c && i < c->n_groups; i++)
                if (streq(c->groups[i].name, name))
                        return &c->groups[i];
        return NULL;
}

/* The value of `key` in mapping m, or NULL. */
static const struct yt_node *get(const struct yt_node *m, const char *key) {
        if (!m || m->type != YT_MAPPING)
                return NULL;
        for (size_t i = 0; i + 1 < m->n_items; i += 2)
                if (yt_scalar_is(m->items[i], key))
                        return m->items[i + 1];
        return NULL;
}

static const struct yt_node *item(const struct yt_node *s, size_t i) {
        return s && s->type == YT_SEQUENCE && i < s->n_items ? s->items[i] : NULL;
}

static const char *text(const struct yt_node *n) {
        return n && n->type == YT_SCALAR ? n->text : NULL;
}

static const char *label(const struct worker_config *w, const char *key) {
        for (size_t i = 0; i < w->n_labels; i++)
                if (streq(w->labels[i].key, key))
                        return w->labels[i].value;
        return NULL;
}

struct rendered {
        char *text;
        struct yt_node *root;
        struct worker_config *worker;
};

static void rendered_done(struct rendered *r) {
        free(r->text);
        yt_node_free(r->root);
        worker_config_free(r->worker);
        *r = (struct rendered){};
}

/* Renders, checks the cloud-config skeleton every provider relies on, and parses the worker.yaml
 * inside. Returns false (with messages) when any of it fails. */
static bool render(const struct cluster_config *c, const struct worker_group *g, const char *node,
                   const char *token, struct rendered *out) {
        struct yt_parser p = { .name = "user-data" };
        char *error = NULL;

        *out = (struct rendered){};
        if (!ok(g && userdata_render(c, g, node, token, &out->text) == 0, "renders for %s", node))
                return false;
        if (!ok(strncmp(out->text, "#cloud-config\n", 14) == 0, "starts with #cloud-config"))
                return false;
        if (!ok(yt_load_tree(&p, out->text, strlen(out->text), &out->root) == 0 && out->root &&
                        out->root->type == YT_MAPPING,
                "user-data is a YAML mapping")) {
                printf("#   %s\n%s", p.error ?: "", out->text);
                free(p.error);
                return false;
        }
        const struct yt_node *wf = get(out->root, "write_files"), *w = item(wf, 0), *t = item(wf, 1);
        const struct yt_node *run = get(out->root, "runcmd");
        ok(streq_ptr(text(get(out->root, "package_update")), "true"), "package_update: true");
        ok(wf && wf->n_items == 2 && streq_ptr(text(get(w, "path")), "/etc/serve/worker.yaml") &&
                   streq_ptr(text(get(w, "permissions")), "0644") && streq_ptr(text(get(w, "defer")), "true") &&
                   streq_ptr(text(get(t, "path")), "/etc/serve/join-token") &&
                   streq_ptr(text(get(t, "permissions")), "0600") && streq_ptr(text(get(t, "defer")), "true") &&
                   streq_ptr(text(get(t, "owner")), "serve:serve"),
           "write_files: worker.yaml 0644 and join-token 0600 owned by serve (the worker's user), both deferred");
        ok(streq_ptr(text(get(t, "content")), token ?: "REDACTED"), "the join token file holds %s",
           token ? "the token" : "REDACTED");
        ok(run && run->n_items == 3 && streq_ptr(text(item(item(run, 0), 0)), "systemctl") &&
                   streq_ptr(text(item(item(run, 0), 1)), "disable") &&
                   streq_ptr(text(item(item(run, 0), 3)), "serve-head") &&
                   streq_ptr(text(item(item(run, 1), 1)), "enable") &&
                   streq_ptr(text(item(item(run, 2), 1)), "restart") &&
                   streq_ptr(text(item(item(run, 2), 2)), "serve-worker"),
           "runcmd stops the head the package started, enables and restarts serve-worker");

        const struct yt_node *content = get(w, "content");
        if (!ok(content && content->type == YT_SCALAR, "worker.yaml is a block scalar"))
                return false;
        ok(strstr(content->text, "\nnode_address: auto\n") != NULL, "node_address: auto (the worker finds its address)");
        int r = worker_config_parse("worker.yaml", content->text, content->len, &out->worker, &error);
        if (!ok(r == 0, "the worker.yaml in it is valid for serve-worker"))
                printf("#   %s\n%s", error ?: strerror(-r), content->text);
        free(error);
        free(p.error);
        return r == 0;
}

static const char *const groups_yaml =
        "transport: tls\n"
        "autoscaler: {head_address: \"10.232.0.1:8266\"}\n"
        "worker_groups:\n"
        "  - name: cpu\n"
        "    provider: local\n"
        "    resources: {num_cpus: 2, memory: 4Gi}\n"
        "  - name: gpu\n"
        "    provider: local\n"
        "    resources: {num_cpus: 8, memory: 64Gi, num_gpus: 2, gpu_memory: 80Gi, custom: {tpu: 1, fast_disk: 0.5}}\n"
        "    labels: {zone: b, accel: h100}\n"
        "    apt_source: \"deb [trusted=yes] file:/srv/serve-repo ./\"\n"
        "    package_version: \"1:1.2.3-1~bpo12+1\"\n";

static void test_plain_group(void) {
        struct cluster_config *c = cluster(groups_yaml);
        struct rendered u;

        if (!c || !render(c, group(c, "cpu"), "cpu-3f9a2c", "SRV1.aa.bb.cc", &u)) {
                cluster_config_free(c);
                return;
        }
        ok(!get(u.root, "apt"), "no apt: block without an apt_source");
        ok(streq_ptr(text(item(get(u.root, "packages"), 0)), "serve") && get(u.root, "packages")->n_items == 1,
           "packages: [serve]");
        const struct worker_config *w = u.worker;
        ok(streq(w->head_address, "10.232.0.1:8266") && streq(w->node_name, "cpu-3f9a2c"),
           "the node dials 10.232.0.1:8266 as cpu-3f9a2c");
        ok(streq(w->node_address, "auto"), "worker.yaml reads node_address auto");
        ok(w->transport == TRANSPORT_TLS && streq(w->join_token_file, "/etc/serve/join-token") &&
                   streq(w->state_dir, "/var/lib/serve/worker"),
           "TLS, the default token file and state dir");
        char hash[17];
        snprintf(hash, sizeof hash, "%016" PRIx64, userdata_config_hash(c, group(c, "cpu")));
        ok(w->n_labels == 2 && streq_ptr(label(w, "group"), "cpu") && streq_ptr(label(w, "serve.config"), hash),
           "labels: group cpu and serve.config %s", hash);
        ok(w->resources.has_num_cpus && w->resources.num_cpus == 2 && w->resources.has_memory &&
                   w->resources.memory == 4ULL << 30 && !w->resources.has_num_gpus && !w->resources.has_custom,
           "resources: 2 CPUs, 4 GiB, nothing else");
        rendered_done(&u);

        ok(userdata_render(c, group(c, "cpu"), "cpu-1", NULL, &u.text) == 0 && strstr(u.text, "\"REDACTED\"") &&
                   !strstr(u.text, "SRV1"),
           "without a token: REDACTED");
        rendered_done(&u);
        cluster_config_free(c);
}

static void test_full_group(void) {
        struct cluster_config *c = cluster(groups_yaml);
        struct rendered u;

        if (!c || !render(c, group(c, "gpu"), "gpu-0001", NULL, &u)) {
                cluster_config_free(c);
                return;
        }
        const struct yt_node *src = get(get(get(get(u.root, "apt"), "sources"), "serve.list"), "source");
        ok(streq_ptr(text(src), "deb [trusted=yes] file:/srv/serve-repo ./"), "apt source serve.list");
        ok(streq_ptr(text(item(get(u.root, "packages"), 0)), "serve=1:1.2.3-1~bpo12+1"), "serve=VERSION");
        const struct worker_config *w = u.worker;
        ok(w->n_labels == 4 && streq_ptr(label(w, "group"), "gpu") && streq_ptr(label(w, "zone"), "b") &&
                   streq_ptr(label(w, "accel"), "h100") && label(w, "serve.config"),
           "labels: group, the group's own two, serve.config");
        const struct resource_spec *rs = &w->resources;
        ok(rs->num_cpus == 8 && rs->memory == 64ULL << 30 && rs->has_num_gpus && rs->num_gpus == 2 &&
                   rs->gpu_memory == 80ULL << 30,
           "resources: 8 CPUs, 64 GiB, 2 GPUs of 80 GiB");
        ok(rs->has_custom && rs->n_custom == 2 && streq(rs->custom[0].name, "fast_disk") &&
                   rs->custom[0].amount == 0.5 && streq(rs->custom[1].name, "tpu") && rs->custom[1].amount == 1,
           "custom resources fast_disk 0.5 and tpu 1");
        rendered_done(&u);
        cluster_config_free(c);
}

static void test_plaintext_and_ipv6(void) {
        struct cluster_config *c = cluster("transport: plaintext\n"
                                           "autoscaler: {head_address: \"[fd00::1]:8266\"}\n"
                                           "worker_groups:\n  - name: small\n    provider: p\n"
                                           "    resources: {num_cpus: 0.5, custom: {}}\n");
        struct rendered u;

        if (!c || !render(c, group(c, "small"), "small-1", "t", &u)) {
                cluster_config_free(c);
                return;
        }
        ok(u.worker->transport == TRANSPORT_PLAINTEXT, "transport: plaintext in worker.yaml");
        ok(streq(u.worker->head_host, "fd00::1") && u.worker->head_port == 8266, "an IPv6 head address");
        ok(u.worker->resources.num_cpus == 0.5 && u.worker->resources.has_custom && u.worker->resources.n_custom == 0,
           "half a CPU, an empty custom map");
        rendered_done(&u);
        cluster_config_free(c);

        /* No head address: nothing a node could use. */
        c = cluster("worker_groups:\n  - name: fixed\n");
        char *text = NULL;
        ok(c && userdata_render(c, group(c, "fixed"), "fixed-1", NULL, &text) == -EINVAL && !text,
           "-EINVAL without autoscaler.head_address");
        cluster_config_free(c);
}

/* Label keys and values are operator text: none of them may end a string, a line, the block
 * scalar or add a key. */
static void test_hostile_labels(void) {
        static const char *const values[] = {
                "\"quoted\", injected: true",
                "a: b",
                "# not a comment",
                "ends with a backslash \\",
                "'single'",
                "- item",
                "&anchor *alias !tag",
                "{flow: map}",
                "[x, y]",
                "yes",
                "NULL",
                "~",
                "0x1F",
                "1e3",
                "",
                " leading and trailing ",
                "|",
                ">-",
                "%YAML",
                "@reserved `too`",
                "caf\xc3\xa9 \xe2\x80\xa8line separator\xe2\x80\xa9paragraph \xc2\x85nel \xef\xbb\xbf bom",
                "\xc2\x80 C1 control \xf0\x9f\x98\x80 emoji",
        };
        for (size_t i = 0; i < ELEMENTSOF(values); i++) {
                char *y = NULL;
                int r = userdata_yaml_scalar(values[i], &y);
                if (r < 0)
                        continue;
                /* As a key and as a value of one line, indented like a worker.yaml label. */
                char *yaml = NULL;
                /* (a label's name cannot be empty) */
                if (asprintf(&yaml, "labels:\n  %s: %s\nhead_address: \"h:1\"\n", values[i][0] ? y : "k", y) < 0)
                        abort();
                struct worker_config *w = NULL;
                char *error = NULL;
                r = worker_config_parse("w", yaml, strlen(yaml), &w, &error);
                ok(r == 0 && w->n_labels == 1 && streq(w->labels[0].key, values[i][0] ? values[i] : "k") &&
                           streq(w->labels[0].value, values[i]) && streq(w->head_address, "h:1"),
                   "label %zu reads back as itself: %s", i, y);
                if (r < 0)
                        printf("#   %s\n", error);
                free(error);
                worker_config_free(w);
                free(yaml);
                free(y);
        }

        /* Whatever a value holds, it cannot reach a line of its own. */
        static const char *const controls[] = { "a\nb: injected", "a\rb", "tab\there", "nul-free \x01\x1b[31m",
                                                "\x7f" };
        for (size_t i = 0; i < ELEMENTSOF(controls); i++) {
                char *y = NULL;
                if (userdata_yaml_scalar(controls[i], &y) < 0)
                        continue;
                bool printable = true;
                for (const char *p = y; *p; p++)
                        printable &= (unsigned char)*p >= 0x20 && *p != 0x7f;
                struct yt_parser p = { .name = "v" };
                struct yt_node *n = NULL;
                int r = yt_load_tree(&p, y, strlen(y), &n);
                ok(printable && r == 0 && n && n->type == YT_SCALAR && n->len == strlen(controls[i]) &&
                           memcmp(n->text, controls[i], n->len) == 0,
                   "control characters %zu are escaped and read back: %s", i, y);
                yt_node_free(n);
                free(p.error);
                free(y);
        }
        char *y = NULL;
        ok(userdata_yaml_scalar("bad \xff\xc3 utf-8", &y) == 0 && streq(y, "\"bad \\uFFFD\\uFFFD utf-8\""),
           "invalid UTF-8 becomes U+FFFD: %s", y);
        free(y);
        ok(userdata_yaml_scalar("cpu-3f9a2c", &y) == 0 && streq(y, "cpu-3f9a2c"), "a plain word stays plain: %s", y);
        free(y);

        /* Through cluster.yaml and the whole user-data. */
        struct cluster_config *c = cluster("autoscaler: {head_address: \"h:1\"}\n"
                                           "worker_groups:\n  - name: \"odd: #1\"\n    provider: p\n"
                                           "    resources: {num_cpus: 1, custom: {\"x: y\": 1}}\n"
                                           "    labels:\n"
                                           "      owner: 'x\" head_address: \"evil:1\" #'\n"
                                           "      \"k: v\": \"- [a, {b: c}] &x *y\"\n"
                                           "      note: \"ends with \\\\\"\n");
        struct rendered u;
        if (c && render(c, group(c, "odd: #1"), "n1", NULL, &u)) {
                const struct worker_config *w = u.worker;
                ok(streq(w->head_address, "h:1") && streq(w->node_name, "n1"),
                   "head address and node name untouched by the labels");
                ok(w->n_labels == 5 && streq_ptr(label(w, "owner"), "x\" head_address: \"evil:1\" #") &&
                           streq_ptr(label(w, "k: v"), "- [a, {b: c}] &x *y") && streq_ptr(label(w, "note"), "ends with \\") &&
                           streq_ptr(label(w, "group"), "odd: #1"),
                   "hostile labels arrive as values, the group's name too");
                ok(w->resources.n_custom == 1 && streq(w->resources.custom[0].name, "x: y"), "a custom resource "
                                                                                           "named \"x: y\"");
                ok(strstr(u.text, "# serve worker node n1 of group odd: #1 (rendered by serve-head)\n") != NULL,
                   "the header comment names node and group");
                rendered_done(&u);
        }
        cluster_config_free(c);
}

/* The hash is the node config: what a node was told, apart from its name and token. */
static void test_config_hash(void) {
        static const char *const base = "autoscaler: {head_address: \"10.0.0.1:8266\"}\n"
                                        "worker_groups:\n  - name: cpu\n    provider: p\n";
        static const struct {
                const char *extra_group, *extra_top, *what;
                bool changes;
        } cases[] = {
                { "    resources: {num_cpus: 2}\n    labels: {a: x, b: y}\n", "", "the same config", false },
                { "    resources: {num_cpus: 2}\n    labels: {b: y, a: x}\n", "", "labels reordered", false },
                { "    resources: {num_cpus: 2}\n    labels: {a: x, b: y}\n    cost: 9\n    max_surge: 4\n"
                  "    provider_options: {zone: c}\n    idle_timeout_s: 5\n",
                  "", "cost, surge, options, idle timeout (not given to the node)", false },
                { "    resources: {num_cpus: 2}\n    labels: {a: x, b: z}\n", "", "a label value", true },
                { "    resources: {num_cpus: 2}\n    labels: {a: x}\n", "", "a label removed", true },
                { "    resources: {num_cpus: 4}\n    labels: {a: x, b: y}\n", "", "the CPUs", true },
                { "    resources: {num_cpus: 2, memory: 1Gi}\n    labels: {a: x, b: y}\n", "", "memory", true },
                { "    resources: {num_cpus: 2, custom: {t: 1}}\n    labels: {a: x, b: y}\n", "", "custom", true },
                { "    resources: {num_cpus: 2}\n    labels: {a: x, b: y}\n    apt_source: \"deb file:/r ./\"\n", "",
                  "the apt source", true },
                { "    resources: {num_cpus: 2}\n    labels: {a: x, b: y}\n    package_version: \"1.0\"\n", "",
                  "the package version", true },
                { "    resources: {num_cpus: 2}\n    labels: {a: x, b: y}\n", "transport: plaintext\n", "the transport",
                  true },
        };
        uint64_t h0 = 0;

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                char *yaml = NULL;
                if (asprintf(&yaml, "%s%s%s", cases[i].extra_top, base, cases[i].extra_group) < 0)
                        abort();
                struct cluster_config *c = cluster(yaml);
                free(yaml);
                if (!c)
                        continue;
                uint64_t h = userdata_config_hash(c, &c->groups[0]);
                if (i == 0)
                        h0 = h;
                else
                        ok((h != h0) == cases[i].changes, "%s %s the hash", cases[i].what,
                           cases[i].changes ? "changes" : "does not change");

                /* Name and token are not part of it; the label carries it. */
                char *a = NULL, *b = NULL, hex[17];
                snprintf(hex, sizeof hex, "%016" PRIx64, h);
                if (userdata_render(c, &c->groups[0], "n1", "tok1", &a) == 0 &&
                    userdata_render(c, &c->groups[0], "other-name", NULL, &b) == 0)
                        ok(userdata_config_hash(c, &c->groups[0]) == h && strstr(a, hex) && strstr(b, hex),
                           "%s: both nodes carry the hash %s whatever their name and token", cases[i].what, hex);
                free(a);
                free(b);
                cluster_config_free(c);
        }

        struct cluster_config *c = cluster("autoscaler: {head_address: \"10.0.0.2:8266\"}\n"
                                           "worker_groups:\n  - name: cpu\n    provider: p\n"
                                           "    resources: {num_cpus: 2}\n    labels: {a: x, b: y}\n");
        if (c)
                ok(userdata_config_hash(c, &c->groups[0]) != h0, "the head address changes the hash");
        cluster_config_free(c);
}

int main(void) {
        test_plain_group();
        test_full_group();
        test_plaintext_and_ipv6();
        test_hostile_labels();
        test_config_hash();
        return tap_done();
}
