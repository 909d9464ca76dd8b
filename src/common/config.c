/* apps.yaml parser. Two passes: libyaml's event stream is built into a small tree of our own
 * (so every node keeps its line:column, aliases are refused before they can multiply the
 * document, and depth and node count are bounded before anything recurses), then the tree is
 * walked against the schema with a dotted field path kept alongside for error messages.
 * The first error stops the parse: an operator fixes one thing at a time, and a reload keeps
 * the old config until the file is valid. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <yaml.h>

#include "common/config.h"
#include "macros.h"

#define CONFIG_MAX_FILE_SIZE (4u << 20)
#define CONFIG_MAX_APPS 1024
#define CONFIG_MAX_DEPLOYMENTS 1024
/* args and user_config are free-form: bound them so converting to JSON cannot exhaust the stack. */
#define CONFIG_MAX_VALUE_DEPTH 64
/* The schema itself is 6 levels deep; this only stops pathological input early. */
#define CONFIG_MAX_TREE_DEPTH 128
/* A 4 MiB file of "[a,a,a,...]" would otherwise cost ~100 bytes of tree per input byte pair. */
#define CONFIG_MAX_NODES (1u << 20)
/* Names end up in paths, shared-memory segment names and URLs elsewhere. */
#define CONFIG_MAX_NAME 128

enum node_type { NODE_SCALAR, NODE_SEQUENCE, NODE_MAPPING };

struct node {
        enum node_type type;
        bool plain;          /* plain scalar, no !!str: null/bool/number resolution applies */
        char *text;          /* scalars: NUL-terminated, but may hold NULs before len */
        size_t len;
        int line, column;    /* 1-based */
        struct node **items; /* sequence: items; mapping: key, value, key, value, ... */
        size_t n_items, cap;
};

struct parser {
        const char *name;
        char *error;
        size_t n_nodes;
        char path[1024]; /* dotted field path of the node being parsed */
        size_t path_len;
};

static void node_free(struct node *n) {
        if (!n)
                return;
        for (size_t i = 0; i < n->n_items; i++)
                node_free(n->items[i]);
        free(n->items);
        free(n->text);
        free(n);
}

/* ---- messages ------------------------------------------------------------------------------ */

_printf_(4, 0) static int vfail_at(struct parser *p, int line, int column, const char *fmt,
                                   va_list ap) {
        _cleanup_free_ char *msg = NULL;

        if (vasprintf(&msg, fmt, ap) < 0)
                return -ENOMEM;
        free(p->error);
        if (asprintf(&p->error, "%s:%d:%d: %s%s%s", p->name, line, column, p->path,
                     p->path_len > 0 ? ": " : "", msg) < 0) {
                p->error = NULL;
                return -ENOMEM;
        }
        return -EINVAL;
}

/* Records "NAME:LINE:COLUMN: PATH: message"; returns -EINVAL (-ENOMEM if that failed). */
_printf_(4, 5) static int fail_at(struct parser *p, int line, int column, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        int r = vfail_at(p, line, column, fmt, ap);
        va_end(ap);
        return r;
}

_printf_(3, 4) static int fail(struct parser *p, const struct node *at, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        int r = vfail_at(p, at->line, at->column, fmt, ap);
        va_end(ap);
        return r;
}

/* Copies up to `max` bytes of s into buf (which has room for max*4+8), escaping quotes,
 * backslashes and control characters so a message stays one readable line. */
static char *escape(const char *s, size_t len, size_t max, char *buf) {
        char *o = buf;
        size_t i;

        for (i = 0; i < len && i < max; i++) {
                unsigned char c = (unsigned char) s[i];
                if (c == '"' || c == '\\') {
                        *o++ = '\\';
                        *o++ = (char) c;
                } else if (c < 0x20 || c == 0x7f)
                        o += sprintf(o, "\\x%02x", c);
                else
                        *o++ = (char) c;
        }
        if (i < len) {
                /* Don't leave half a UTF-8 sequence before the ellipsis. */
                while (o > buf && ((unsigned char) o[-1] & 0xc0) == 0x80)
                        o--;
                if (o > buf && ((unsigned char) o[-1] & 0xc0) == 0xc0)
                        o--;
                o = stpcpy(o, "...");
        }
        *o = 0;
        return buf;
}

#define DESCRIBE_MAX 48
#define DESCRIBE_BUF (DESCRIBE_MAX * 4 + 16)

/* What a node is, for "got ..." in messages: a quoted scalar, or the kind of collection. */
static const char *describe(const struct node *n, char buf[static DESCRIBE_BUF]) {
        if (n->type == NODE_SEQUENCE)
                return "a list";
        if (n->type == NODE_MAPPING)
                return "a mapping";
        if (n->plain && n->len == 0)
                return "an empty value";
        buf[0] = '"';
        escape(n->text, n->len, DESCRIBE_MAX, buf + 1);
        strcat(buf, "\"");
        return buf;
}

#define DESCRIBE(n) describe((n), (char[DESCRIBE_BUF]){})

/* Appends ".key" (or "key" at the top) or "[i]" to the field path; returns the length to pass
 * to path_pop(). A path too long for the buffer is cut, which only shortens messages. */
_printf_(2, 3) static size_t path_push(struct parser *p, const char *fmt, ...) {
        size_t saved = p->path_len;
        va_list ap;

        va_start(ap, fmt);
        int k = vsnprintf(p->path + p->path_len, sizeof(p->path) - p->path_len, fmt, ap);
        va_end(ap);
        if (k > 0)
                p->path_len = MIN(p->path_len + (size_t) k, sizeof(p->path) - 1);
        return saved;
}

static size_t path_push_key(struct parser *p, const struct node *key) {
        char buf[64 * 4 + 8];
        escape(key->text, key->len, 64, buf);
        return path_push(p, "%s%s", p->path_len > 0 ? "." : "", buf);
}

static void path_pop(struct parser *p, size_t saved) {
        p->path_len = saved;
        p->path[saved] = 0;
}

/* ---- YAML -> tree ---------------------------------------------------------------------------- */

static int yaml_fail(struct parser *p, const yaml_parser_t *yp, const char *text, size_t len) {
        if (yp->error == YAML_MEMORY_ERROR)
                return -ENOMEM;

        const char *problem = yp->problem ?: "unknown error";
        if (yp->error == YAML_READER_ERROR) {
                /* The reader reports a byte offset, not a mark. */
                int line = 1, column = 1;
                for (size_t i = 0; i < yp->problem_offset && i < len; i++) {
                        if (text[i] == '\n') {
                                line++;
                                column = 1;
                        } else if (((unsigned char) text[i] & 0xc0) != 0x80)
                                column++;
                }
                return fail_at(p, line, column, "invalid YAML: %s", problem);
        }

        int line = (int) yp->problem_mark.line + 1, column = (int) yp->problem_mark.column + 1;
        if (yp->context)
                return fail_at(p, line, column, "invalid YAML: %s (%s at line %d, column %d)",
                               problem, yp->context, (int) yp->context_mark.line + 1,
                               (int) yp->context_mark.column + 1);
        return fail_at(p, line, column, "invalid YAML: %s", problem);
}

