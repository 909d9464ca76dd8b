/* YAML tree and schema getters shared by the config parsers. Two passes: libyaml's event
 * stream is built into a small tree of our own (so every node keeps its line:column, aliases
 * are refused before they can multiply the document, and depth and node count are bounded
 * before anything recurses), then each parser walks the tree against its schema with a dotted
 * field path kept alongside for error messages. The first error stops the parse: an operator
 * fixes one thing at a time, and a reload keeps the old config until the file is valid. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <yaml.h>

#include "common/yamltree.h"
#include "macros.h"

void yt_node_free(struct yt_node *n) {
        if (!n)
                return;
        for (size_t i = 0; i < n->n_items; i++)
                yt_node_free(n->items[i]);
        free(n->items);
        free(n->text);
        free(n);
}

/* ---- messages -------------------------------------------------------------------------------- */

_printf_(4, 0) static int vfail_at(struct yt_parser *p, int line, int column, const char *fmt,
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
_printf_(4, 5) int yt_fail_at(struct yt_parser *p, int line, int column, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        int r = vfail_at(p, line, column, fmt, ap);
        va_end(ap);
        return r;
}

_printf_(3, 4) int yt_fail(struct yt_parser *p, const struct yt_node *at, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        int r = vfail_at(p, at->line, at->column, fmt, ap);
        va_end(ap);
        return r;
}

/* Copies up to `max` bytes of s into buf (which has room for max*4+8), escaping quotes,
 * backslashes and control characters so a message stays one readable line. */
char *yt_escape(const char *s, size_t len, size_t max, char *buf) {
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


/* What a node is, for "got ..." in messages: a quoted scalar, or the kind of collection. */
const char *yt_describe(const struct yt_node *n, char buf[static YT_DESCRIBE_BUF]) {
        if (n->type == YT_SEQUENCE)
                return "a list";
        if (n->type == YT_MAPPING)
                return "a mapping";
        if (n->plain && n->len == 0)
                return "an empty value";
        buf[0] = '"';
        yt_escape(n->text, n->len, YT_DESCRIBE_MAX, buf + 1);
        strcat(buf, "\"");
        return buf;
}


/* Appends ".key" (or "key" at the top) or "[i]" to the field path; returns the length to pass
 * to yt_path_pop(). A path too long for the buffer is cut, which only shortens messages. */
_printf_(2, 3) size_t yt_path_push(struct yt_parser *p, const char *fmt, ...) {
        size_t saved = p->path_len;
        va_list ap;

        va_start(ap, fmt);
        int k = vsnprintf(p->path + p->path_len, sizeof(p->path) - p->path_len, fmt, ap);
        va_end(ap);
        if (k > 0)
                p->path_len = MIN(p->path_len + (size_t) k, sizeof(p->path) - 1);
        return saved;
}

size_t yt_path_push_key(struct yt_parser *p, const struct yt_node *key) {
        char buf[64 * 4 + 8];
        yt_escape(key->text, key->len, 64, buf);
        return yt_path_push(p, "%s%s", p->path_len > 0 ? "." : "", buf);
}

void yt_path_pop(struct yt_parser *p, size_t saved) {
        p->path_len = saved;
        p->path[saved] = 0;
}

/* ---- YAML -> tree ---------------------------------------------------------------------------- */

static int yaml_fail(struct yt_parser *p, const yaml_parser_t *yp, const char *text, size_t len) {
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
                return yt_fail_at(p, line, column, "invalid YAML: %s", problem);
        }

        int line = (int) yp->problem_mark.line + 1, column = (int) yp->problem_mark.column + 1;
        if (yp->context)
                return yt_fail_at(p, line, column, "invalid YAML: %s (%s at line %d, column %d)",
                                  problem, yp->context, (int) yp->context_mark.line + 1,
                                  (int) yp->context_mark.column + 1);
        return yt_fail_at(p, line, column, "invalid YAML: %s", problem);
}

static int check_tag(struct yt_parser *p, const yaml_char_t *tag, const yaml_mark_t *m) {
        if (!tag || strcmp((const char *) tag, "!") == 0 ||
            strncmp((const char *) tag, "tag:yaml.org,2002:", 18) == 0)
                return 0;
        char buf[64 * 4 + 8];
        const char *t = (const char *) tag;
        return yt_fail_at(p, (int) m->line + 1, (int) m->column + 1,
                          "unsupported YAML tag \"%s\"", yt_escape(t, strlen(t), 64, buf));
}

static int node_new(struct yt_parser *p, enum yt_type type, const yaml_mark_t *m,
                    struct yt_node **ret) {
        if (++p->n_nodes > YT_MAX_NODES)
                return yt_fail_at(p, (int) m->line + 1, (int) m->column + 1,
                                  "too many YAML nodes (limit %u)", YT_MAX_NODES);
        struct yt_node *n = calloc(1, sizeof(*n));
        if (!n)
                return -ENOMEM;
        n->type = type;
        n->line = (int) m->line + 1;
        n->column = (int) m->column + 1;
        *ret = n;
        return 0;
}

static int node_append(struct yt_node *parent, struct yt_node *child) {
        if (parent->n_items == parent->cap) {
                size_t cap = parent->cap ? parent->cap * 2 : 4;
                struct yt_node **items = reallocarray(parent->items, cap, sizeof(*items));
                if (!items)
                        return -ENOMEM;
                parent->items = items;
                parent->cap = cap;
        }
        parent->items[parent->n_items++] = child;
        return 0;
}

/* Builds the tree of the (single) document; *ret is NULL for an empty stream. */
int yt_load_tree(struct yt_parser *p, const char *text, size_t len, struct yt_node **ret) {
        struct yt_node *stack[YT_MAX_TREE_DEPTH];
        struct yt_node *root = NULL;
        size_t depth = 0;
        unsigned documents = 0;
        yaml_parser_t yp;
        int r = 0;

        if (!yaml_parser_initialize(&yp))
                return -ENOMEM;
        yaml_parser_set_input_string(&yp, (const unsigned char *) text, len);

        for (bool done = false; !done && r >= 0;) {
                yaml_event_t ev;
                struct yt_node *n = NULL;

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
                                r = yt_fail_at(p, (int) m->line + 1, (int) m->column + 1,
                                               "a second YAML document; the file must hold one");
                        break;
                case YAML_ALIAS_EVENT:
                        r = yt_fail_at(p, (int) m->line + 1, (int) m->column + 1,
                                       "YAML aliases (*%s) are not supported; write the value out",
                                       (const char *) ev.data.alias.anchor);
                        break;
                case YAML_SCALAR_EVENT:
                        r = check_tag(p, ev.data.scalar.tag, m);
                        if (r >= 0)
                                r = node_new(p, YT_SCALAR, m, &n);
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
                        if (r >= 0 && depth == YT_MAX_TREE_DEPTH)
                                r = yt_fail_at(p, (int) m->line + 1, (int) m->column + 1,
                                               "nested deeper than %d levels", YT_MAX_TREE_DEPTH);
                        if (r >= 0)
                                r = node_new(p, ev.type == YAML_SEQUENCE_START_EVENT ?
                                                        YT_SEQUENCE : YT_MAPPING, m, &n);
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
                                yt_node_free(n);
                        else if (n->type != YT_SCALAR)
                                stack[depth++] = n;
                }
                yaml_event_delete(&ev);
        }
        yaml_parser_delete(&yp);

        if (r < 0) {
                yt_node_free(root);
                return r;
        }
        *ret = root;
        return 0;
}

