/* The write_files of a #cloud-config user-data: parsed with yamltree (which keeps every node's
 * line and column), checked against cloud-init's schema for an entry, content decoded. Every
 * entry is checked before the caller writes anything, so a bad user-data writes no file. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/yamltree.h"
#include "writefiles.h"

void wf_list_done(struct wf_list *l) {
        if (!l)
                return;
        for (size_t i = 0; i < l->n; i++) {
                free(l->files[i].path);
                free(l->files[i].content);
        }
        free(l->files);
        *l = (struct wf_list) {};
}

static int b64_value(unsigned char c) {
        if (c >= 'A' && c <= 'Z')
                return c - 'A';
        if (c >= 'a' && c <= 'z')
                return c - 'a' + 26;
        if (c >= '0' && c <= '9')
                return c - '0' + 52;
        if (c == '+')
                return 62;
        if (c == '/')
                return 63;
        return -1;
}

int wf_base64_decode(const char *in, size_t len, char **ret, size_t *ret_len) {
        _cleanup_free_ char *out = malloc(len / 4 * 3 + 4);
        size_t n = 0, pad = 0;
        uint32_t acc = 0;
        unsigned bits = 0;

        if (!out)
                return -ENOMEM;
        for (size_t i = 0; i < len; i++) {
                unsigned char c = (unsigned char) in[i];
                if (c == ' ' || c == '\t' || c == '\n' || c == '\r')
                        continue;
                if (c == '=') {
                        pad++;
                        continue;
                }
                int v = b64_value(c);
                if (v < 0 || pad > 0) /* data after padding is no base64 either */
                        return -EINVAL;
                acc = acc << 6 | (uint32_t) v;
                bits += 6;
                if (bits >= 8) {
                        bits -= 8;
                        out[n++] = (char) (acc >> bits & 0xff);
                }
        }
        /* 6 leftover bits (one lone character) or more than two '=' cannot come from any input. */
        if (bits >= 6 || pad > 2)
                return -EINVAL;
        out[n] = 0;
        *ret = TAKE_PTR(out);
        *ret_len = n;
        return 0;
}

/* The keys cloud-init's schema allows in a write_files entry. */
enum { K_PATH, K_CONTENT, K_PERMISSIONS, K_ENCODING, K_OWNER, K_DEFER, K_APPEND, K_SOURCE, K_COUNT };
static const char *const entry_keys[K_COUNT] = {
        [K_PATH] = "path", [K_CONTENT] = "content", [K_PERMISSIONS] = "permissions",
        [K_ENCODING] = "encoding", [K_OWNER] = "owner", [K_DEFER] = "defer",
        [K_APPEND] = "append", [K_SOURCE] = "source",
};

struct parse_state {
        struct wf_list *list;
        size_t total; /* decoded content so far */
};

static int collect_field(struct yt_parser *p, unsigned idx, const struct yt_node *val, void *userdata) {
        (void) p;
        ((const struct yt_node **) userdata)[idx] = val;
        return 0;
}

/* The path as "/a/b/c": empty and "." components dropped, ".." refused. */
static int parse_path(struct yt_parser *p, const struct yt_node *v, char **ret) {
        if (v->type != YT_SCALAR || yt_is_null(v))
                return yt_fail(p, v, "must be a file's absolute path, got %s", YT_DESCRIBE(v));
        if (v->len > WF_MAX_PATH || strlen(v->text) != v->len)
                return yt_fail(p, v, "must be a path of at most %d bytes without NUL", WF_MAX_PATH);
        if (v->text[0] != '/')
                return yt_fail(p, v, "must be an absolute path, got %s", YT_DESCRIBE(v));

        _cleanup_free_ char *out = malloc(v->len + 1);
        size_t n = 0;
        if (!out)
                return -ENOMEM;
        for (const char *s = v->text; *s;) {
                while (*s == '/')
                        s++;
                size_t k = strcspn(s, "/");
                if (k == 0)
                        break;
                if (k == 2 && s[0] == '.' && s[1] == '.')
                        return yt_fail(p, v, "must not contain \"..\", got %s", YT_DESCRIBE(v));
                if (k > WF_MAX_COMPONENT)
                        return yt_fail(p, v, "has a name longer than %d bytes", WF_MAX_COMPONENT);
                if (!(k == 1 && s[0] == '.')) {
                        out[n++] = '/';
                        memcpy(out + n, s, k);
                        n += k;
                }
                s += k;
        }
        if (n == 0)
                return yt_fail(p, v, "names no file, got %s", YT_DESCRIBE(v));
        out[n] = 0;
        *ret = TAKE_PTR(out);
        return 0;
}