static int check_tag(struct parser *p, const yaml_char_t *tag, const yaml_mark_t *m) {
        if (!tag || strcmp((const char *) tag, "!") == 0 ||
            strncmp((const char *) tag, "tag:yaml.org,2002:", 18) == 0)
                return 0;
        char buf[64 * 4 + 8];
        const char *t = (const char *) tag;
        return fail_at(p, (int) m->line + 1, (int) m->column + 1,
                       "unsupported YAML tag \"%s\"", escape(t, strlen(t), 64, buf));
}

static int node_new(struct parser *p, enum node_type type, const yaml_mark_t *m,
                    struct node **ret) {
        if (++p->n_nodes > CONFIG_MAX_NODES)
                return fail_at(p, (int) m->line + 1, (int) m->column + 1,
                               "too many YAML nodes (limit %u)", CONFIG_MAX_NODES);
        struct node *n = calloc(1, sizeof(*n));
        if (!n)
                return -ENOMEM;
        n->type = type;
        n->line = (int) m->line + 1;
        n->column = (int) m->column + 1;
        *ret = n;
        return 0;
}

static int node_append(struct node *parent, struct node *child) {
        if (parent->n_items == parent->cap) {
                size_t cap = parent->cap ? parent->cap * 2 : 4;
                struct node **items = reallocarray(parent->items, cap, sizeof(*items));
                if (!items)
                        return -ENOMEM;
                parent->items = items;
                parent->cap = cap;
        }
        parent->items[parent->n_items++] = child;
        return 0;
}

/* Builds the tree of the (single) document; *ret is NULL for an empty stream. */
static int load_tree(struct parser *p, const char *text, size_t len, struct node **ret) {
        struct node *stack[CONFIG_MAX_TREE_DEPTH];
        struct node *root = NULL;
        size_t depth = 0;
        unsigned documents = 0;
        yaml_parser_t yp;
        int r = 0;

        if (!yaml_parser_initialize(&yp))
                return -ENOMEM;
        yaml_parser_set_input_string(&yp, (const unsigned char *) text, len);

        for (bool done = false; !done && r >= 0;) {
                yaml_event_t ev;
                struct node *n = NULL;

                if (!yaml_parser_parse(&yp, &ev)) {
                        r = yaml_fail(p, &yp, text, len);
                        break;
                }
                const yaml_mark_t *m = &ev.start_mark;

                switch (ev.type) {
                case YAML_STREAM_END_EVENT:
                        done = true;
                        break;
                case YAML_DOCUMENT_START_EVENT:
                        if (documents++ > 0)
                                r = fail_at(p, (int) m->line + 1, (int) m->column + 1,
                                            "a second YAML document; the file must hold one");
                        break;
                case YAML_ALIAS_EVENT:
                        r = fail_at(p, (int) m->line + 1, (int) m->column + 1,
                                    "YAML aliases (*%s) are not supported; write the value out",
                                    (const char *) ev.data.alias.anchor);
                        break;
                case YAML_SCALAR_EVENT:
                        r = check_tag(p, ev.data.scalar.tag, m);
                        if (r >= 0)
                                r = node_new(p, NODE_SCALAR, m, &n);
                        if (r < 0)
                                break;
                        n->len = ev.data.scalar.length;
                        n->text = malloc(n->len + 1);
                        if (!n->text) {
                                r = -ENOMEM;
                                break;
                        }
                        memcpy(n->text, ev.data.scalar.value, n->len);
                        n->text[n->len] = 0;
                        n->plain = ev.data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
                                   !(ev.data.scalar.tag &&
                                     (strcmp((const char *) ev.data.scalar.tag, "!") == 0 ||
                                      strcmp((const char *) ev.data.scalar.tag, YAML_STR_TAG) == 0));
                        break;
                case YAML_SEQUENCE_START_EVENT:
                case YAML_MAPPING_START_EVENT:
                        r = check_tag(p, ev.type == YAML_SEQUENCE_START_EVENT ?
                                                 ev.data.sequence_start.tag :
                                                 ev.data.mapping_start.tag, m);
                        if (r >= 0 && depth == CONFIG_MAX_TREE_DEPTH)
                                r = fail_at(p, (int) m->line + 1, (int) m->column + 1,
                                            "nested deeper than %d levels", CONFIG_MAX_TREE_DEPTH);
                        if (r >= 0)
                                r = node_new(p, ev.type == YAML_SEQUENCE_START_EVENT ?
                                                        NODE_SEQUENCE : NODE_MAPPING, m, &n);
                        break;
                case YAML_SEQUENCE_END_EVENT:
                case YAML_MAPPING_END_EVENT:
                        depth--;
                        break;
                default:
                        break;
                }

                if (n) {
                        if (r >= 0 && depth > 0)
                                r = node_append(stack[depth - 1], n);
                        else if (r >= 0)
                                root = n; /* one document, so one root */
                        if (r < 0)
                                node_free(n);
                        else if (n->type != NODE_SCALAR)
                                stack[depth++] = n;
                }
                yaml_event_delete(&ev);
        }
        yaml_parser_delete(&yp);

        if (r < 0) {
                node_free(root);
                return r;
        }
        *ret = root;
        return 0;
}

/* ---- scalars ---------------------------------------------------------------------------------- */

static bool scalar_is(const struct node *n, const char *s) {
        return n->type == NODE_SCALAR && n->len == strlen(s) && memcmp(n->text, s, n->len) == 0;
}

/* YAML core schema null: empty, ~, null, Null, NULL (plain scalars only). */
static bool is_null(const struct node *n) {
        return n->type == NODE_SCALAR && n->plain &&
               (n->len == 0 || scalar_is(n, "~") || scalar_is(n, "null") ||
                scalar_is(n, "Null") || scalar_is(n, "NULL"));
}

static int scalar_bool(const struct node *n) {
        if (!n->plain)
                return -1;
        if (scalar_is(n, "true") || scalar_is(n, "True") || scalar_is(n, "TRUE"))
                return 1;
        if (scalar_is(n, "false") || scalar_is(n, "False") || scalar_is(n, "FALSE"))
                return 0;
        return -1;
}

enum number_kind { NUMBER_NONE, NUMBER_INT, NUMBER_FLOAT };

/* YAML core schema numbers: [-+]digits, 0x.., 0o.., and decimal floats with optional exponent.
 * ".inf" and ".nan" are left as strings: JSON cannot carry them. */
