/* worker.yaml and cluster.yaml: two small schemas walked over a yamltree (yamltree.h builds the
 * tree with line:column on every node and formats the errors). Addresses and ports are checked
 * here, when the operator edits the file, rather than when a daemon fails to bind at start. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/nodecfg.h"
#include "common/yamltree.h"
#include "macros.h"
#include "util.h"

#define NODECFG_MAX_FILE_SIZE (1u << 20)
#define NODECFG_MAX_LABELS 256
#define NODECFG_MAX_LABEL_VALUE 256
#define NODECFG_MAX_CUSTOM 256
#define NODECFG_MAX_GROUPS 256
#define NODECFG_MAX_HOST 253 /* longest DNS name */
#define TOKEN_MAX 4096

/* ---- shared value types ---------------------------------------------------------------------- */

/* Bind addresses must be literal: a name that resolves differently later would move a
 * listener, and "localhost" may resolve to ::1 where the operator meant 127.0.0.1. */
static int get_ip(struct yt_parser *p, const struct yt_node *v, char **ret) {
        _cleanup_free_ char *s = NULL;
        struct in6_addr a;

        int r = yt_get_string(p, v, false, &s);
        if (r < 0)
                return r;
        if (inet_pton(AF_INET, s, &a) != 1 && inet_pton(AF_INET6, s, &a) != 1)
                return yt_fail(p, v, "must be an IPv4 or IPv6 address, got %s", YT_DESCRIBE(v));
        free(*ret);
        *ret = TAKE_PTR(s);
        return 0;
}

static int get_port(struct yt_parser *p, const struct yt_node *v, bool zero_ok, int *ret) {
        if (zero_ok)
                return yt_get_int(p, v, 0, 65535,
                                  "a port number between 1 and 65535, or 0 to disable it", ret);
        return yt_get_int(p, v, 1, 65535, "a port number between 1 and 65535", ret);
}

static bool host_name_valid(const char *s, size_t len) {
        if (len == 0 || len > NODECFG_MAX_HOST)
                return false;
        for (size_t i = 0; i < len; i++)
                if (!isalnum((unsigned char) s[i]) && !strchr("-._", s[i]))
                        return false;
        return s[0] != '.' && s[0] != '-';
}

/* HOST:PORT where HOST is an IPv4 address, [IPv6] or a DNS name. */
static int get_host_port(struct yt_parser *p, const struct yt_node *v, char **ret_text,
                         char **ret_host, int *ret_port) {
        _cleanup_free_ char *s = NULL, *host = NULL;
        const char *port;
        struct in6_addr a;

        int r = yt_get_string(p, v, false, &s);
        if (r < 0)
                return r;
        if (s[0] == '[') {
                const char *end = strchr(s, ']');
                if (!end || end[1] != ':')
                        return yt_fail(p, v, "must be HOST:PORT (e.g. [fd00::1]:8266), got %s",
                                       YT_DESCRIBE(v));
                host = strndup(s + 1, (size_t) (end - s - 1));
                if (!host)
                        return -ENOMEM;
                if (inet_pton(AF_INET6, host, &a) != 1)
                        return yt_fail(p, v, "the host in brackets must be an IPv6 address, got %s",
                                       YT_DESCRIBE(v));
                port = end + 2;
        } else {
                const char *colon = strrchr(s, ':');
                if (!colon)
                        return yt_fail(p, v, "must be HOST:PORT (e.g. 10.0.0.1:8266), got %s",
                                       YT_DESCRIBE(v));
                if (memchr(s, ':', (size_t) (colon - s)))
                        return yt_fail(p, v, "an IPv6 address needs brackets (e.g. [fd00::1]:8266), "
                                       "got %s",
                                       YT_DESCRIBE(v));
                host = strndup(s, (size_t) (colon - s));
                if (!host)
                        return -ENOMEM;
                if (inet_pton(AF_INET, host, &a) != 1 && !host_name_valid(host, strlen(host)))
                        return yt_fail(p, v, "the host must be an IP address or a host name, got %s",
                                       YT_DESCRIBE(v));
                port = colon + 1;
        }

        unsigned long n = 0;
        size_t digits = strspn(port, "0123456789");
        if (digits > 0 && digits <= 5 && !port[digits])
                n = strtoul(port, NULL, 10);
        if (n < 1 || n > 65535)
                return yt_fail(p, v, "the port must be a number between 1 and 65535, got %s",
                               YT_DESCRIBE(v));

        free(*ret_text);
        *ret_text = TAKE_PTR(s);
        free(*ret_host);
        *ret_host = TAKE_PTR(host);
        *ret_port = (int) n;
        return 0;
}

/* A size: "8Gi", "512Mi", "1.5G" (binary suffixes Ki..Ti, decimal K..T). Returns 0, -EINVAL
 * when it is no such size, -ERANGE when it does not fit 64 bits. */
