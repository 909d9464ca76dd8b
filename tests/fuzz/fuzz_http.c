/* libFuzzer target for the HTTP parser. The input is a request as it arrives on a socket.
 *
 * Head: parsed whole, after a prefix at several split points (resuming with prev_len), and, for
 * small inputs, one byte at a time; every way must give the same answer, and a complete head must
 * satisfy the invariants a caller relies on. Body: when the head says chunked, the bytes after it
 * (otherwise the whole input) go through http_chunked_decode whole, byte by byte, split, and in
 * place; all must decode the same bytes. Paths: every parsed path, and the raw input taken as a
 * path, go through http_path_normalize, copied and in place; the result must be a clean path no
 * longer than its input, a fixed point of the function, and the same both ways. Any disagreement
 * abort()s. */

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http/http_parser.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const struct http_limits lim = {
        .max_request_line = 512,
        .max_head = 2048,
        .max_headers = 16,
};

#define MAX_BODY 1000

#define check(cond)              \
        do {                     \
                if (!(cond))     \
                        abort(); \
        } while (0)

static bool is_tchar(char c) {
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
               (c && strchr("!#$%&'*+-.^_`|~", c));
}

static bool same_request(const struct http_request *a, const struct http_request *b) {
        if (a->method != b->method || a->method_len != b->method_len || a->target != b->target ||
            a->target_len != b->target_len || a->path != b->path || a->path_len != b->path_len ||
            a->query != b->query || a->query_len != b->query_len ||
            a->minor_version != b->minor_version || a->n_headers != b->n_headers ||
            a->body_kind != b->body_kind || a->keep_alive != b->keep_alive ||
            a->expect_continue != b->expect_continue || a->head_len != b->head_len)
                return false;
        if (a->body_kind == HTTP_BODY_LENGTH && a->content_length != b->content_length)
                return false;
        for (size_t i = 0; i < a->n_headers; i++)
                if (a->headers[i].name != b->headers[i].name ||
                    a->headers[i].name_len != b->headers[i].name_len ||
                    a->headers[i].value != b->headers[i].value ||
                    a->headers[i].value_len != b->headers[i].value_len)
                        return false;
        return true;
}

static bool inside(const char *buf, size_t len, const char *p, size_t n) {
        return p >= buf && n <= len && (size_t) (p - buf) <= len - n;
}