static enum number_kind number_kind(const char *s, size_t len) {
        size_t i = 0, digits = 0;

        if (len > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'o')) {
                for (i = 2; i < len; i++)
                        if (s[1] == 'x' ? !strchr("0123456789abcdefABCDEF", s[i]) || !s[i] :
                                          s[i] < '0' || s[i] > '7')
                                return NUMBER_NONE;
                return NUMBER_INT;
        }
        if (i < len && (s[i] == '-' || s[i] == '+'))
                i++;
        for (; i < len && s[i] >= '0' && s[i] <= '9'; i++)
                digits++;
        if (i == len)
                return digits > 0 ? NUMBER_INT : NUMBER_NONE;
        if (s[i] == '.')
                for (i++; i < len && s[i] >= '0' && s[i] <= '9'; i++)
                        digits++;
        if (digits == 0)
                return NUMBER_NONE;
        if (i < len && (s[i] == 'e' || s[i] == 'E')) {
                size_t exp = 0;
                i++;
                if (i < len && (s[i] == '-' || s[i] == '+'))
                        i++;
                for (; i < len && s[i] >= '0' && s[i] <= '9'; i++)
                        exp++;
                if (exp == 0)
                        return NUMBER_NONE;
        }
        return i == len ? NUMBER_FLOAT : NUMBER_NONE;
}

/* Returns 0 and *ret, -ERANGE when it does not fit, -EINVAL when it is no integer. */
static int scalar_int64(const struct node *n, long long *ret) {
        if (n->type != NODE_SCALAR || number_kind(n->text, n->len) != NUMBER_INT)
                return -EINVAL;
        int base = 10;
        const char *s = n->text;
        if (n->len > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'o')) {
                base = s[1] == 'x' ? 16 : 8;
                s += 2;
        }
        errno = 0;
        long long v = strtoll(s, NULL, base);
        if (errno == ERANGE)
                return -ERANGE;
        *ret = v;
        return 0;
}

/* Returns 0 and a finite *ret, -ERANGE for overflow, -EINVAL when it is no number. */
static int scalar_double(const struct node *n, double *ret) {
        if (n->type != NODE_SCALAR)
                return -EINVAL;
        enum number_kind k = number_kind(n->text, n->len);
        if (k == NUMBER_NONE)
                return -EINVAL;
        if (k == NUMBER_INT && n->len > 2 && n->text[0] == '0' &&
            (n->text[1] == 'x' || n->text[1] == 'o')) {
                long long v;
                int r = scalar_int64(n, &v);
                if (r < 0)
                        return r;
                *ret = (double) v;
                return 0;
        }
        double v = strtod(n->text, NULL);
        if (!isfinite(v))
                return -ERANGE;
        *ret = v;
        return 0;
}

/* Numeric fields take the number whether or not it was quoted: "8000" and 8000 mean the same
 * to an operator. `what` completes "must be ...". */
static int get_int(struct parser *p, const struct node *n, long long min, long long max,
                   const char *what, int *ret) {
        long long v;
        int r = scalar_int64(n, &v);
        if (r == -EINVAL || (r >= 0 && v < min))
                return fail(p, n, "must be %s, got %s", what, DESCRIBE(n));
        if (r == -ERANGE || v > max) {
                if (max < INT_MAX) /* `what` already names the range */
                        return fail(p, n, "must be %s, got %s", what, DESCRIBE(n));
                return fail(p, n, "must be %s no larger than %lld, got %s", what, max, DESCRIBE(n));
        }
        *ret = (int) v;
        return 0;
}

static int get_double(struct parser *p, const struct node *n, bool zero_ok, double *ret) {
        double v;
        int r = scalar_double(n, &v);
        if (r == -ERANGE)
                return fail(p, n, "number out of range: %s", DESCRIBE(n));
        if (r < 0 || v < 0 || (!zero_ok && v == 0))
                return fail(p, n, "must be a %s number, got %s", zero_ok ? "non-negative" : "positive",
                            DESCRIBE(n));
        *ret = v;
        return 0;
}

/* Any scalar but null, as a string of its own (no NULs). */
static int get_string(struct parser *p, const struct node *n, bool empty_ok, char **ret) {
        if (n->type != NODE_SCALAR || is_null(n)) {
                if (n->type == NODE_SCALAR && n->len == 0)
                        return fail(p, n, "must be a string, got an empty value");
                return fail(p, n, "must be a string, got %s", DESCRIBE(n));
        }
        if (strlen(n->text) != n->len)
                return fail(p, n, "must not contain NUL characters");
        if (!empty_ok && n->len == 0)
                return fail(p, n, "must not be empty");
        char *s = strdup(n->text);
        if (!s)
                return -ENOMEM;
        free(*ret);
        *ret = s;
        return 0;
}

/* Application and deployment names. */
static int get_name(struct parser *p, const struct node *n, char **ret) {
        _cleanup_free_ char *s = NULL;
        int r = get_string(p, n, false, &s);
        if (r < 0)
                return r;
        if (n->len > CONFIG_MAX_NAME)
                return fail(p, n, "too long (%zu bytes, limit %d)", n->len, CONFIG_MAX_NAME);
        for (const char *c = s; *c; c++)
                if ((unsigned char) *c < 0x20 || *c == 0x7f || *c == '/')
                        return fail(p, n, "must not contain '/' or control characters, got %s",
                                    DESCRIBE(n));
        free(*ret);
        *ret = TAKE_PTR(s);
        return 0;
}

/* ---- mappings ---------------------------------------------------------------------------------- */

static size_t edit_distance(const char *a, size_t la, const char *b, size_t lb) {
        size_t row[65];

        if (la > 64 || lb > 64)
                return SIZE_MAX;
        for (size_t j = 0; j <= lb; j++)
                row[j] = j;
        for (size_t i = 1; i <= la; i++) {
                size_t diag = row[0];
                row[0] = i;
                for (size_t j = 1; j <= lb; j++) {
                        size_t up = row[j];
                        size_t sub = diag + (a[i - 1] != b[j - 1]);
                        row[j] = MIN(MIN(row[j - 1] + 1, up + 1), sub);
                        diag = up;
                }
        }
        return row[lb];
}

static int fail_unknown_key(struct parser *p, const struct node *key, const char *const keys[],
                            size_t n_keys) {
        char allowed[512] = "", hint[96] = "";
        size_t best = 3;

        for (size_t i = 0; i < n_keys; i++) {
                size_t d = edit_distance(key->text, key->len, keys[i], strlen(keys[i]));
                if (d < best) {
                        best = d;
                        snprintf(hint, sizeof(hint), " (did you mean \"%s\"?)", keys[i]);
                }
                if (strlen(allowed) + strlen(keys[i]) + 3 < sizeof(allowed)) {
                        if (i > 0)
                                strcat(allowed, ", ");
                        strcat(allowed, keys[i]);
                }
        }
        return fail(p, key, "unknown key%s; allowed here: %s", hint, allowed);
}