static int parse_size_suffix(const char *s, uint64_t *ret) {
        static const struct {
                char unit;
                uint64_t decimal, binary;
        } units[] = {
                { 'K', 1000ULL, 1ULL << 10 },
                { 'M', 1000000ULL, 1ULL << 20 },
                { 'G', 1000000000ULL, 1ULL << 30 },
                { 'T', 1000000000000ULL, 1ULL << 40 },
        };
        size_t int_digits = strspn(s, "0123456789"), frac_digits = 0;
        const char *c = s + int_digits, *frac_text = c + 1;
        uint64_t whole = 0, frac = 0, frac_scale = 1;

        if (int_digits == 0 || int_digits > 20)
                return int_digits == 0 ? -EINVAL : -ERANGE;
        if (*c == '.') {
                frac_digits = strspn(c + 1, "0123456789");
                if (frac_digits == 0 || frac_digits > 9)
                        return -EINVAL;
                c += 1 + frac_digits;
        }
        size_t u;
        for (u = 0; u < ELEMENTSOF(units); u++)
                if (c[0] == units[u].unit)
                        break;
        if (u == ELEMENTSOF(units))
                return -EINVAL;
        bool binary = c[1] == 'i';
        if (c[1 + binary])
                return -EINVAL;
        uint64_t mult = binary ? units[u].binary : units[u].decimal;

        errno = 0;
        whole = strtoull(s, NULL, 10);
        if (errno == ERANGE)
                return -ERANGE;
        for (size_t i = 0; i < frac_digits; i++) {
                frac = frac * 10 + (uint64_t) (frac_text[i] - '0');
                frac_scale *= 10;
        }
        uint64_t v;
        if (__builtin_mul_overflow(whole, mult, &v))
                return -ERANGE;
        /* frac < 1e9 and mult <= 2^40: the product fits in 128 bits; the quotient is < mult. */
        uint64_t part = (uint64_t) ((unsigned __int128) frac * mult / frac_scale);
        if (__builtin_add_overflow(v, part, &v))
                return -ERANGE;
        *ret = v;
        return 0;
}

/* Bytes, > 0: a YAML number, or a string with a unit suffix. */
static int get_bytes(struct yt_parser *p, const struct yt_node *v, uint64_t *ret) {
        long long i;
        double d;
        uint64_t n;
        int r;

        if (v->type != YT_SCALAR)
                goto invalid;
        if (yt_number_kind(v->text, v->len) != YT_NUMBER_NONE) {
                r = yt_scalar_int64(v, &i);
                if (r >= 0) {
                        if (i < 1)
                                goto invalid;
                        *ret = (uint64_t) i;
                        return 0;
                }
                if (r == -EINVAL) { /* a float such as 1e9 */
                        r = yt_scalar_double(v, &d);
                        if (r >= 0 && d >= 18446744073709551616.0)
                                r = -ERANGE;
                        if (r >= 0 && d >= 1) {
                                *ret = (uint64_t) d;
                                return 0;
                        }
                }
                if (r == -ERANGE)
                        return yt_fail(p, v, "too large: %s", YT_DESCRIBE(v));
                goto invalid;
        }
        if (strlen(v->text) != v->len)
                goto invalid;
        r = parse_size_suffix(v->text, &n);
        if (r == -ERANGE)
                return yt_fail(p, v, "too large: %s", YT_DESCRIBE(v));
        if (r < 0 || n == 0)
                goto invalid;
        *ret = n;
        return 0;

invalid:
        return yt_fail(p, v, "must be a positive number of bytes or a size such as \"8Gi\", "
                       "\"512Mi\" or \"2G\" (units K, M, G, T, Ki, Mi, Gi, Ti), got %s",
                       YT_DESCRIBE(v));
}

static bool has_control(const char *s) {
        for (; *s; s++)
                if ((unsigned char) *s < 0x20 || *s == 0x7f)
                        return true;
        return false;
}

static void labels_free(struct node_label *l, size_t n) {
        for (size_t i = 0; i < n; i++) {
                free(l[i].key);
                free(l[i].value);
        }
        free(l);
}

/* labels: string -> string. */
static int parse_label(struct yt_parser *p, const struct yt_node *key, const struct yt_node *val, void *item,
                       void *userdata) {
        struct node_label *l = item;
        int r = yt_get_string(p, val, true, &l->value);

        if (r >= 0 && (val->len > NODECFG_MAX_LABEL_VALUE || has_control(l->value)))
                r = yt_fail(p, val, "label values must be at most %d characters without control characters",
                            NODECFG_MAX_LABEL_VALUE);
        if (r >= 0 && !(l->key = strdup(key->text)))
                r = -ENOMEM;
        return r;
}

static int parse_labels(struct yt_parser *p, const struct yt_node *v, struct node_label **labels,
                        size_t *n_labels) {
        return yt_parse_map(p, v, "label", "labels", NODECFG_MAX_LABELS, sizeof **labels, (void **)labels, n_labels,
                            parse_label, NULL);
}

static void resource_spec_done(struct resource_spec *s) {
        for (size_t i = 0; i < s->n_custom; i++)
                free(s->custom[i].name);
        free(s->custom);
}


static const char *const resource_keys[] = { "num_cpus", "memory", "num_gpus", "gpu_memory",
                                              "custom" };