/* What a caller relies on once a head is complete. */
static void check_complete(const char *buf, size_t size, int r, const struct http_request *req) {
        size_t h = (size_t) r;

        check(h <= size && h <= lim.max_head && h == req->head_len && h >= 4);
        check(memcmp(buf + h - 4, "\r\n\r\n", 4) == 0);
        check(memmem(buf, h - 2, "\r\n\r\n", 4) == NULL); /* the first empty line ends the head */
        check(memchr(buf, '\0', h) == NULL);
        check(req->minor_version == 0 || req->minor_version == 1);

        check(req->method == buf && req->method_len > 0 && req->method[req->method_len] == ' ');
        check(req->method_len <= HTTP_MAX_METHOD);
        for (size_t i = 0; i < req->method_len; i++)
                check(is_tchar(req->method[i]));
        check(inside(buf, h, req->target, req->target_len) && req->target_len > 0);
        check(req->target == req->method + req->method_len + 1);
        check((size_t) (req->target + req->target_len - buf) < lim.max_request_line + 1);
        check(req->target[0] == '/' || (req->target_len == 1 && req->target[0] == '*'));
        check(req->path == req->target && req->path_len <= req->target_len);
        check(!memchr(req->path, '?', req->path_len));
        if (req->query) {
                check(req->query == req->path + req->path_len + 1 && req->query[-1] == '?');
                check(req->path_len + 1 + req->query_len == req->target_len);
        } else
                check(req->path_len == req->target_len);
        for (size_t i = 0; i < req->target_len; i++)
                check(req->target[i] > ' ' && req->target[i] < 0x7f && req->target[i] != '#');

        check(req->n_headers <= lim.max_headers);
        bool cl = false, te = false, host = false;
        for (size_t i = 0; i < req->n_headers; i++) {
                const struct http_header *hd = &req->headers[i];
                check(inside(buf, h, hd->name, hd->name_len) && hd->name_len > 0);
                check(hd->name[-2] == '\r' && hd->name[-1] == '\n'); /* a line start: no fold */
                check(inside(buf, h, hd->value, hd->value_len));
                for (size_t j = 0; j < hd->name_len; j++)
                        check(is_tchar(hd->name[j]));
                check(hd->name[hd->name_len] == ':');
                for (size_t j = 0; j < hd->value_len; j++) {
                        unsigned char c = hd->value[j];
                        check(c == '\t' || (c >= ' ' && c != 0x7f));
                }
                if (hd->value_len > 0) {
                        check(hd->value[0] != ' ' && hd->value[0] != '\t');
                        check(hd->value[hd->value_len - 1] != ' ' && hd->value[hd->value_len - 1] != '\t');
                }
                if (hd->name_len == 14 && strncasecmp(hd->name, "content-length", 14) == 0) {
                        check(!cl);
                        cl = true;
                } else if (hd->name_len == 17 && strncasecmp(hd->name, "transfer-encoding", 17) == 0) {
                        check(!te);
                        te = true;
                        check(hd->value_len == 7 && strncasecmp(hd->value, "chunked", 7) == 0);
                } else if (hd->name_len == 4 && strncasecmp(hd->name, "host", 4) == 0) {
                        check(!host);
                        host = true;
                }
        }
        check(http_request_header(req, "x-never-sent-\x01") == NULL);
        check(!(cl && te));
        check(host || req->minor_version == 0);
        check(req->body_kind == (te ? HTTP_BODY_CHUNKED : cl ? HTTP_BODY_LENGTH : HTTP_BODY_NONE));
        if (req->minor_version == 0)
                check(!te && !req->expect_continue);
}

static int check_head(const char *buf, size_t size, struct http_request *ret) {
        struct http_request whole, part;
        int r = http_parse_request(buf, size, 0, &lim, &whole);

        if (r > 0)
                check_complete(buf, size, r, &whole);
        else if (r == 0) {
                /* "Again" only while no empty line arrived and the limits still allow one. */
                check(size <= lim.max_head);
                check(memmem(buf, size, "\r\n\r\n", 4) == NULL);
                check(memchr(buf, '\0', size) == NULL);
        } else
                check(r == -400 || r == -414 || r == -431 || r == -501 || r == -505);

        /* Split: first call on a prefix, then on everything with prev_len = the prefix. */
        size_t splits[] = { 1, 2, 3, 4, size / 2, size / 3, size - 1, size - 2, size - 3,
                            (size * 7) / 8, size ? buf[0] % size : 0 };
        for (size_t s = 0; s < sizeof(splits) / sizeof(splits[0]); s++) {
                size_t k = splits[s];
                if (k > size)
                        continue;
                int r1 = http_parse_request(buf, k, 0, &lim, &part);
                if (r1 == 0)
                        r1 = http_parse_request(buf, size, k, &lim, &part);
                check(r1 == r);
                if (r > 0)
                        check(same_request(&whole, &part));
        }

        if (size <= 1024) {
                int rb = 0;
                for (size_t n = 1; n <= size && rb == 0; n++)
                        rb = http_parse_request(buf, n, n - 1, &lim, &part);
                check(rb == r);
                if (r > 0)
                        check(same_request(&whole, &part));
        }

        if (r > 0)
                *ret = whole;
        return r;
}

struct decoded {
        ssize_t r; /* error, or bytes consumed */
        size_t out_len;
        bool done;
};

/* Decodes in calls of at most step input bytes, as reads from a socket would arrive. */
static struct decoded decode_pieces(const char *in, size_t len, char *out, size_t step) {
        struct http_chunked st = {};
        struct decoded d = {};
        size_t i = 0;