typedef int (*field_fn)(struct parser *p, unsigned idx, const struct node *val, void *userdata);

/* Walks a schema mapping: every key must be one of `keys` (at most 64), once. Calls fn with the
 * key's index and value, the key appended to the field path. */
static int parse_fields(struct parser *p, const struct node *map, const char *const keys[],
                        size_t n_keys, field_fn fn, void *userdata) {
        const struct node *first[64] = {};

        for (size_t i = 0; i + 1 < map->n_items; i += 2) {
                const struct node *key = map->items[i], *val = map->items[i + 1];
                unsigned idx;
                int r;

                if (key->type != NODE_SCALAR)
                        return fail(p, key, "keys must be strings, got %s", DESCRIBE(key));
                for (idx = 0; idx < n_keys; idx++)
                        if (scalar_is(key, keys[idx]))
                                break;

                size_t saved = path_push_key(p, key);
                if (idx == n_keys)
                        r = fail_unknown_key(p, key, keys, n_keys);
                else if (first[idx])
                        r = fail(p, key, "duplicate key (first set at line %d, column %d)",
                                 first[idx]->line, first[idx]->column);
                else {
                        first[idx] = key;
                        r = fn(p, idx, val, userdata);
                }
                path_pop(p, saved);
                if (r < 0)
                        return r;
        }
        return 0;
}

struct key_ref {
        const struct node *key;
        size_t index;
};

static int key_ref_compare(const void *a, const void *b) {
        const struct key_ref *x = a, *y = b;
        size_t l = MIN(x->key->len, y->key->len);
        int c = memcmp(x->key->text, y->key->text, l);
        if (c != 0)
                return c;
        if (x->key->len != y->key->len)
                return x->key->len < y->key->len ? -1 : 1;
        return x->index < y->index ? -1 : x->index > y->index;
}

/* Free-form mappings (args, user_config, env_vars, resources): keys are scalars, each once.
 * Sorted rather than compared pairwise: a 4 MiB mapping must not take quadratic time. */
static int check_free_mapping(struct parser *p, const struct node *map) {
        size_t n = map->n_items / 2;

        for (size_t i = 0; i < n; i++) {
                const struct node *key = map->items[2 * i];
                if (key->type != NODE_SCALAR)
                        return fail(p, key, "keys must be strings, got %s", DESCRIBE(key));
                if (strlen(key->text) != key->len)
                        return fail(p, key, "keys must not contain NUL characters");
        }
        if (n < 2)
                return 0;

        _cleanup_free_ struct key_ref *refs = calloc(n, sizeof(*refs));
        if (!refs)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++)
                refs[i] = (struct key_ref){ map->items[2 * i], i };
        qsort(refs, n, sizeof(*refs), key_ref_compare);

        /* Report the repeat that comes first in the file. */
        const struct key_ref *dup = NULL, *orig = NULL;
        for (size_t i = 1; i < n; i++) {
                if (refs[i].key->len != refs[i - 1].key->len ||
                    memcmp(refs[i].key->text, refs[i - 1].key->text, refs[i].key->len) != 0)
                        continue;
                if (!dup || refs[i].index < dup->index) {
                        dup = &refs[i];
                        orig = &refs[i - 1];
                }
        }
        if (!dup)
                return 0;
        /* Within a run of equal keys the first is the original. */
        while (orig > refs && orig[-1].key->len == orig->key->len &&
               memcmp(orig[-1].key->text, orig->key->text, orig->key->len) == 0)
                orig--;
        size_t saved = path_push_key(p, dup->key);
        int r = fail(p, dup->key, "duplicate key (first set at line %d, column %d)",
                     orig->key->line, orig->key->column);
        path_pop(p, saved);
        return r;
}

static int expect_mapping(struct parser *p, const struct node *n) {
        if (n->type != NODE_MAPPING)
                return fail(p, n, "must be a mapping, got %s", DESCRIBE(n));
        return 0;
}

/* ---- free-form values as JSON ------------------------------------------------------------------- */

static int scalar_to_json(struct parser *p, const struct node *n, cJSON **ret) {
        cJSON *j = NULL;

        if (strlen(n->text) != n->len)
                return fail(p, n, "strings with NUL characters are not supported");
        if (!n->plain)
                j = cJSON_CreateString(n->text);
        else if (is_null(n))
                j = cJSON_CreateNull();
        else if (scalar_bool(n) >= 0)
                j = cJSON_CreateBool(scalar_bool(n));
        else if (number_kind(n->text, n->len) == NUMBER_NONE)
                j = cJSON_CreateString(n->text);
        else {
                long long v;
                double d;
                if (scalar_int64(n, &v) >= 0 && (v > (1LL << 53) || v < -(1LL << 53))) {
                        /* A double would round it; keep the digits. */
                        char buf[32];
                        snprintf(buf, sizeof(buf), "%lld", v);
                        j = cJSON_CreateRaw(buf);
                } else if (scalar_double(n, &d) >= 0)
                        j = cJSON_CreateNumber(d);
                else
                        return fail(p, n, "number out of range: %s", DESCRIBE(n));
        }
        if (!j)
                return -ENOMEM;
        *ret = j;
        return 0;
}

static int node_to_json(struct parser *p, const struct node *n, unsigned depth, cJSON **ret) {
        cJSON *j = NULL;
        int r = 0;

        if (n->type == NODE_SCALAR)
                return scalar_to_json(p, n, ret);
        if (depth >= CONFIG_MAX_VALUE_DEPTH)
                return fail(p, n, "nested deeper than %d levels", CONFIG_MAX_VALUE_DEPTH);

        if (n->type == NODE_SEQUENCE) {
                j = cJSON_CreateArray();
                if (!j)
                        return -ENOMEM;
                for (size_t i = 0; i < n->n_items && r >= 0; i++) {
                        cJSON *item = NULL;
                        size_t saved = path_push(p, "[%zu]", i);
                        r = node_to_json(p, n->items[i], depth + 1, &item);
                        path_pop(p, saved);
                        if (r >= 0 && !cJSON_AddItemToArray(j, item)) {
                                cJSON_Delete(item);
                                r = -ENOMEM;
                        }
                }
        } else {
                r = check_free_mapping(p, n);
                if (r < 0)
                        return r;
                j = cJSON_CreateObject();
                if (!j)
                        return -ENOMEM;
                for (size_t i = 0; i + 1 < n->n_items && r >= 0; i += 2) {
                        cJSON *item = NULL;
                        size_t saved = path_push_key(p, n->items[i]);
                        r = node_to_json(p, n->items[i + 1], depth + 1, &item);
                        path_pop(p, saved);
                        if (r >= 0 && !cJSON_AddItemToObject(j, n->items[i]->text, item)) {
                                cJSON_Delete(item);
                                r = -ENOMEM;
                        }
                }
        }
        if (r < 0) {
                cJSON_Delete(j);
                return r;
        }
        *ret = j;
        return 0;
}