static int resource_field(struct yt_parser *p, unsigned idx, const struct yt_node *v,
                          void *userdata) {
        struct resource_spec *s = userdata;
        int gpus;
        int r;

        switch (idx) {
        case 0:
                s->has_num_cpus = true;
                return yt_get_double(p, v, false, &s->num_cpus);
        case 1:
                s->has_memory = true;
                return get_bytes(p, v, &s->memory);
        case 2:
                r = yt_get_int(p, v, 0, INT_MAX, "a non-negative integer (whole GPUs)", &gpus);
                if (r < 0)
                        return r;
                s->has_num_gpus = true;
                s->num_gpus = (unsigned) gpus;
                return 0;
        case 3:
                s->has_gpu_memory = true;
                return get_bytes(p, v, &s->gpu_memory);
        case 4:
                s->has_custom = true;
                return config_parse_resource_map(p, v, NODECFG_MAX_CUSTOM, &s->custom, &s->n_custom);
        }
        return 0;
}

static int parse_resource_spec(struct yt_parser *p, const struct yt_node *v,
                               struct resource_spec *s) {
        if (yt_is_null(v))
                return 0;
        int r = yt_expect_mapping(p, v);
        if (r < 0)
                return r;
        return yt_parse_fields(p, v, resource_keys, ELEMENTSOF(resource_keys), resource_field, s);
}

/* ---- documents -------------------------------------------------------------------------------- */

/* Loads the tree and checks the top level is a mapping. *ret_root is NULL for an empty file. */
static int load_document(struct yt_parser *p, const char *text, size_t len, const char *keys_hint,
                         struct yt_node **ret_root) {
        struct yt_node *root = NULL;
        int r;

        if (len > NODECFG_MAX_FILE_SIZE)
                return yt_fail_at(p, 1, 1, "too large (%zu bytes, limit %u MiB)", len,
                                  NODECFG_MAX_FILE_SIZE >> 20);
        r = yt_load_tree(p, text ?: "", text ? len : 0, &root);
        if (r < 0)
                return r;
        if (root && yt_is_null(root)) {
                yt_node_free(root);
                root = NULL;
        }
        if (root && root->type != YT_MAPPING) {
                r = yt_fail(p, root, "the top level must be a mapping (%s), got %s", keys_hint,
                            YT_DESCRIBE(root));
                yt_node_free(root);
                return r;
        }
        *ret_root = root;
        return 0;
}

/* Hands the parser's message to the caller on failure. */
static int finish(struct yt_parser *p, int r, char **ret_error) {
        if (r < 0 && ret_error)
                *ret_error = TAKE_PTR(p->error);
        free(p->error);
        p->error = NULL;
        return r;
}

/* ---- worker.yaml ------------------------------------------------------------------------------ */

static const char *const worker_keys[] = {
        "head_address", "join_token_file", "node_name", "node_address", "http_host", "http_port",
        "data_port", "metrics_port", "labels", "resources", "transport", "state_dir", "ca_file",
};

static int get_transport(struct yt_parser *p, const struct yt_node *v, enum transport *ret) {
        if (yt_scalar_is(v, "tls"))
                *ret = TRANSPORT_TLS;
        else if (yt_scalar_is(v, "plaintext"))
                *ret = TRANSPORT_PLAINTEXT;
        else
                return yt_fail(p, v, "must be tls or plaintext, got %s", YT_DESCRIBE(v));
        return 0;
}

static int worker_field(struct yt_parser *p, unsigned idx, const struct yt_node *v,
                        void *userdata) {
        struct worker_config *c = userdata;

        switch (idx) {
        case 0:
                return get_host_port(p, v, &c->head_address, &c->head_host, &c->head_port);
        case 1:
                return yt_get_string(p, v, false, &c->join_token_file);
        case 2:
                if (yt_get_name(p, v, &c->node_name) < 0)
                        return -EINVAL;
                if (!node_name_valid(c->node_name))
                        return yt_fail(p, v, "must be 1 to 200 letters, digits, '.', '_' or '-' (it names this node's "
                                             "certificate), got %s", YT_DESCRIBE(v));
                return 0;
        case 3:
                /* "auto": the worker takes the local address of its route to the head at start
                 * (a node made from a template does not know its address in advance). */
                if (v->type == YT_SCALAR && streq(v->text, "auto")) {
                        free(c->node_address);
                        c->node_address = strdup("auto");
                        return c->node_address ? 0 : -ENOMEM;
                }
                return get_ip(p, v, &c->node_address);
        case 4:
                return get_ip(p, v, &c->http_host);
        case 5:
                return get_port(p, v, false, &c->http_port);
        case 6:
                return get_port(p, v, false, &c->data_port);
        case 7:
                return get_port(p, v, true, &c->metrics_port);
        case 8:
                return parse_labels(p, v, &c->labels, &c->n_labels);
        case 9:
                return parse_resource_spec(p, v, &c->resources);
        case 10:
                return get_transport(p, v, &c->transport);
        case 11:
                return yt_get_string(p, v, false, &c->state_dir);
        case 12:
                return yt_get_string(p, v, false, &c->ca_file);
        }
        return 0;
}

