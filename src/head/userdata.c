/* Renders a new node's cloud-init user-data (userdata.h). One writer serves two ends: appending
 * to a buffer (the document) or feeding a hash (the group's config hash, the document rendered
 * without node name, token and the hash label), so the hash covers exactly what a node is
 * given and cannot drift from it. Every string from cluster.yaml or the caller goes through
 * put_scalar(): labels and options are operator text, and a quote or newline in one must stay
 * inside its value. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "head/userdata.h"
#include "macros.h"
#include "util.h"

/* Far above what the parser's limits allow (256 labels of 128 + 256 characters, escaped). */
#define USERDATA_MAX_SIZE (4u << 20)
#define FNV64_OFFSET 0xcbf29ce484222325ULL
#define FNV64_PRIME 0x100000001b3ULL

struct out {
        struct buf *b; /* NULL: hashing */
        uint64_t hash;
        int err;       /* the first failure; later writes are dropped */
};

static void put(struct out *o, const char *s, size_t len) {
        if (o->err < 0)
                return;
        if (!o->b) {
                for (size_t i = 0; i < len; i++)
                        o->hash = (o->hash ^ (unsigned char)s[i]) * FNV64_PRIME;
                return;
        }
        if (buf_append(o->b, s, len, USERDATA_MAX_SIZE) < 0)
                o->err = -ENOMEM;
}

static void puts_(struct out *o, const char *s) {
        put(o, s, strlen(s));
}

_printf_(2, 3) static void putf(struct out *o, const char *fmt, ...) {
        char small[128];
        va_list ap;

        va_start(ap, fmt);
        int n = vsnprintf(small, sizeof small, fmt, ap);
        va_end(ap);
        /* Only numbers and fixed words are formatted; strings go through put_scalar(). */
        if (n < 0 || (size_t)n >= sizeof small) {
                o->err = o->err ?: -ENOMEM;
                return;
        }
        put(o, small, (size_t)n);
}

/* YAML 1.1 reads these (in any case) as booleans or null; 1.2 a subset. */
static bool is_yaml_word(const char *s) {
        static const char *const words[] = { "y", "n", "yes", "no", "on", "off", "true", "false", "null" };
        for (size_t i = 0; i < ELEMENTSOF(words); i++)
                if (strcasecmp(s, words[i]) == 0)
                        return true;
        return false;
}

/* A word that every YAML parser reads as the same string, unquoted: a letter first (no number,
 * timestamp, indicator or tag), then letters, digits and . _ - / only. */