/* Any YAML value as compact JSON text in a malloc'd string. */
static int get_json(struct parser *p, const struct node *n, char **ret) {
        cJSON *j = NULL;
        int r = node_to_json(p, n, 0, &j);
        if (r < 0)
                return r;
        char *text = cJSON_PrintUnformatted(j);
        cJSON_Delete(j);
        if (!text)
                return -ENOMEM;
        /* cJSON may allocate through hooks someone else installed; ours is freed with free(). */
        char *s = strdup(text);
        cJSON_free(text);
        if (!s)
                return -ENOMEM;
        free(*ret);
        *ret = s;
        return 0;
}

/* ---- schema ------------------------------------------------------------------------------------ */

void http_options_defaults(struct http_options *h) {
        /* h->host is malloc'd so that config_free() can free a parsed one and a default alike;
         * it is NULL only when out of memory (config_parse() checks). */
        *h = (struct http_options){
                .host = strdup("0.0.0.0"),
                .port = 8000,
                .request_timeout_s = 0,
                .keep_alive_timeout_s = 5,
                .max_request_body_bytes = 64u << 20,
                .header_timeout_s = 10,
                .max_connections = 16384,
        };
}

/* Overwrites all of *d (name and user_config_json become NULL). */
void deployment_config_defaults(struct deployment_config *d) {
        *d = (struct deployment_config){
                .num_replicas = 1,
                .max_ongoing_requests = 5,
                .max_queued_requests = -1,
                .health_check_period_s = 10,
                .health_check_timeout_s = 30,
                .graceful_shutdown_timeout_s = 20,
                .graceful_shutdown_wait_loop_s = 2,
                .max_replicas_per_node = 0,
                .actor = { .num_cpus = 1, .num_gpus = 0, .memory = 0 },
                .autoscaling = {
                        .min_replicas = 1,
                        .max_replicas = 1,
                        .initial_replicas = -1,
                        .target_ongoing_requests = 2,
                        .metrics_interval_s = 10,
                        .look_back_period_s = 30,
                        .upscale_delay_s = 30,
                        .downscale_delay_s = 600,
                        .upscaling_factor = 1,
                        .downscaling_factor = 1,
                },
        };
}

const char *proxy_location_to_string(enum proxy_location l) {
        switch (l) {
        case PROXY_EVERY_NODE:
                return "EveryNode";
        case PROXY_HEAD_ONLY:
                return "HeadOnly";
        case PROXY_DISABLED:
                return "Disabled";
        }
        return NULL;
}

/* http_options */

static const char *const http_keys[] = {
        "host", "port", "request_timeout_s", "keep_alive_timeout_s", "max_request_body_bytes",
        "header_timeout_s", "max_connections",
};

static int http_field(struct parser *p, unsigned idx, const struct node *v, void *userdata) {
        struct http_options *h = userdata;
        long long body;

        switch (idx) {
        case 0:
                return get_string(p, v, false, &h->host);
        case 1:
                return get_int(p, v, 1, 65535, "a port number between 1 and 65535", &h->port);
        case 2:
                return get_double(p, v, false, &h->request_timeout_s);
        case 3:
                return get_double(p, v, true, &h->keep_alive_timeout_s);
        case 4: {
                int r = scalar_int64(v, &body);
                if (r == -ERANGE)
                        return fail(p, v, "too large: %s", DESCRIBE(v));
                if (r < 0 || body < 1)
                        return fail(p, v, "must be a positive number of bytes, got %s", DESCRIBE(v));
                h->max_request_body_bytes = (uint64_t) body;
                return 0;
        }
        case 5:
                return get_double(p, v, false, &h->header_timeout_s);
        case 6:
                return get_int(p, v, 1, INT_MAX, "a positive integer", &h->max_connections);
        }
        return 0;
}

/* ray_actor_options */

static const char *const actor_keys[] = { "num_cpus", "num_gpus", "memory", "resources" };

static int parse_resources(struct parser *p, const struct node *v, struct actor_options *a) {
        int r;

        if (is_null(v))
                return 0;
        r = expect_mapping(p, v);
        if (r >= 0)
                r = check_free_mapping(p, v);
        if (r < 0)
                return r;
        size_t n = v->n_items / 2;
        if (n == 0)
                return 0;
        a->resources = calloc(n, sizeof(*a->resources));
        if (!a->resources)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                const struct node *key = v->items[2 * i], *val = v->items[2 * i + 1];
                struct custom_resource *res = &a->resources[a->n_resources];

                size_t saved = path_push_key(p, key);
                if (key->len == 0)
                        r = fail(p, key, "resource names must not be empty");
                else if (scalar_is(key, "CPU") || scalar_is(key, "GPU") || scalar_is(key, "memory"))
                        r = fail(p, key, "set this with num_cpus, num_gpus or memory instead");
                else
                        r = get_double(p, val, true, &res->amount);
                path_pop(p, saved);
                if (r < 0)
                        return r;
                res->name = strdup(key->text);
                if (!res->name)
                        return -ENOMEM;
                a->n_resources++;
        }
        return 0;
}

static int actor_field(struct parser *p, unsigned idx, const struct node *v, void *userdata) {
        struct actor_options *a = userdata;
        double mem;
        int r;

        switch (idx) {
        case 0:
                return get_double(p, v, true, &a->num_cpus);
        case 1:
                return get_double(p, v, true, &a->num_gpus);
        case 2:
                r = get_double(p, v, true, &mem);
                if (r < 0)
                        return r;
                if (mem >= 18446744073709551616.0)
                        return fail(p, v, "too large: %s", DESCRIBE(v));
                a->memory = (uint64_t) mem;
                return 0;
        case 3:
                return parse_resources(p, v, a);
        }
        return 0;
}

/* autoscaling_config */

static const char *const autoscaling_keys[] = {
        "min_replicas", "max_replicas", "initial_replicas", "target_ongoing_requests",
        "metrics_interval_s", "look_back_period_s", "upscale_delay_s", "downscale_delay_s",
        "upscaling_factor", "downscaling_factor", "smoothing_factor",
};

struct autoscaling_state {
        struct autoscaling_config *a;
        const struct node *min, *max, *initial;
        bool upscaling_set, downscaling_set;
        double smoothing;
        bool smoothing_set;
};