bool node_name_valid(const char *name) {
        size_t n = name ? strlen(name) : 0;

        if (n == 0 || n > 200)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!isalnum((unsigned char)name[i]) && !strchr("._-", name[i]))
                        return false;
        return true;
}

static char *default_node_name(void) {
        char host[HOST_NAME_MAX + 1] = "";

        if (gethostname(host, sizeof(host)) < 0 || !host[0])
                return strdup("localhost");
        host[HOST_NAME_MAX] = 0;
        return strdup(host);
}

int worker_config_parse(const char *name, const char *text, size_t len, struct worker_config **ret,
                        char **ret_error) {
        struct yt_parser p = { .name = name ?: "<worker.yaml>" };
        struct worker_config *c = NULL;
        struct yt_node *root = NULL;
        int r;

        c = calloc(1, sizeof(*c));
        if (!c)
                return finish(&p, -ENOMEM, ret_error);
        *c = (struct worker_config){
                .path = strdup(p.name),
                .join_token_file = strdup(NODECFG_DEFAULT_JOIN_TOKEN_FILE),
                .node_name = default_node_name(),
                .node_address = strdup("127.0.0.1"),
                .http_host = strdup("0.0.0.0"),
                .http_port = NODECFG_DEFAULT_HTTP_PORT,
                .data_port = NODECFG_DEFAULT_DATA_PORT,
                .metrics_port = NODECFG_DEFAULT_METRICS_PORT,
                .state_dir = strdup(NODECFG_DEFAULT_WORKER_STATE_DIR),
        };
        if (!c->path || !c->join_token_file || !c->node_name || !c->node_address || !c->http_host || !c->state_dir) {
                r = -ENOMEM;
                goto out;
        }

        r = load_document(&p, text, len,
                          "head_address, node_name, resources, ...", &root);
        if (r >= 0 && root)
                r = yt_parse_fields(&p, root, worker_keys, ELEMENTSOF(worker_keys), worker_field, c);
        if (r >= 0 && !c->head_address) {
                size_t saved = yt_path_push(&p, "head_address");
                r = yt_fail_at(&p, root ? root->line : 1, root ? root->column : 1,
                               "required: HOST:PORT of serve-head's control port "
                               "(e.g. 10.0.0.1:8266)");
                yt_path_pop(&p, saved);
        }

out:
        yt_node_free(root);
        if (r < 0) {
                worker_config_free(c);
                return finish(&p, r, ret_error);
        }
        finish(&p, 0, NULL);
        *ret = c;
        return 0;
}

int worker_config_load_file(const char *path, struct worker_config **ret, char **ret_error) {
        _cleanup_free_ char *buf = NULL;
        size_t len;

        int r = yt_read_file(path, NODECFG_MAX_FILE_SIZE, &buf, &len, ret_error);
        if (r < 0)
                return r;
        return worker_config_parse(path, buf, len, ret, ret_error);
}

void worker_config_free(struct worker_config *c) {
        if (!c)
                return;
        free(c->path);
        free(c->head_address);
        free(c->head_host);
        free(c->join_token_file);
        free(c->node_name);
        free(c->node_address);
        free(c->http_host);
        free(c->state_dir);
        free(c->ca_file);
        labels_free(c->labels, c->n_labels);
        resource_spec_done(&c->resources);
        free(c);
}

/* ---- cluster.yaml ----------------------------------------------------------------------------- */

static const char *const head_keys[] = {
        "api_host", "api_port", "control_host", "control_port", "api_token_file", "join_token_file",
};

static int head_field(struct yt_parser *p, unsigned idx, const struct yt_node *v, void *userdata) {
        struct head_config *h = userdata;

        switch (idx) {
        case 0:
                return get_ip(p, v, &h->api_host);
        case 1:
                return get_port(p, v, false, &h->api_port);
        case 2:
                return get_ip(p, v, &h->control_host);
        case 3:
                return get_port(p, v, false, &h->control_port);
        case 4:
                return yt_get_string(p, v, false, &h->api_token_file);
        case 5:
                return yt_get_string(p, v, false, &h->join_token_file);
        }
        return 0;
}

static const char *const group_keys[] = {
        "name", "min_nodes", "max_nodes", "resources", "labels", "provider", "idle_timeout_s",
        "provider_options", "cost", "boot_timeout_s", "max_surge", "apt_source", "package_version",
};

struct group_state {
        struct worker_group *g;
        const struct yt_node *name, *max, *labels;
};

#define NODECFG_MAX_OPTION_VALUE 1024
#define NODECFG_MAX_APT_SOURCE 1024