/* cloud-init takes an octal string ("0644", "644", "0o644"). */
static int parse_permissions(struct yt_parser *p, const struct yt_node *v, mode_t *ret) {
        const char *s = v->text;
        mode_t m = 0;
        size_t digits = 0;

        if (v->type != YT_SCALAR)
                return yt_fail(p, v, "must be an octal string such as \"0644\", got %s", YT_DESCRIBE(v));
        if (s[0] == '0' && (s[1] == 'o' || s[1] == 'O'))
                s += 2;
        for (; *s >= '0' && *s <= '7' && digits < 5; s++, digits++)
                m = m << 3 | (mode_t) (*s - '0');
        if (digits == 0 || digits > 4 || *s || (size_t) (s - v->text) != v->len)
                return yt_fail(p, v, "must be an octal string such as \"0644\", got %s", YT_DESCRIBE(v));
        if (m & ~(mode_t) 0777)
                return yt_fail(p, v, "setuid, setgid and sticky bits are not written, got %s", YT_DESCRIBE(v));
        *ret = m;
        return 0;
}

static int parse_bool(struct yt_parser *p, const struct yt_node *v, bool *ret) {
        int b = v->type == YT_SCALAR ? yt_scalar_bool(v) : -1;
        if (b < 0)
                return yt_fail(p, v, "must be true or false, got %s", YT_DESCRIBE(v));
        *ret = b;
        return 0;
}

/* Content is never quoted in a message: it may be a secret. */
static int parse_content(struct yt_parser *p, const struct yt_node *v, bool b64, struct wf_file *f) {
        if (yt_is_null(v)) {
                f->content = strdup("");
                return f->content ? 0 : -ENOMEM;
        }
        if (v->type != YT_SCALAR)
                return yt_fail(p, v, "must be a string, got %s", v->type == YT_SEQUENCE ? "a list" : "a mapping");
        if (b64) {
                int r = wf_base64_decode(v->text, v->len, &f->content, &f->len);
                if (r == -EINVAL)
                        return yt_fail(p, v, "is not valid base64 (encoding: b64)");
                return r;
        }
        f->content = malloc(v->len + 1);
        if (!f->content)
                return -ENOMEM;
        memcpy(f->content, v->text, v->len + 1);
        f->len = v->len;
        return 0;
}