static int autoscaling_field(struct parser *p, unsigned idx, const struct node *v, void *userdata) {
        struct autoscaling_state *s = userdata;
        struct autoscaling_config *a = s->a;

        switch (idx) {
        case 0:
                s->min = v;
                return get_int(p, v, 0, INT_MAX, "a non-negative integer", &a->min_replicas);
        case 1:
                s->max = v;
                return get_int(p, v, 1, INT_MAX, "a positive integer", &a->max_replicas);
        case 2:
                s->initial = v;
                return get_int(p, v, 0, INT_MAX, "a non-negative integer", &a->initial_replicas);
        case 3:
                return get_double(p, v, false, &a->target_ongoing_requests);
        case 4:
                return get_double(p, v, false, &a->metrics_interval_s);
        case 5:
                return get_double(p, v, false, &a->look_back_period_s);
        case 6:
                return get_double(p, v, true, &a->upscale_delay_s);
        case 7:
                return get_double(p, v, true, &a->downscale_delay_s);
        case 8:
                s->upscaling_set = true;
                return get_double(p, v, false, &a->upscaling_factor);
        case 9:
                s->downscaling_set = true;
                return get_double(p, v, false, &a->downscaling_factor);
        case 10:
                s->smoothing_set = true;
                return get_double(p, v, false, &s->smoothing);
        }
        return 0;
}

static int parse_autoscaling(struct parser *p, const struct node *v, struct autoscaling_config *a) {
        struct autoscaling_state s = { .a = a };
        int r;

        r = expect_mapping(p, v);
        if (r >= 0)
                r = parse_fields(p, v, autoscaling_keys, ELEMENTSOF(autoscaling_keys),
                                 autoscaling_field, &s);
        if (r < 0)
                return r;

        /* smoothing_factor is Ray's older name for both factors; the specific keys win. */
        if (s.smoothing_set) {
                if (!s.upscaling_set)
                        a->upscaling_factor = s.smoothing;
                if (!s.downscaling_set)
                        a->downscaling_factor = s.smoothing;
        }

        size_t saved;
        if (a->max_replicas < a->min_replicas) {
                if (s.max) {
                        saved = path_push(p, ".max_replicas");
                        r = fail(p, s.max, "must be at least min_replicas (%d), got %d",
                                 a->min_replicas, a->max_replicas);
                } else {
                        saved = path_push(p, ".min_replicas");
                        r = fail(p, s.min, "must not exceed max_replicas (%d, the default); "
                                 "set max_replicas too",
                                 a->max_replicas);
                }
                path_pop(p, saved);
                return r;
        }
        if (s.initial && (a->initial_replicas < a->min_replicas ||
                          a->initial_replicas > a->max_replicas)) {
                saved = path_push(p, ".initial_replicas");
                r = fail(p, s.initial, "must be between min_replicas (%d) and max_replicas (%d), got %d",
                         a->min_replicas, a->max_replicas, a->initial_replicas);
                path_pop(p, saved);
                return r;
        }
        return 0;
}

/* deployments[] */

static const char *const deployment_keys[] = {
        "name", "num_replicas", "max_ongoing_requests", "max_queued_requests", "user_config",
        "autoscaling_config", "health_check_period_s", "health_check_timeout_s",
        "graceful_shutdown_timeout_s", "graceful_shutdown_wait_loop_s", "max_replicas_per_node",
        "ray_actor_options",
};

struct deployment_state {
        struct deployment_config *d;
        const struct node *name, *num_replicas;
};

static int deployment_field(struct parser *p, unsigned idx, const struct node *v, void *userdata) {
        struct deployment_state *s = userdata;
        struct deployment_config *d = s->d;
        int r;

        switch (idx) {
        case 0:
                s->name = v;
                return get_name(p, v, &d->name);
        case 1:
                s->num_replicas = v;
                d->set |= DEPLOY_SET_NUM_REPLICAS;
                if (scalar_is(v, "auto")) {
                        d->num_replicas_auto = true;
                        return 0;
                }
                return get_int(p, v, 0, INT_MAX, "a non-negative integer or \"auto\"", &d->num_replicas);
        case 2:
                d->set |= DEPLOY_SET_MAX_ONGOING;
                return get_int(p, v, 1, INT_MAX, "a positive integer", &d->max_ongoing_requests);
        case 3:
                d->set |= DEPLOY_SET_MAX_QUEUED;
                return get_int(p, v, -1, INT_MAX, "-1 (no limit) or a non-negative integer",
                               &d->max_queued_requests);
        case 4:
                /* null is Ray's "no user_config", not a config that is null. */
                if (is_null(v))
                        return 0;
                d->set |= DEPLOY_SET_USER_CONFIG;
                return get_json(p, v, &d->user_config_json);
        case 5:
                if (is_null(v))
                        return 0;
                d->set |= DEPLOY_SET_AUTOSCALING;
                d->has_autoscaling = true;
                return parse_autoscaling(p, v, &d->autoscaling);
        case 6:
                d->set |= DEPLOY_SET_HEALTH_PERIOD;
                return get_double(p, v, false, &d->health_check_period_s);
        case 7:
                d->set |= DEPLOY_SET_HEALTH_TIMEOUT;
                return get_double(p, v, false, &d->health_check_timeout_s);
        case 8:
                d->set |= DEPLOY_SET_GRACEFUL_TIMEOUT;
                return get_double(p, v, true, &d->graceful_shutdown_timeout_s);
        case 9:
                d->set |= DEPLOY_SET_GRACEFUL_WAIT_LOOP;
                return get_double(p, v, false, &d->graceful_shutdown_wait_loop_s);
        case 10:
                d->set |= DEPLOY_SET_MAX_REPLICAS_PER_NODE;
                return get_int(p, v, 1, INT_MAX, "a positive integer", &d->max_replicas_per_node);
        case 11:
                if (is_null(v))
                        return 0;
                d->set |= DEPLOY_SET_ACTOR_OPTIONS;
                r = expect_mapping(p, v);
                if (r < 0)
                        return r;
                return parse_fields(p, v, actor_keys, ELEMENTSOF(actor_keys), actor_field, &d->actor);
        }
        return 0;
}

static int parse_deployment(struct parser *p, const struct node *v, struct app_config *app,
                            size_t i) {
        struct deployment_config *d = &app->deployments[i];
        struct deployment_state s = { .d = d };
        int r;

        deployment_config_defaults(d);
        d->line = v->line;
        d->column = v->column;
        r = expect_mapping(p, v);
        if (r >= 0)
                r = parse_fields(p, v, deployment_keys, ELEMENTSOF(deployment_keys),
                                 deployment_field, &s);
        if (r < 0)
                return r;

        size_t saved = 0;
        if (!d->name) {
                saved = path_push(p, ".name");
                r = fail(p, v, "required (the name the application's code gives this deployment)");
        } else if (d->has_autoscaling && (d->set & DEPLOY_SET_NUM_REPLICAS) && !d->num_replicas_auto) {
                saved = path_push(p, ".num_replicas");
                r = fail(p, s.num_replicas,
                         "must not be a number when autoscaling_config is set (use \"auto\" or remove one)");
        } else
                for (size_t k = 0; k < i; k++)
                        if (streq(app->deployments[k].name, d->name)) {
                                saved = path_push(p, ".name");
                                r = fail(p, s.name, "duplicate deployment name \"%s\" (also at line %d)",
                                         d->name, app->deployments[k].line);
                                break;
                        }
        if (r < 0)
                path_pop(p, saved);
        return r;
}