/* ---- scalars --------------------------------------------------------------------------------- */

bool yt_scalar_is(const struct yt_node *n, const char *s) {
        return n->type == YT_SCALAR && n->len == strlen(s) && memcmp(n->text, s, n->len) == 0;
}

/* YAML core schema null: empty, ~, null, Null, NULL (plain scalars only). */
bool yt_is_null(const struct yt_node *n) {
        return n->type == YT_SCALAR && n->plain &&
               (n->len == 0 || yt_scalar_is(n, "~") || yt_scalar_is(n, "null") ||
                yt_scalar_is(n, "Null") || yt_scalar_is(n, "NULL"));
}

int yt_scalar_bool(const struct yt_node *n) {
        if (!n->plain)
                return -1;
        if (yt_scalar_is(n, "true") || yt_scalar_is(n, "True") || yt_scalar_is(n, "TRUE"))
                return 1;
        if (yt_scalar_is(n, "false") || yt_scalar_is(n, "False") || yt_scalar_is(n, "FALSE"))
                return 0;
        return -1;
}


/* YAML core schema numbers: [-+]digits, 0x.., 0o.., and decimal floats with optional exponent.
 * ".inf" and ".nan" are left as strings: JSON cannot carry them. */
enum yt_number_kind yt_number_kind(const char *s, size_t len) {
        size_t i = 0, digits = 0;