static bool is_plain_safe(const char *s) {
        if (!((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z')))
                return false;
        if (strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-/") != strlen(s))
                return false;
        return !is_yaml_word(s);
}

/* Decodes one UTF-8 character at s; returns its length, or 0 when the bytes are no valid
 * UTF-8 (overlong forms and surrogates included). */
static size_t utf8_decode(const unsigned char *s, uint32_t *ret) {
        uint32_t cp;
        size_t n;

        if (s[0] < 0x80) {
                *ret = s[0];
                return 1;
        }
        if ((s[0] & 0xe0) == 0xc0)
                cp = s[0] & 0x1f, n = 2;
        else if ((s[0] & 0xf0) == 0xe0)
                cp = s[0] & 0x0f, n = 3;
        else if ((s[0] & 0xf8) == 0xf0)
                cp = s[0] & 0x07, n = 4;
        else
                return 0;
        for (size_t i = 1; i < n; i++) {
                if ((s[i] & 0xc0) != 0x80) /* also stops at the NUL */
                        return 0;
                cp = (cp << 6) | (s[i] & 0x3f);
        }
        static const uint32_t min[] = { 0, 0, 0x80, 0x800, 0x10000 };
        if (cp < min[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
                return 0;
        *ret = cp;
        return n;
}

/* A double-quoted scalar holds anything; what a YAML reader would fold, reject or treat as a
 * line break (controls, C1 controls incl. NEL, U+2028/2029, BOM, U+FFFE/FFFF) is escaped. */
static void put_escaped(struct out *o, const char *s) {
        const unsigned char *p = (const unsigned char *)s;

        while (*p) {
                uint32_t cp;
                size_t n = utf8_decode(p, &cp);

                if (n == 0) {
                        puts_(o, "\\uFFFD");
                        p++;
                        continue;
                }
                if (cp == '"' || cp == '\\') {
                        put(o, "\\", 1);
                        put(o, (const char *)p, 1);
                } else if (cp == '\n')
                        puts_(o, "\\n");
                else if (cp == '\t')
                        puts_(o, "\\t");
                else if (cp < 0x20 || (cp >= 0x7f && cp <= 0x9f))
                        putf(o, "\\x%02X", (unsigned)cp);
                else if (cp == 0x2028 || cp == 0x2029 || cp == 0xfeff || cp == 0xfffe || cp == 0xffff)
                        putf(o, "\\u%04X", (unsigned)cp);
                else
                        put(o, (const char *)p, n);
                p += n;
        }
}

static void put_quoted(struct out *o, const char *s) {
        put(o, "\"", 1);
        put_escaped(o, s);
        put(o, "\"", 1);
}

static void put_scalar(struct out *o, const char *s) {
        if (is_plain_safe(s))
                puts_(o, s);
        else
                put_quoted(o, s);
}

int userdata_yaml_scalar(const char *s, char **ret) {
        struct buf b = {};
        struct out o = { .b = &b };

        put_scalar(&o, s);
        put(&o, "", 1);
        if (o.err < 0) {
                buf_free(&b);
                return o.err;
        }
        *ret = b.data;
        return 0;
}

/* A comment holds names only for people: anything but printable ASCII becomes '?', so
 * nothing in it can end the line. */
static void put_comment_text(struct out *o, const char *s) {
        for (; *s; s++)
                put(o, (unsigned char)*s >= 0x20 && (unsigned char)*s < 0x7f ? s : "?", 1);
}

/* The shortest form that reads back as the same double (2, 0.5, 1.25). */
static void put_number(struct out *o, double v) {
        char text[64];

        for (int prec = 15; prec <= 17; prec++) {
                snprintf(text, sizeof text, "%.*g", prec, v);
                if (strtod(text, NULL) == v)
                        break;
        }
        puts_(o, text);
}

/* Entries of a name-keyed list in key order (so reordering cluster.yaml changes no hash),
 * without allocating: the next is the smallest key after the previous one. Keys are unique. */
#define NEXT_BY_KEY(items, n, field, prev)                                                        \
        ({                                                                                        \
                size_t _best = (n);                                                               \
                for (size_t _i = 0; _i < (n); _i++)                                               \
                        if ((!(prev) || strcmp((items)[_i].field, (prev)) > 0) &&                 \
                            (_best == (n) || strcmp((items)[_i].field, (items)[_best].field) < 0)) \
                                _best = _i;                                                       \
                _best;                                                                            \
        })

/* worker.yaml's lines, inside the write_files entry's block scalar. */
#define W "      "

static void put_worker_yaml(struct out *o, const struct cluster_config *c, const struct worker_group *g,
                            const char *node_name, const char *config_hash) {
        const struct resource_spec *rs = &g->resources;

        puts_(o, W "head_address: ");
        put_quoted(o, c->autoscaler_head_address ?: "");
        puts_(o, "\n" W "node_name: ");
        put_scalar(o, node_name);
        puts_(o, "\n" W "node_address: auto\n");
        if (c->transport == TRANSPORT_PLAINTEXT)
                puts_(o, W "transport: plaintext\n");

        puts_(o, W "labels:\n" W "  " NODECFG_LABEL_GROUP ": ");
        put_scalar(o, g->name);
        put(o, "\n", 1);
        const char *prev = NULL;
        for (size_t k = 0; k < g->n_labels; k++) {
                size_t i = NEXT_BY_KEY(g->labels, g->n_labels, key, prev);
                const struct node_label *l = &g->labels[i];
                prev = l->key;
                /* cluster.yaml allows "group" only as the group's name, written above. */
                if (streq(l->key, NODECFG_LABEL_GROUP) || streq(l->key, NODECFG_LABEL_CONFIG))
                        continue;
                puts_(o, W "  ");
                put_scalar(o, l->key);
                puts_(o, ": ");
                put_scalar(o, l->value);
                put(o, "\n", 1);
        }
        if (config_hash) {
                puts_(o, W "  " NODECFG_LABEL_CONFIG ": ");
                put_scalar(o, config_hash);
                put(o, "\n", 1);
        }

        if (!rs->has_num_cpus && !rs->has_memory && !rs->has_num_gpus && !rs->has_gpu_memory && !rs->has_custom)
                return;
        puts_(o, W "resources:\n");
        if (rs->has_num_cpus) {
                puts_(o, W "  num_cpus: ");
                put_number(o, rs->num_cpus);
                put(o, "\n", 1);
        }
        if (rs->has_memory)
                putf(o, W "  memory: %" PRIu64 "\n", rs->memory);
        if (rs->has_num_gpus)
                putf(o, W "  num_gpus: %u\n", rs->num_gpus);
        if (rs->has_gpu_memory)
                putf(o, W "  gpu_memory: %" PRIu64 "\n", rs->gpu_memory);
        if (rs->has_custom) {
                puts_(o, rs->n_custom ? W "  custom:\n" : W "  custom: {}\n");
                prev = NULL;
                for (size_t k = 0; k < rs->n_custom; k++) {
                        size_t i = NEXT_BY_KEY(rs->custom, rs->n_custom, name, prev);
                        prev = rs->custom[i].name;
                        puts_(o, W "    ");
                        put_scalar(o, rs->custom[i].name);
                        puts_(o, ": ");
                        put_number(o, rs->custom[i].amount);
                        put(o, "\n", 1);
                }
        }
}

/* The whole document; for the hash without node name, token and hash label (all NULL). */
static void put_document(struct out *o, const struct cluster_config *c, const struct worker_group *g,
                         const char *node_name, const char *join_token, const char *config_hash) {
        puts_(o, "#cloud-config\n# serve worker node ");
        put_comment_text(o, node_name ?: "");
        puts_(o, " of group ");
        put_comment_text(o, g->name);
        puts_(o, " (rendered by serve-head)\n");
        if (g->apt_source) {
                puts_(o, "apt:\n  sources:\n    serve.list:\n      source: ");
                put_quoted(o, g->apt_source);
                put(o, "\n", 1);
        }
        puts_(o, "package_update: true\npackages:\n  - ");
        if (g->package_version) {
                puts_(o, "\"serve=");
                put_escaped(o, g->package_version);
                put(o, "\"", 1);
        } else
                puts_(o, "serve");
        /* Deferred: the package ships a default worker.yaml that would replace ours. */
        puts_(o, "\n"
                 "write_files:\n"
                 "  - path: /etc/serve/worker.yaml\n"
                 "    permissions: \"0644\"\n"
                 "    defer: true\n"
                 "    content: |\n");
        put_worker_yaml(o, c, g, node_name ?: "", config_hash);
        /* serve-worker runs as the package's user serve (made when the package was installed,
         * before deferred files are written): only it may read the token. */
        puts_(o, "  - path: /etc/serve/join-token\n"
                 "    owner: \"serve:serve\"\n"
                 "    permissions: \"0600\"\n"
                 "    defer: true\n"
                 "    content: ");
        put_quoted(o, join_token ?: "REDACTED");
        puts_(o, "\n"
                 "runcmd:\n"
                 "  - [systemctl, disable, --now, serve-head]\n" /* the package starts one: a node needs none */
                 "  - [systemctl, enable, serve-worker]\n"
                 "  - [systemctl, restart, serve-worker]\n");
}

uint64_t userdata_config_hash(const struct cluster_config *c, const struct worker_group *g) {
        struct out o = { .hash = FNV64_OFFSET };

        put_document(&o, c, g, NULL, NULL, NULL); /* hashing allocates nothing: it cannot fail */
        return o.hash;
}

int userdata_render(const struct cluster_config *c, const struct worker_group *g, const char *node_name,
                    const char *join_token, char **ret) {
        struct buf b = {};
        struct out o = { .b = &b };
        char hash[17];

        if (!c->autoscaler_head_address)
                return -EINVAL;
        snprintf(hash, sizeof hash, "%016" PRIx64, userdata_config_hash(c, g));
        put_document(&o, c, g, node_name, join_token, hash);
        put(&o, "", 1);
        if (o.err < 0) {
                buf_free(&b);
                return o.err;
        }
        *ret = b.data;
        return 0;
}