/* runtime_env */

static const char *const runtime_env_keys[] = { "working_dir", "env_vars" };

static int parse_env_vars(struct parser *p, const struct node *v, struct runtime_env *e) {
        int r;

        if (is_null(v))
                return 0;
        r = expect_mapping(p, v);
        if (r >= 0)
                r = check_free_mapping(p, v);
        if (r < 0)
                return r;
        size_t n = v->n_items / 2;
        if (n == 0)
                return 0;
        e->env_vars = calloc(n, sizeof(char *));
        if (!e->env_vars)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                const struct node *key = v->items[2 * i], *val = v->items[2 * i + 1];
                _cleanup_free_ char *value = NULL;

                size_t saved = path_push_key(p, key);
                if (key->len == 0 || memchr(key->text, '=', key->len))
                        r = fail(p, key, "variable names must be non-empty and contain no '='");
                else if (val->type == NODE_SCALAR && is_null(val))
                        r = fail(p, val, "must be a string, got %s (write \"\" for an empty value)",
                                 DESCRIBE(val));
                else
                        r = get_string(p, val, true, &value);
                path_pop(p, saved);
                if (r < 0)
                        return r;
                if (asprintf(&e->env_vars[e->n_env_vars], "%s=%s", key->text, value) < 0) {
                        e->env_vars[e->n_env_vars] = NULL;
                        return -ENOMEM;
                }
                e->n_env_vars++;
        }
        return 0;
}

static int runtime_env_field(struct parser *p, unsigned idx, const struct node *v, void *userdata) {
        struct runtime_env *e = userdata;

        if (idx == 0)
                return get_string(p, v, false, &e->working_dir);
        return parse_env_vars(p, v, e);
}

/* applications[] */

static const char *const app_keys[] = {
        "name", "route_prefix", "import_path", "args", "runtime_env", "deployments",
};

struct app_state {
        struct app_config *app;
        const struct node *name, *route_prefix, *import_path;
        bool route_set;
};

static int check_route_prefix(struct parser *p, const struct node *v, const char *s) {
        if (s[0] != '/')
                return fail(p, v, "must start with '/', got %s", DESCRIBE(v));
        if (s[1] && s[strlen(s) - 1] == '/')
                return fail(p, v, "must not end with '/' (except \"/\" itself), got %s", DESCRIBE(v));
        for (const char *c = s; *c; c++)
                if ((unsigned char) *c <= 0x20 || *c == 0x7f || strchr("{}?#", *c))
                        return fail(p, v, "must not contain spaces, control characters, "
                                    "'{', '}', '?' or '#', got %s",
                                    DESCRIBE(v));
        return 0;
}