        if (len > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'o')) {
                for (i = 2; i < len; i++)
                        if (s[1] == 'x' ? !strchr("0123456789abcdefABCDEF", s[i]) || !s[i] :
                                          s[i] < '0' || s[i] > '7')
                                return YT_NUMBER_NONE;
                return YT_NUMBER_INT;
        }
        if (i < len && (s[i] == '-' || s[i] == '+'))
                i++;
        for (; i < len && s[i] >= '0' && s[i] <= '9'; i++)
                digits++;
        if (i == len)
                return digits > 0 ? YT_NUMBER_INT : YT_NUMBER_NONE;
        if (s[i] == '.')
                for (i++; i < len && s[i] >= '0' && s[i] <= '9'; i++)
                        digits++;
        if (digits == 0)
                return YT_NUMBER_NONE;
        if (i < len && (s[i] == 'e' || s[i] == 'E')) {
                size_t exp = 0;
                i++;
                if (i < len && (s[i] == '-' || s[i] == '+'))
                        i++;
                for (; i < len && s[i] >= '0' && s[i] <= '9'; i++)
                        exp++;
                if (exp == 0)
                        return YT_NUMBER_NONE;
        }
        return i == len ? YT_NUMBER_FLOAT : YT_NUMBER_NONE;
}

/* Returns 0 and *ret, -ERANGE when it does not fit, -EINVAL when it is no integer. */
int yt_scalar_int64(const struct yt_node *n, long long *ret) {
        if (n->type != YT_SCALAR || yt_number_kind(n->text, n->len) != YT_NUMBER_INT)
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
int yt_scalar_double(const struct yt_node *n, double *ret) {
        if (n->type != YT_SCALAR)
                return -EINVAL;
        enum yt_number_kind k = yt_number_kind(n->text, n->len);
        if (k == YT_NUMBER_NONE)
                return -EINVAL;
        if (k == YT_NUMBER_INT && n->len > 2 && n->text[0] == '0' &&
            (n->text[1] == 'x' || n->text[1] == 'o')) {
                long long v;
                int r = yt_scalar_int64(n, &v);
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
int yt_get_int(struct yt_parser *p, const struct yt_node *n, long long min, long long max,
               const char *what, int *ret) {
        long long v;
        int r = yt_scalar_int64(n, &v);
        if (r == -EINVAL || (r >= 0 && v < min))
                return yt_fail(p, n, "must be %s, got %s", what, YT_DESCRIBE(n));
        if (r == -ERANGE || v > max) {
                if (max < INT_MAX) /* `what` already names the range */
                        return yt_fail(p, n, "must be %s, got %s", what, YT_DESCRIBE(n));
                return yt_fail(p, n, "must be %s no larger than %lld, got %s", what, max,
                               YT_DESCRIBE(n));
        }
        *ret = (int) v;
        return 0;
}

int yt_get_double(struct yt_parser *p, const struct yt_node *n, bool zero_ok, double *ret) {
        double v;
        int r = yt_scalar_double(n, &v);
        if (r == -ERANGE)
                return yt_fail(p, n, "number out of range: %s", YT_DESCRIBE(n));
        if (r < 0 || v < 0 || (!zero_ok && v == 0))
                return yt_fail(p, n, "must be a %s number, got %s",
                               zero_ok ? "non-negative" : "positive",
                               YT_DESCRIBE(n));
        *ret = v;
        return 0;
}

/* Any scalar but null, as a string of its own (no NULs). */
int yt_get_string(struct yt_parser *p, const struct yt_node *n, bool empty_ok, char **ret) {
        if (n->type != YT_SCALAR || yt_is_null(n)) {
                if (n->type == YT_SCALAR && n->len == 0)
                        return yt_fail(p, n, "must be a string, got an empty value");
                return yt_fail(p, n, "must be a string, got %s", YT_DESCRIBE(n));
        }
        if (strlen(n->text) != n->len)
                return yt_fail(p, n, "must not contain NUL characters");
        if (!empty_ok && n->len == 0)
                return yt_fail(p, n, "must not be empty");
        char *s = strdup(n->text);
        if (!s)
                return -ENOMEM;
        free(*ret);
        *ret = s;
        return 0;
}

/* Application and deployment names. */
int yt_get_name(struct yt_parser *p, const struct yt_node *n, char **ret) {
        _cleanup_free_ char *s = NULL;
        int r = yt_get_string(p, n, false, &s);
        if (r < 0)
                return r;
        if (n->len > YT_MAX_NAME)
                return yt_fail(p, n, "too long (%zu bytes, limit %d)", n->len, YT_MAX_NAME);
        for (const char *c = s; *c; c++)
                if ((unsigned char) *c < 0x20 || *c == 0x7f || *c == '/')
                        return yt_fail(p, n, "must not contain '/' or control characters, got %s",
                                       YT_DESCRIBE(n));
        free(*ret);
        *ret = TAKE_PTR(s);
        return 0;
}

/* ---- mappings -------------------------------------------------------------------------------- */

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

int yt_fail_unknown_key(struct yt_parser *p, const struct yt_node *key, const char *const keys[],
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
        return yt_fail(p, key, "unknown key%s; allowed here: %s", hint, allowed);
}

/* Walks a schema mapping: every key must be one of `keys` (at most 64), once. Calls fn with the
 * key's index and value, the key appended to the field path. */
int yt_parse_fields(struct yt_parser *p, const struct yt_node *map, const char *const keys[],
                    size_t n_keys, yt_field_fn fn, void *userdata) {
        const struct yt_node *first[64] = {};

        for (size_t i = 0; i + 1 < map->n_items; i += 2) {
                const struct yt_node *key = map->items[i], *val = map->items[i + 1];
                unsigned idx;
                int r;

                if (key->type != YT_SCALAR)
                        return yt_fail(p, key, "keys must be strings, got %s", YT_DESCRIBE(key));
                for (idx = 0; idx < n_keys; idx++)
                        if (yt_scalar_is(key, keys[idx]))
                                break;

                size_t saved = yt_path_push_key(p, key);
                if (idx == n_keys)
                        r = yt_fail_unknown_key(p, key, keys, n_keys);
                else if (first[idx])
                        r = yt_fail(p, key, "duplicate key (first set at line %d, column %d)",
                                    first[idx]->line, first[idx]->column);
                else {
                        first[idx] = key;
                        r = fn(p, idx, val, userdata);
                }
                yt_path_pop(p, saved);
                if (r < 0)
                        return r;
        }
        return 0;
}

struct key_ref {
        const struct yt_node *key;
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
int yt_check_free_mapping(struct yt_parser *p, const struct yt_node *map) {
        size_t n = map->n_items / 2;

        for (size_t i = 0; i < n; i++) {
                const struct yt_node *key = map->items[2 * i];
                if (key->type != YT_SCALAR)
                        return yt_fail(p, key, "keys must be strings, got %s", YT_DESCRIBE(key));
                if (strlen(key->text) != key->len)
                        return yt_fail(p, key, "keys must not contain NUL characters");
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
        size_t saved = yt_path_push_key(p, dup->key);
        int r = yt_fail(p, dup->key, "duplicate key (first set at line %d, column %d)",
                        orig->key->line, orig->key->column);
        yt_path_pop(p, saved);
        return r;
}

int yt_expect_mapping(struct yt_parser *p, const struct yt_node *n) {
        if (n->type != YT_MAPPING)
                return yt_fail(p, n, "must be a mapping, got %s", YT_DESCRIBE(n));
        return 0;
}

/* ---- free-form values as JSON ---------------------------------------------------------------- */

static int scalar_to_json(struct yt_parser *p, const struct yt_node *n, cJSON **ret) {
        cJSON *j = NULL;

        if (strlen(n->text) != n->len)
                return yt_fail(p, n, "strings with NUL characters are not supported");
        if (!n->plain)
                j = cJSON_CreateString(n->text);
        else if (yt_is_null(n))
                j = cJSON_CreateNull();
        else if (yt_scalar_bool(n) >= 0)
                j = cJSON_CreateBool(yt_scalar_bool(n));
        else if (yt_number_kind(n->text, n->len) == YT_NUMBER_NONE)
                j = cJSON_CreateString(n->text);
        else {
                long long v;
                double d;
                if (yt_scalar_int64(n, &v) >= 0 && (v > (1LL << 53) || v < -(1LL << 53))) {
                        /* A double would round it; keep the digits. */
                        char buf[32];
                        snprintf(buf, sizeof(buf), "%lld", v);
                        j = cJSON_CreateRaw(buf);
                } else if (yt_scalar_double(n, &d) >= 0)
                        j = cJSON_CreateNumber(d);
                else
                        return yt_fail(p, n, "number out of range: %s", YT_DESCRIBE(n));
        }
        if (!j)
                return -ENOMEM;
        *ret = j;
        return 0;
}

static int node_to_json(struct yt_parser *p, const struct yt_node *n, unsigned depth, cJSON **ret) {
        cJSON *j = NULL;
        int r = 0;

        if (n->type == YT_SCALAR)
                return scalar_to_json(p, n, ret);
        if (depth >= YT_MAX_VALUE_DEPTH)
                return yt_fail(p, n, "nested deeper than %d levels", YT_MAX_VALUE_DEPTH);

        if (n->type == YT_SEQUENCE) {
                j = cJSON_CreateArray();
                if (!j)
                        return -ENOMEM;
                for (size_t i = 0; i < n->n_items && r >= 0; i++) {
                        cJSON *item = NULL;
                        size_t saved = yt_path_push(p, "[%zu]", i);
                        r = node_to_json(p, n->items[i], depth + 1, &item);
                        yt_path_pop(p, saved);
                        if (r >= 0 && !cJSON_AddItemToArray(j, item)) {
                                cJSON_Delete(item);
                                r = -ENOMEM;
                        }
                }
        } else {
                r = yt_check_free_mapping(p, n);
                if (r < 0)
                        return r;
                j = cJSON_CreateObject();
                if (!j)
                        return -ENOMEM;
                for (size_t i = 0; i + 1 < n->n_items && r >= 0; i += 2) {
                        cJSON *item = NULL;
                        size_t saved = yt_path_push_key(p, n->items[i]);
                        r = node_to_json(p, n->items[i + 1], depth + 1, &item);
                        yt_path_pop(p, saved);
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

int yt_text_to_json(const char *name, const char *text, size_t len, struct cJSON **ret, char **ret_error) {
        struct yt_parser p = { .name = name };
        struct yt_node *root = NULL;
        cJSON *j = NULL;
        int r;

        r = yt_load_tree(&p, text, len, &root);
        if (r >= 0 && !root)
                j = cJSON_CreateNull();
        else if (r >= 0)
                r = node_to_json(&p, root, 0, &j);
        yt_node_free(root);
        if (r >= 0 && !j)
                r = -ENOMEM;
        if (r < 0) {
                if (ret_error)
                        *ret_error = TAKE_PTR(p.error);
                free(p.error);
                return r;
        }
        free(p.error);
        *ret = j;
        return 0;
}

/* Any YAML value as compact JSON text in a malloc'd string. */
int yt_get_json(struct yt_parser *p, const struct yt_node *n, char **ret) {
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


/* ---- files ----------------------------------------------------------------------------------- */

int yt_read_file(const char *path, size_t max_size, char **ret_text, size_t *ret_len,
                 char **ret_error) {
        _cleanup_close_ int fd = -1;
        _cleanup_free_ char *buf = NULL;
        size_t len = 0, cap = 0;
        int r;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0) {
                r = negative_errno();
                goto fail;
        }
        /* Read to EOF rather than trusting st_size: /dev/stdin and pipes work too. One byte
         * more than allowed is read to tell "exactly the limit" from "too large". */
        for (;;) {
                if (len > max_size) {
                        if (ret_error && asprintf(ret_error, "%s: too large (over %zu MiB)", path,
                                                  max_size >> 20) < 0)
                                *ret_error = NULL;
                        return -EFBIG;
                }
                if (cap - len < 2) { /* room for one byte and the NUL */
                        cap = cap ? cap * 2 : 16384;
                        cap = MIN(cap, max_size + 2);
                        char *b = realloc(buf, cap);
                        if (!b) {
                                r = -ENOMEM;
                                goto fail;
                        }
                        buf = b;
                }
                ssize_t k = read(fd, buf + len, cap - len - 1);
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
        if (!buf) {
                buf = malloc(1);
                if (!buf) {
                        r = -ENOMEM;
                        goto fail;
                }
        }
        buf[len] = 0;
        *ret_text = TAKE_PTR(buf);
        *ret_len = len;
        return 0;

fail:
        if (ret_error) {
                errno = -r;
                if (asprintf(ret_error, "%s: %m", path) < 0)
                        *ret_error = NULL;
        }
        return r;
}

int yt_parse_list(struct yt_parser *p, const struct yt_node *v, const char *what, size_t max, size_t elem_size,
                  void **ret_items, size_t *ret_n,
                  int (*parse)(struct yt_parser *p, const struct yt_node *item, size_t i, void *userdata), void *userdata) {
        if (yt_is_null(v))
                return 0;
        if (v->type != YT_SEQUENCE)
                return yt_fail(p, v, "must be a list of %s, got %s", what, YT_DESCRIBE(v));
        if (v->n_items > max)
                return yt_fail(p, v, "too many %s (%zu, limit %zu)", what, v->n_items, max);
        if (v->n_items == 0)
                return 0;
        *ret_items = calloc(v->n_items, elem_size);
        if (!*ret_items)
                return -ENOMEM;
        *ret_n = v->n_items;
        for (size_t i = 0; i < v->n_items; i++) {
                size_t saved = yt_path_push(p, "[%zu]", i);
                int r = parse(p, v->items[i], i, userdata);
                yt_path_pop(p, saved);
                if (r < 0)
                        return r;
        }
        return 0;
}

int yt_parse_map(struct yt_parser *p, const struct yt_node *v, const char *noun, const char *what, size_t max,
                 size_t elem_size, void **ret_items, size_t *ret_n,
                 int (*parse)(struct yt_parser *p, const struct yt_node *key, const struct yt_node *val, void *item,
                              void *userdata),
                 void *userdata) {
        int r;

        if (yt_is_null(v))
                return 0;
        r = yt_expect_mapping(p, v);
        if (r >= 0)
                r = yt_check_free_mapping(p, v);
        if (r < 0)
                return r;
        size_t n = v->n_items / 2;
        if (n > max)
                return yt_fail(p, v, "too many %s (%zu, limit %zu)", what, n, max);
        if (n == 0)
                return 0;
        *ret_items = calloc(n, elem_size);
        if (!*ret_items)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                const struct yt_node *key = v->items[2 * i], *val = v->items[2 * i + 1];
                bool control = false;

                for (const char *c = key->text; *c; c++)
                        control |= (unsigned char)*c < 0x20 || *c == 0x7f;
                *ret_n = i + 1;
                size_t saved = yt_path_push_key(p, key);
                if (key->len == 0 || key->len > YT_MAX_NAME || control)
                        r = yt_fail(p, key, "%s names must be 1 to %d characters without control characters", noun,
                                    YT_MAX_NAME);
                else
                        r = parse(p, key, val, (char *)*ret_items + i * elem_size, userdata);
                yt_path_pop(p, saved);
                if (r < 0)
                        return r;
        }
        return 0;
}