/* provider_options: name -> scalar, kept as written (providers get every value as a string). */
static int parse_provider_option(struct yt_parser *p, const struct yt_node *key, const struct yt_node *val,
                                 void *item, void *userdata) {
        struct node_label *o = item;

        if (strspn(key->text, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_") != key->len)
                return yt_fail(p, key, "option names are letters, digits and '_', got %s", YT_DESCRIBE(key));
        if (val->type != YT_SCALAR || yt_is_null(val))
                return yt_fail(p, val, "must be a string, number or bool, got %s", YT_DESCRIBE(val));
        if (val->len > NODECFG_MAX_OPTION_VALUE || strlen(val->text) != val->len)
                return yt_fail(p, val, "must be at most %d characters without NUL", NODECFG_MAX_OPTION_VALUE);
        o->key = strdup(key->text);
        o->value = strdup(val->text);
        return o->key && o->value ? 0 : -ENOMEM;
}

/* One sources.list line, written into the node's apt configuration. */
static int get_apt_source(struct yt_parser *p, const struct yt_node *v, char **ret) {
        _cleanup_free_ char *s = NULL;
        int r = yt_get_string(p, v, false, &s);

        if (r < 0)
                return r;
        if (strncmp(s, "deb ", 4) != 0 || has_control(s) || v->len > NODECFG_MAX_APT_SOURCE)
                return yt_fail(p, v, "must be one sources.list line starting with \"deb \" (at most %d characters, "
                               "no control characters), got %s",
                               NODECFG_MAX_APT_SOURCE, YT_DESCRIBE(v));
        free(*ret);
        *ret = TAKE_PTR(s);
        return 0;
}

static int get_package_version(struct yt_parser *p, const struct yt_node *v, char **ret) {
        _cleanup_free_ char *s = NULL;
        int r = yt_get_string(p, v, false, &s);

        if (r < 0)
                return r;
        if (v->len > NODECFG_MAX_PACKAGE_VERSION ||
            strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.+~:-") != v->len)
                return yt_fail(p, v, "must be a Debian version (at most %d of A-Z a-z 0-9 . + ~ : -), got %s",
                               NODECFG_MAX_PACKAGE_VERSION, YT_DESCRIBE(v));
        free(*ret);
        *ret = TAKE_PTR(s);
        return 0;
}

static int group_field(struct yt_parser *p, unsigned idx, const struct yt_node *v, void *userdata) {
        struct group_state *s = userdata;
        struct worker_group *g = s->g;
        int r;

        switch (idx) {
        case 0:
                s->name = v;
                return yt_get_name(p, v, &g->name);
        case 1:
                return yt_get_int(p, v, 0, INT_MAX, "a non-negative integer", &g->min_nodes);
        case 2:
                s->max = v;
                return yt_get_int(p, v, 0, INT_MAX, "a non-negative integer", &g->max_nodes);
        case 3:
                return parse_resource_spec(p, v, &g->resources);
        case 4:
                s->labels = v;
                return parse_labels(p, v, &g->labels, &g->n_labels);
        case 5:
                /* Names a file under /etc/serve/providers/. */
                r = yt_get_name(p, v, &g->provider);
                if (r >= 0 && (streq(g->provider, ".") || streq(g->provider, "..")))
                        return yt_fail(p, v, "must name a provider, got %s", YT_DESCRIBE(v));
                return r;
        case 6:
                return yt_get_double(p, v, true, &g->idle_timeout_s);
        case 7:
                return yt_parse_map(p, v, "option", "provider options", NODECFG_MAX_PROVIDER_OPTIONS,
                                    sizeof *g->provider_options, (void **)&g->provider_options,
                                    &g->n_provider_options, parse_provider_option, NULL);
        case 8:
                return yt_get_double(p, v, true, &g->cost);
        case 9:
                return yt_get_double(p, v, false, &g->boot_timeout_s);
        case 10:
                return yt_get_int(p, v, 1, INT_MAX, "an integer of at least 1", &g->max_surge);
        case 11:
                return get_apt_source(p, v, &g->apt_source);
        case 12:
                return get_package_version(p, v, &g->package_version);
        }
        return 0;
}

/* The labels the renderer adds to every node must not be contradicted by the group's own. */
static int check_group_labels(struct yt_parser *p, const struct group_state *s) {
        const struct worker_group *g = s->g;

        for (size_t i = 0; i < g->n_labels; i++) {
                const struct node_label *l = &g->labels[i];
                if (streq(l->key, NODECFG_LABEL_CONFIG) ||
                    (streq(l->key, NODECFG_LABEL_GROUP) && !streq(l->value, g->name))) {
                        const struct yt_node *at = s->labels;
                        for (size_t k = 0; k + 1 < s->labels->n_items; k += 2)
                                if (yt_scalar_is(s->labels->items[k], l->key))
                                        at = s->labels->items[k + 1];
                        size_t saved = yt_path_push(p, ".labels.%s", l->key);
                        int r = streq(l->key, NODECFG_LABEL_CONFIG)
                                ? yt_fail(p, at, "is set by serve-head on every node (the hash of the group's "
                                                 "node config); remove it")
                                : yt_fail(p, at, "is the group's name (\"%s\") on its nodes; remove it", g->name);
                        yt_path_pop(p, saved);
                        return r;
                }
        }
        return 0;
}

static int parse_group(struct yt_parser *p, const struct yt_node *v, size_t i, void *userdata) {
        struct cluster_config *c = userdata;
        struct worker_group *g = &c->groups[i];
        struct group_state s = { .g = g };
        size_t saved = 0;
        int r;

        g->line = v->line;
        g->column = v->column;
        g->max_nodes = -1;
        g->idle_timeout_s = 60;
        g->boot_timeout_s = 600;
        g->cost = -1;
        g->max_surge = 1;
        r = yt_expect_mapping(p, v);
        if (r >= 0)
                r = yt_parse_fields(p, v, group_keys, ELEMENTSOF(group_keys), group_field, &s);
        if (r < 0)
                return r;

        if (!s.max)
                g->max_nodes = g->min_nodes; /* a fixed-size group */
        if (!g->name) {
                saved = yt_path_push(p, ".name");
                r = yt_fail(p, v, "required (the group's name, e.g. cpu)");
        } else if (g->max_nodes < g->min_nodes) {
                saved = yt_path_push(p, ".max_nodes");
                r = yt_fail(p, s.max, "must be at least min_nodes (%d), got %d", g->min_nodes,
                            g->max_nodes);
        } else if (g->provider && !g->resources.has_num_cpus) {
                saved = yt_path_push(p, ".resources.num_cpus");
                r = yt_fail(p, v, "required when the group has a provider (the autoscaler packs replicas into "
                                  "the shape of the nodes it would launch)");
        } else
                for (size_t k = 0; k < i; k++)
                        if (streq(c->groups[k].name, g->name)) {
                                saved = yt_path_push(p, ".name");
                                r = yt_fail(p, s.name,
                                            "duplicate worker group name \"%s\" (also at line %d)",
                                            g->name, c->groups[k].line);
                                break;
                        }
        if (r < 0) {
                yt_path_pop(p, saved);
                return r;
        }
        return check_group_labels(p, &s);
}

static int parse_groups(struct yt_parser *p, const struct yt_node *v, struct cluster_config *c) {
        return yt_parse_list(p, v, "worker groups", NODECFG_MAX_GROUPS, sizeof *c->groups, (void **)&c->groups,
                             &c->n_groups, parse_group, c);
}

static const char *const autoscaler_keys[] = {
        "interval_s", "upscaling_mode", "max_concurrent_launches", "head_address", "batch_idle_s", "batch_max_s",
        "reconcile_interval_s",
};

struct autoscaler_state {
        struct cluster_config *c;
        const struct yt_node *map, *batch_idle, *batch_max;
};

static int autoscaler_field(struct yt_parser *p, unsigned idx, const struct yt_node *v,
                            void *userdata) {
        struct autoscaler_state *s = userdata;
        struct cluster_config *c = s->c;

        switch (idx) {
        case 0:
                return yt_get_double(p, v, false, &c->autoscaler_interval_s);
        case 1:
                if (yt_scalar_is(v, "conservative"))
                        c->autoscaler_upscaling_mode = UPSCALING_CONSERVATIVE;
                else if (yt_scalar_is(v, "default"))
                        c->autoscaler_upscaling_mode = UPSCALING_DEFAULT;
                else if (yt_scalar_is(v, "aggressive"))
                        c->autoscaler_upscaling_mode = UPSCALING_AGGRESSIVE;
                else
                        return yt_fail(p, v, "must be conservative, default or aggressive, got %s", YT_DESCRIBE(v));
                return 0;
        case 2:
                return yt_get_int(p, v, 1, INT_MAX, "an integer of at least 1", &c->autoscaler_max_concurrent_launches);
        case 3:
                return get_host_port(p, v, &c->autoscaler_head_address, &c->autoscaler_head_host,
                                     &c->autoscaler_head_port);
        case 4:
                s->batch_idle = v;
                return yt_get_double(p, v, true, &c->autoscaler_batch_idle_s);
        case 5:
                s->batch_max = v;
                return yt_get_double(p, v, true, &c->autoscaler_batch_max_s);
        case 6:
                return yt_get_double(p, v, false, &c->autoscaler_reconcile_interval_s);
        }
        return 0;
}

static int parse_autoscaler(struct yt_parser *p, const struct yt_node *v, struct autoscaler_state *s) {
        int r;

        if (yt_is_null(v))
                return 0;
        r = yt_expect_mapping(p, v);
        if (r >= 0)
                r = yt_parse_fields(p, v, autoscaler_keys, ELEMENTSOF(autoscaler_keys), autoscaler_field, s);
        if (r < 0)
                return r;
        s->map = v;
        struct cluster_config *c = s->c;
        if (c->autoscaler_batch_max_s < c->autoscaler_batch_idle_s) {
                size_t saved = yt_path_push(p, s->batch_max ? ".batch_max_s" : ".batch_idle_s");
                r = s->batch_max ? yt_fail(p, s->batch_max, "must be at least batch_idle_s (%g), got %g",
                                           c->autoscaler_batch_idle_s, c->autoscaler_batch_max_s)
                                 : yt_fail(p, s->batch_idle, "must be at most batch_max_s (%g, the default), got %g",
                                           c->autoscaler_batch_max_s, c->autoscaler_batch_idle_s);
                yt_path_pop(p, saved);
        }
        return r;
}

/* New nodes must be told where the head is: its control_host is usually 0.0.0.0. */
static int check_head_address(struct yt_parser *p, const struct yt_node *root, const struct autoscaler_state *s) {
        const struct cluster_config *c = s->c;

        if (c->autoscaler_head_address)
                return 0;
        for (size_t i = 0; i < c->n_groups; i++) {
                const struct worker_group *g = &c->groups[i];
                if (!g->provider)
                        continue;
                size_t saved = yt_path_push(p, "autoscaler.head_address");
                int r = s->map ? yt_fail(p, s->map, "required when a worker group has a provider (%s at line %d)",
                                         g->name, g->line)
                               : yt_fail_at(p, root ? root->line : 1, root ? root->column : 1,
                                            "required when a worker group has a provider (%s at line %d)", g->name,
                                            g->line);
                yt_path_pop(p, saved);
                return r;
        }
        return 0;
}

static const char *const tls_keys[] = { "ca_cert_file", "ca_key_file", "node_cert_validity_s" };

struct tls_state {
        struct cluster_config *c;
        const struct yt_node *cert, *key;
};

static int tls_field(struct yt_parser *p, unsigned idx, const struct yt_node *v, void *userdata) {
        struct tls_state *t = userdata;

        switch (idx) {
        case 0:
                t->cert = v;
                return yt_get_string(p, v, false, &t->c->ca_cert_file);
        case 1:
                t->key = v;
                return yt_get_string(p, v, false, &t->c->ca_key_file);
        case 2:
                if (yt_get_double(p, v, false, &t->c->node_cert_validity_s) < 0)
                        return -EINVAL;
                if (t->c->node_cert_validity_s < 10)
                        return yt_fail(p, v, "must be at least 10 (seconds), got %g", t->c->node_cert_validity_s);
                return 0;
        }
        return 0;
}

/* The CA is the operator's (both files) or ours (neither): half of one is a mistake. */
static int parse_tls(struct yt_parser *p, const struct yt_node *v, struct cluster_config *c) {
        struct tls_state t = { .c = c };
        int r;

        if (yt_is_null(v))
                return 0;
        r = yt_expect_mapping(p, v);
        if (r >= 0)
                r = yt_parse_fields(p, v, tls_keys, ELEMENTSOF(tls_keys), tls_field, &t);
        if (r >= 0 && !!t.cert != !!t.key) {
                size_t saved = yt_path_push(p, t.cert ? ".ca_key_file" : ".ca_cert_file");
                r = yt_fail(p, t.cert ? t.cert : t.key,
                            "ca_cert_file and ca_key_file go together (the CA's certificate and its key)");
                yt_path_pop(p, saved);
        }
        return r;
}

static const char *const cluster_keys[] = {
        "head", "worker_heartbeat_interval_s", "worker_timeout_s", "worker_groups", "autoscaler", "transport", "tls",
};

struct cluster_state {
        struct cluster_config *c;
        const struct yt_node *heartbeat, *timeout;
        struct autoscaler_state autoscaler;
};

static int cluster_field(struct yt_parser *p, unsigned idx, const struct yt_node *v,
                         void *userdata) {
        struct cluster_state *s = userdata;
        struct cluster_config *c = s->c;
        int r;

        switch (idx) {
        case 0:
                if (yt_is_null(v))
                        return 0;
                r = yt_expect_mapping(p, v);
                if (r < 0)
                        return r;
                return yt_parse_fields(p, v, head_keys, ELEMENTSOF(head_keys), head_field, &c->head);
        case 1:
                s->heartbeat = v;
                return yt_get_double(p, v, false, &c->worker_heartbeat_interval_s);
        case 2:
                s->timeout = v;
                return yt_get_double(p, v, false, &c->worker_timeout_s);
        case 3:
                return parse_groups(p, v, c);
        case 4:
                return parse_autoscaler(p, v, &s->autoscaler);
        case 5:
                return get_transport(p, v, &c->transport);
        case 6:
                return parse_tls(p, v, c);
        }
        return 0;
}

int cluster_config_parse(const char *name, const char *text, size_t len,
                         struct cluster_config **ret, char **ret_error) {
        struct yt_parser p = { .name = name ?: "<cluster.yaml>" };
        struct cluster_state s = {};
        struct cluster_config *c = NULL;
        struct yt_node *root = NULL;
        int r;

        c = calloc(1, sizeof(*c));
        if (!c)
                return finish(&p, -ENOMEM, ret_error);
        *c = (struct cluster_config){
                .path = strdup(p.name),
                .head = {
                        .api_host = strdup("127.0.0.1"),
                        .api_port = NODECFG_DEFAULT_API_PORT,
                        .control_host = strdup("0.0.0.0"),
                        .control_port = NODECFG_DEFAULT_CONTROL_PORT,
                        .api_token_file = strdup(NODECFG_DEFAULT_API_TOKEN_FILE),
                        .join_token_file = strdup(NODECFG_DEFAULT_JOIN_TOKEN_FILE),
                },
                .worker_heartbeat_interval_s = 1,
                .worker_timeout_s = 10,
                .autoscaler_interval_s = 5,
                .autoscaler_upscaling_mode = UPSCALING_DEFAULT,
                .autoscaler_max_concurrent_launches = 10,
                .autoscaler_batch_idle_s = 1,
                .autoscaler_batch_max_s = 10,
                .autoscaler_reconcile_interval_s = 60,
                .node_cert_validity_s = NODECFG_DEFAULT_NODE_CERT_VALIDITY_S,
        };
        if (!c->path || !c->head.api_host || !c->head.control_host || !c->head.api_token_file ||
            !c->head.join_token_file) {
                r = -ENOMEM;
                goto out;
        }
        s.c = c;
        s.autoscaler.c = c;

        r = load_document(&p, text, len, "head, worker_timeout_s, worker_groups, ...", &root);
        if (r >= 0 && root)
                r = yt_parse_fields(&p, root, cluster_keys, ELEMENTSOF(cluster_keys), cluster_field,
                                    &s);
        /* A worker is declared dead after worker_timeout_s of silence; it must be allowed to
         * miss at least one heartbeat. */
        if (r >= 0 && c->worker_timeout_s <= c->worker_heartbeat_interval_s) {
                size_t saved;
                if (s.timeout) {
                        saved = yt_path_push(&p, "worker_timeout_s");
                        r = yt_fail(&p, s.timeout,
                                    "must be greater than worker_heartbeat_interval_s (%g), got %g",
                                    c->worker_heartbeat_interval_s, c->worker_timeout_s);
                } else {
                        saved = yt_path_push(&p, "worker_heartbeat_interval_s");
                        r = yt_fail(&p, s.heartbeat,
                                    "must be less than worker_timeout_s (%g, the default), got %g",
                                    c->worker_timeout_s, c->worker_heartbeat_interval_s);
                }
                yt_path_pop(&p, saved);
        }
        if (r >= 0)
                r = check_head_address(&p, root, &s.autoscaler);

out:
        yt_node_free(root);
        if (r < 0) {
                cluster_config_free(c);
                return finish(&p, r, ret_error);
        }
        finish(&p, 0, NULL);
        *ret = c;
        return 0;
}

int cluster_config_load_file(const char *path, struct cluster_config **ret, char **ret_error) {
        _cleanup_free_ char *buf = NULL;
        size_t len;

        int r = yt_read_file(path, NODECFG_MAX_FILE_SIZE, &buf, &len, ret_error);
        if (r < 0)
                return r;
        return cluster_config_parse(path, buf, len, ret, ret_error);
}

void cluster_config_free(struct cluster_config *c) {
        if (!c)
                return;
        free(c->path);
        free(c->head.api_host);
        free(c->head.control_host);
        free(c->head.api_token_file);
        free(c->head.join_token_file);
        free(c->ca_cert_file);
        free(c->ca_key_file);
        free(c->autoscaler_head_address);
        free(c->autoscaler_head_host);
        for (size_t i = 0; i < c->n_groups; i++) {
                struct worker_group *g = &c->groups[i];
                free(g->name);
                free(g->provider);
                labels_free(g->provider_options, g->n_provider_options);
                free(g->apt_source);
                free(g->package_version);
                labels_free(g->labels, g->n_labels);
                resource_spec_done(&g->resources);
        }
        free(c->groups);
        free(c);
}

/* ---- tokens ----------------------------------------------------------------------------------- */

int read_token_file(const char *path, char **ret_token, char **ret_error) {
        _cleanup_close_ int fd = -1;
        char buf[TOKEN_MAX + 2];
        struct stat st;
        size_t len = 0;
        int r;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0 || fstat(fd, &st) < 0) {
                r = negative_errno();
                errno = -r;
                return error_set(r, ret_error, "%s: %m", path);
        }
        if (!S_ISREG(st.st_mode))
                return error_set(-EINVAL, ret_error, "%s: not a regular file", path);
        /* Checked on the open file, so a chmod between check and read cannot slip past. */
        if (st.st_mode & 077)
                return error_set(-EPERM, ret_error,
                                  "%s: token file is accessible by group or others (mode %04o); "
                                  "run chmod 600 %s",
                                  path, (unsigned) (st.st_mode & 07777), path);

        for (;;) {
                ssize_t k = read(fd, buf + len, sizeof(buf) - 1 - len);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        r = negative_errno();
                        return error_set(r, ret_error, "%s: %m", path);
                }
                if (k == 0)
                        break;
                len += (size_t) k;
                if (len > TOKEN_MAX)
                        return error_set(-EFBIG, ret_error, "%s: too large for a token (limit %d bytes)",
                                          path, TOKEN_MAX);
        }
        buf[len] = 0;

        char *start = buf, *end = buf + len;
        while (start < end && isspace((unsigned char) *start))
                start++;
        while (end > start && isspace((unsigned char) end[-1]))
                end--;
        *end = 0;
        if (start == end)
                return error_set(-EINVAL, ret_error, "%s: token file is empty", path);
        if (memchr(start, 0, (size_t) (end - start)))
                return error_set(-EINVAL, ret_error, "%s: token contains a NUL byte", path);
        for (const char *c = start; c < end; c++)
                if ((unsigned char) *c <= 0x20 || *c == 0x7f)
                        return error_set(-EINVAL, ret_error,
                                          "%s: the token must be one word, without spaces or "
                                          "control characters",
                                          path);

        char *token = strdup(start);
        if (!token)
                return error_set(-ENOMEM, ret_error, "%s: out of memory", path);
        *ret_token = token;
        return 0;
}