static int parse_deployments(struct parser *p, const struct node *v, struct app_config *app) {
        int r;

        if (is_null(v))
                return 0;
        if (v->type != NODE_SEQUENCE)
                return fail(p, v, "must be a list of deployments, got %s", DESCRIBE(v));
        if (v->n_items > CONFIG_MAX_DEPLOYMENTS)
                return fail(p, v, "too many deployments (%zu, limit %d)", v->n_items,
                            CONFIG_MAX_DEPLOYMENTS);
        if (v->n_items == 0)
                return 0;
        app->deployments = calloc(v->n_items, sizeof(*app->deployments));
        if (!app->deployments)
                return -ENOMEM;
        /* Counted before parsing so config_free() sees every entry on failure. */
        app->n_deployments = v->n_items;
        for (size_t i = 0; i < v->n_items; i++) {
                size_t saved = path_push(p, "[%zu]", i);
                r = parse_deployment(p, v->items[i], app, i);
                path_pop(p, saved);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int app_field(struct parser *p, unsigned idx, const struct node *v, void *userdata) {
        struct app_state *s = userdata;
        struct app_config *app = s->app;
        int r;

        switch (idx) {
        case 0:
                s->name = v;
                return get_name(p, v, &app->name);
        case 1:
                s->route_set = true;
                s->route_prefix = v;
                if (is_null(v) || scalar_is(v, "None"))
                        return 0; /* no HTTP route: reachable through handles only */
                r = get_string(p, v, false, &app->route_prefix);
                if (r < 0)
                        return r;
                return check_route_prefix(p, v, app->route_prefix);
        case 2: {
                s->import_path = v;
                r = get_string(p, v, false, &app->import_path);
                if (r < 0)
                        return r;
                const char *colon = strrchr(app->import_path, ':');
                if (!colon || colon == app->import_path || !colon[1])
                        return fail(p, v, "must be \"MODULE:SYMBOL\" (e.g. libecho.so:app), got %s",
                                    DESCRIBE(v));
                return 0;
        }
        case 3:
                if (is_null(v))
                        return 0;
                if (v->type != NODE_MAPPING)
                        return fail(p, v, "must be a mapping, got %s", DESCRIBE(v));
                return get_json(p, v, &app->args_json);
        case 4:
                if (is_null(v))
                        return 0;
                r = expect_mapping(p, v);
                if (r < 0)
                        return r;
                return parse_fields(p, v, runtime_env_keys, ELEMENTSOF(runtime_env_keys),
                                    runtime_env_field, &app->runtime_env);
        case 5:
                return parse_deployments(p, v, app);
        }
        return 0;
}

static int parse_app(struct parser *p, const struct node *v, struct serve_config *c, size_t i) {
        struct app_config *app = &c->apps[i];
        struct app_state s = { .app = app };
        size_t saved = 0;
        int r;

        app->line = v->line;
        app->column = v->column;
        r = expect_mapping(p, v);
        if (r >= 0)
                r = parse_fields(p, v, app_keys, ELEMENTSOF(app_keys), app_field, &s);
        if (r < 0)
                return r;

        if (!app->import_path) {
                saved = path_push(p, ".import_path");
                r = fail(p, v, "required: \"MODULE:SYMBOL\" naming the application (e.g. libecho.so:app)");
                goto out;
        }
        if (!app->name) {
                if (c->n_apps > 1) {
                        saved = path_push(p, ".name");
                        r = fail(p, v, "required when there are several applications");
                        goto out;
                }
                app->name = strdup("default");
                if (!app->name)
                        return -ENOMEM;
        }
        if (!s.route_set) {
                app->route_prefix = strdup("/");
                if (!app->route_prefix)
                        return -ENOMEM;
        }
        if (!app->args_json) {
                app->args_json = strdup("{}");
                if (!app->args_json)
                        return -ENOMEM;
        }

        for (size_t k = 0; k < i; k++) {
                const struct app_config *o = &c->apps[k];
                if (streq(o->name, app->name)) {
                        saved = path_push(p, ".name");
                        r = fail(p, s.name, "duplicate application name \"%s\" (also at line %d)",
                                 app->name, o->line);
                        goto out;
                }
                if (app->route_prefix && streq_ptr(o->route_prefix, app->route_prefix)) {
                        saved = path_push(p, ".route_prefix");
                        r = fail(p, s.route_prefix ?: v,
                                 "duplicate route_prefix \"%s\"%s "
                                 "(also used by application \"%s\" at line %d)",
                                 app->route_prefix, s.route_prefix ? "" : " (the default)", o->name,
                                 o->line);
                        goto out;
                }
        }
        return 0;
out:
        path_pop(p, saved);
        return r;
}

static int parse_apps(struct parser *p, const struct node *v, struct serve_config *c) {
        int r;

        if (is_null(v))
                return 0;
        if (v->type != NODE_SEQUENCE)
                return fail(p, v, "must be a list of applications, got %s", DESCRIBE(v));
        if (v->n_items > CONFIG_MAX_APPS)
                return fail(p, v, "too many applications (%zu, limit %d)", v->n_items, CONFIG_MAX_APPS);
        if (v->n_items == 0)
                return 0;
        c->apps = calloc(v->n_items, sizeof(*c->apps));
        if (!c->apps)
                return -ENOMEM;
        c->n_apps = v->n_items;
        for (size_t i = 0; i < v->n_items; i++) {
                size_t saved = path_push(p, "[%zu]", i);
                r = parse_app(p, v->items[i], c, i);
                path_pop(p, saved);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* top level */

static const char *const top_keys[] = { "proxy_location", "http_options", "applications" };

static int top_field(struct parser *p, unsigned idx, const struct node *v, void *userdata) {
        struct serve_config *c = userdata;
        int r;

        switch (idx) {
        case 0:
                for (enum proxy_location l = PROXY_EVERY_NODE; l <= PROXY_DISABLED; l++)
                        if (scalar_is(v, proxy_location_to_string(l))) {
                                c->proxy_location = l;
                                return 0;
                        }
                return fail(p, v, "must be one of EveryNode, HeadOnly, Disabled, got %s", DESCRIBE(v));
        case 1:
                if (is_null(v))
                        return 0;
                r = expect_mapping(p, v);
                if (r < 0)
                        return r;
                return parse_fields(p, v, http_keys, ELEMENTSOF(http_keys), http_field, &c->http);
        case 2:
                return parse_apps(p, v, c);
        }
        return 0;
}

int config_parse(const char *name, const char *text, size_t len, struct serve_config **ret,
                 char **ret_error) {
        struct parser p = { .name = name ?: "<config>" };
        struct serve_config *c = NULL;
        struct node *root = NULL;
        int r;

        if (len > CONFIG_MAX_FILE_SIZE) {
                r = fail_at(&p, 1, 1, "too large (%zu bytes, limit %u MiB)", len,
                            CONFIG_MAX_FILE_SIZE >> 20);
                goto out;
        }

        c = calloc(1, sizeof(*c));
        if (!c) {
                r = -ENOMEM;
                goto out;
        }
        c->proxy_location = PROXY_EVERY_NODE;
        http_options_defaults(&c->http);
        c->path = strdup(p.name);
        if (!c->path || !c->http.host) {
                r = -ENOMEM;
                goto out;
        }

        r = load_tree(&p, text ?: "", text ? len : 0, &root);
        if (r < 0)
                goto out;
        /* An empty file (or one holding only comments, or "---") serves nothing. */
        if (!root || is_null(root))
                goto out;
        if (root->type != NODE_MAPPING) {
                r = fail(&p, root, "the top level must be a mapping (proxy_location, "
                                     "http_options, applications), got %s",
                         DESCRIBE(root));
                goto out;
        }
        r = parse_fields(&p, root, top_keys, ELEMENTSOF(top_keys), top_field, c);

out:
        node_free(root);
        if (r < 0) {
                config_free(c);
                if (ret_error)
                        *ret_error = TAKE_PTR(p.error);
                free(p.error);
                return r;
        }
        free(p.error);
        *ret = c;
        return 0;
}

int config_load_file(const char *path, struct serve_config **ret, char **ret_error) {
        _cleanup_close_ int fd = -1;
        _cleanup_free_ char *buf = NULL;
        size_t len = 0, cap = 0;
        int r;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0) {
                r = negative_errno();
                goto fail;
        }
        /* Read to EOF rather than trusting st_size: /dev/stdin and pipes work too. */
        for (;;) {
                if (len == cap) {
                        if (cap > CONFIG_MAX_FILE_SIZE) {
                                if (ret_error && asprintf(ret_error, "%s: too large (over %u MiB)", path,
                                                          CONFIG_MAX_FILE_SIZE >> 20) < 0)
                                        *ret_error = NULL;
                                return -EFBIG;
                        }
                        cap = cap ? cap * 2 : 16384;
                        cap = MIN(cap, (size_t) CONFIG_MAX_FILE_SIZE + 1);
                        char *b = realloc(buf, cap);
                        if (!b) {
                                r = -ENOMEM;
                                goto fail;
                        }
                        buf = b;
                }
                ssize_t k = read(fd, buf + len, cap - len);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        r = negative_errno();
                        goto fail;
                }
                if (k == 0)
                        break;
                len += (size_t) k;
        }
        return config_parse(path, buf, len, ret, ret_error);

fail:
        if (ret_error) {
                errno = -r;
                if (asprintf(ret_error, "%s: %m", path) < 0)
                        *ret_error = NULL;
        }
        return r;
}

static void app_config_done(struct app_config *a) {
        free(a->name);
        free(a->route_prefix);
        free(a->import_path);
        free(a->args_json);
        free(a->runtime_env.working_dir);
        for (size_t i = 0; i < a->runtime_env.n_env_vars; i++)
                free(a->runtime_env.env_vars[i]);
        free(a->runtime_env.env_vars);
        for (size_t i = 0; i < a->n_deployments; i++) {
                struct deployment_config *d = &a->deployments[i];
                free(d->name);
                free(d->user_config_json);
                for (size_t k = 0; k < d->actor.n_resources; k++)
                        free(d->actor.resources[k].name);
                free(d->actor.resources);
        }
        free(a->deployments);
}

void config_free(struct serve_config *c) {
        if (!c)
                return;
        for (size_t i = 0; i < c->n_apps; i++)
                app_config_done(&c->apps[i]);
        free(c->apps);
        free(c->http.host);
        free(c->path);
        free(c);
}