static int parse_entry(struct yt_parser *p, const struct yt_node *item, size_t i, void *userdata) {
        struct parse_state *st = userdata;
        struct wf_file *f = &st->list->files[i];
        const struct yt_node *val[K_COUNT] = {};
        size_t saved;
        bool b64 = false, ignored;
        int r;

        f->line = item->line;
        f->mode = 0644;
        r = yt_expect_mapping(p, item);
        if (r >= 0)
                r = yt_parse_fields(p, item, entry_keys, K_COUNT, collect_field, val);
        if (r < 0)
                return r;
        if (!val[K_PATH])
                return yt_fail(p, item, "path is missing");
        if (val[K_SOURCE])
                return yt_fail(p, val[K_SOURCE], "source (content fetched from a URL) is not supported here: give content");

#define FIELD(k, expr)                                                  \
        if (val[k]) {                                                   \
                saved = yt_path_push(p, ".%s", entry_keys[k]);          \
                r = (expr);                                             \
                yt_path_pop(p, saved);                                  \
                if (r < 0)                                              \
                        return r;                                       \
        }
        FIELD(K_PATH, parse_path(p, val[K_PATH], &f->path));
        FIELD(K_PERMISSIONS, parse_permissions(p, val[K_PERMISSIONS], &f->mode));
        FIELD(K_APPEND, parse_bool(p, val[K_APPEND], &f->append));
        FIELD(K_DEFER, parse_bool(p, val[K_DEFER], &ignored));
        FIELD(K_OWNER, val[K_OWNER]->type == YT_SCALAR ? 0
                       : yt_fail(p, val[K_OWNER], "must be \"user:group\", got %s", YT_DESCRIBE(val[K_OWNER])));
        if (val[K_ENCODING]) {
                const struct yt_node *e = val[K_ENCODING];
                saved = yt_path_push(p, ".encoding");
                if (yt_scalar_is(e, "b64") || yt_scalar_is(e, "base64"))
                        b64 = true;
                else if (yt_scalar_is(e, "gz") || yt_scalar_is(e, "gzip") || yt_scalar_is(e, "gz+b64") ||
                         yt_scalar_is(e, "gz+base64") || yt_scalar_is(e, "gzip+b64") || yt_scalar_is(e, "gzip+base64"))
                        r = yt_fail(p, e, "gzip is not supported here: give the content as text or b64");
                else if (!yt_scalar_is(e, "text/plain"))
                        r = yt_fail(p, e, "must be text/plain, b64 or base64, got %s", YT_DESCRIBE(e));
                yt_path_pop(p, saved);
                if (r < 0)
                        return r;
        }
        if (val[K_CONTENT]) {
                FIELD(K_CONTENT, parse_content(p, val[K_CONTENT], b64, f));
        } else if (!(f->content = strdup("")))
                return -ENOMEM;
#undef FIELD
        if (f->len > WF_MAX_CONTENT - st->total)
                return yt_fail(p, val[K_CONTENT], "the files' content is over %u bytes in all", WF_MAX_CONTENT);
        st->total += f->len;
        return 0;
}

static bool first_line_is_cloud_config(const char *text, size_t len) {
        static const char tag[] = "#cloud-config";
        size_t k = sizeof tag - 1;

        if (len < k || memcmp(text, tag, k) != 0)
                return false;
        /* Trailing blanks are tolerated, as cloud-init does. */
        while (k < len && (text[k] == ' ' || text[k] == '\t' || text[k] == '\r'))
                k++;
        return k == len || text[k] == '\n';
}

int wf_parse(const char *name, const char *text, size_t len, struct wf_list *ret, char **ret_error) {
        struct yt_parser p = { .name = name };
        struct yt_node *root = NULL;
        struct wf_list list = {};
        struct parse_state st = { .list = &list };
        const struct yt_node *files = NULL;
        int r;

        if (!first_line_is_cloud_config(text, len)) {
                r = yt_fail_at(&p, 1, 1, "the first line must be \"#cloud-config\"");
                goto out;
        }
        r = yt_load_tree(&p, text, len, &root);
        if (r < 0)
                goto out;
        if (root && root->type != YT_MAPPING) {
                r = yt_fail(&p, root, "a #cloud-config must be a mapping, got %s", YT_DESCRIBE(root));
                goto out;
        }
        for (size_t i = 0; root && i + 1 < root->n_items; i += 2) {
                if (!yt_scalar_is(root->items[i], "write_files"))
                        continue;
                if (files) {
                        r = yt_fail(&p, root->items[i], "write_files: duplicate key (first set at line %d)",
                                    files->line);
                        goto out;
                }
                files = root->items[i + 1];
        }
        if (files) {
                size_t saved = yt_path_push(&p, "write_files");
                r = yt_parse_list(&p, files, "files", WF_MAX_FILES, sizeof(struct wf_file), (void **) &list.files,
                                  &list.n, parse_entry, &st);
                yt_path_pop(&p, saved);
        }
out:
        yt_node_free(root);
        if (r < 0) {
                wf_list_done(&list);
                if (r == -EINVAL && ret_error)
                        *ret_error = TAKE_PTR(p.error);
                free(p.error);
                return r;
        }
        free(p.error);
        *ret = list;
        return 0;
}