        while (i < len && !d.done) {
                size_t n = len - i < step ? len - i : step, o;
                bool done;
                ssize_t k = http_chunked_decode(&st, in + i, n, out + d.out_len, MAX_BODY, &o, &done);
                if (k < 0) {
                        d.r = k;
                        return d;
                }
                check((size_t) k <= n && o <= (size_t) k);
                check(done || (size_t) k == n); /* only the end of the body stops it short */
                i += k;
                d.out_len += o;
                d.done = done;
                check(st.total == d.out_len && st.total <= MAX_BODY);
        }
        d.r = i;
        return d;
}

static void check_chunked(const char *in, size_t len) {
        char *a = malloc(len + 1), *b = malloc(len + 1), *c = malloc(len + 1), *inplace = malloc(len + 1);
        check(a && b && c && inplace);

        struct decoded whole = decode_pieces(in, len, a, len ? len : 1);
        struct decoded bytes = decode_pieces(in, len, b, 1);
        struct decoded split = decode_pieces(in, len, c, len / 3 + 1);
        memcpy(inplace, in, len);
        struct decoded inpl = decode_pieces(inplace, len, inplace, len ? len : 1);

        check(whole.r == -400 || whole.r == -413 || whole.r >= 0);
        const struct decoded *all[] = { &bytes, &split, &inpl };
        for (size_t i = 0; i < 3; i++) {
                check(all[i]->r == whole.r);
                if (whole.r >= 0)
                        check(all[i]->out_len == whole.out_len && all[i]->done == whole.done);
        }
        if (whole.r >= 0) {
                check(whole.out_len <= (size_t) whole.r);
                check(memcmp(a, b, whole.out_len) == 0);
                check(memcmp(a, c, whole.out_len) == 0);
                check(memcmp(a, inplace, whole.out_len) == 0);
                if (whole.done)
                        check(whole.r >= 5 && memcmp(in + whole.r - 2, "\r\n", 2) == 0);
                else
                        check((size_t) whole.r == len);
        }

        free(a);
        free(b);
        free(c);
        free(inplace);
}

/* A segment that is only '.' and "%2e": the normaliser must have removed it. */
static bool dots_only(const char *s, size_t n) {
        size_t i = 0;
        while (i < n) {
                if (s[i] == '.')
                        i++;
                else if (n - i >= 3 && s[i] == '%' && s[i + 1] == '2' && (s[i + 2] == 'e' || s[i + 2] == 'E'))
                        i += 3;
                else
                        return false;
        }
        return n > 0;
}

static void check_normalize(const char *path, size_t len) {
        char *out = malloc(len + 1), *again = malloc(len + 1), *inplace = malloc(len + 1);
        check(out && again && inplace);

        ssize_t n = http_path_normalize(path, len, out);
        memcpy(inplace, path, len);
        check(http_path_normalize(inplace, len, inplace) == n);
        if (n == -EINVAL) {
                check(len == 0 || path[0] == '/');
                goto done;
        }
        check(n >= 1 && (size_t) n <= len);
        check(memcmp(inplace, out, n) == 0);
        if (path[0] != '/') {
                check((size_t) n == len && memcmp(out, path, len) == 0);
                goto done;
        }
        check(out[0] == '/');
        check(!memmem(out, n, "//", 2));
        /* No segment is ".", "..", "%2e" or the like, except the three-dot-or-more kind. */
        for (size_t i = 0; i < (size_t) n;) {
                size_t s = ++i;
                while (i < (size_t) n && out[i] != '/')
                        i++;
                if (dots_only(out + s, i - s)) {
                        size_t dots = 0;
                        for (size_t j = s; j < i; j++)
                                dots += out[j] == '.' || out[j] == '%';
                        check(dots >= 3);
                }
        }
        /* Normalising a normal path changes nothing. */
        check(http_path_normalize(out, n, again) == n && memcmp(again, out, n) == 0);
done:
        free(out);
        free(again);
        free(inplace);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        const char *buf = (const char *) data;
        struct http_request req;
        int r = check_head(buf, size, &req);

        if (r > 0)
                check_normalize(req.path, req.path_len);
        check_normalize(buf, size);

        if (r > 0 && req.body_kind == HTTP_BODY_CHUNKED)
                check_chunked(buf + r, size - r);
        else
                check_chunked(buf, size);

        (void) http_status_reason(r < 0 ? -r : 200);
        return 0;
}
