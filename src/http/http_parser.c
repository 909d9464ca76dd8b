/* Strict, resumable HTTP/1.1 request parser (see http_parser.h).
 *
 * The head is handled in two passes. The first is a byte scan that may stop at any byte and resume
 * at prev_len: each byte is judged only by itself and the few bytes before it (control bytes, bare
 * CR, bare LF, the request-line and head limits), and the request line is parsed as soon as its
 * CRLF arrives, so a bad method or version is answered before the client sends the rest. Because
 * every decision depends only on bytes already seen, a prefix of a valid request always answers
 * "again" and a prefix that fails fails the same way the whole buffer does. The second pass runs
 * once, when the empty line arrives: it splits header lines and applies the framing rules that
 * guard against request smuggling.
 *
 * Choices the header leaves open:
 *   - absolute-form ("http://host/path") and authority-form targets are rejected with -400: the
 *     proxy routes on the path and must not have two sources of truth for the host;
 *   - Transfer-Encoding in an HTTP/1.0 request is rejected with -400 (RFC 9112 6.1 calls its
 *     framing faulty);
 *   - head_len counts the final CRLF and must be <= max_head;
 *   - a method of more than HTTP_MAX_METHOD token characters is answered 501 (RFC 9112 3: longer
 *     than any method we implement) when its HTTP_MAX_METHOD + 1st byte arrives, so a client
 *     cannot make us buffer a long method; methods are not listed: the application decides;
 *   - lim == NULL means the defaults below. */

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>

#include "http_parser.h"
#include "macros.h"

#define DEFAULT_MAX_REQUEST_LINE 8192
#define DEFAULT_MAX_HEAD 65536

/* Size lines (with extensions) and each trailer line; the trailer section as a whole. */
#define CHUNK_MAX_LINE 4096
#define CHUNK_MAX_TRAILER 8192

enum {
        C_TOKEN = 1 << 0,  /* tchar (RFC 9110 5.6.2) */
        C_TARGET = 1 << 1, /* allowed in an origin-form target: visible ASCII except '#' */
        C_CTL = 1 << 2,    /* never allowed in a head: controls other than HTAB/CR/LF, and DEL */
        C_HEX = 1 << 3,
};

/* Ranges are disjoint: -Woverride-init (in -Wextra) forbids overlapping designators. */
#define T (C_TOKEN | C_TARGET)
static const unsigned char char_class[256] = {
        [0x00 ... 0x08] = C_CTL,
        [0x0b ... 0x0c] = C_CTL,
        [0x0e ... 0x1f] = C_CTL,
        ['!'] = T,
        ['"'] = C_TARGET,
        ['#'] = C_TOKEN,
        ['$' ... '\''] = T,
        ['(' ... ')'] = C_TARGET,
        ['*' ... '+'] = T,
        [','] = C_TARGET,
        ['-' ... '.'] = T,
        ['/'] = C_TARGET,
        ['0' ... '9'] = T | C_HEX,
        [':' ... '@'] = C_TARGET,
        ['A' ... 'F'] = T | C_HEX,
        ['G' ... 'Z'] = T,
        ['[' ... ']'] = C_TARGET,
        ['^' ... '`'] = T,
        ['a' ... 'f'] = T | C_HEX,
        ['g' ... 'z'] = T,
        ['{'] = C_TARGET,
        ['|'] = T,
        ['}'] = C_TARGET,
        ['~'] = T,
        [0x7f] = C_CTL,
};
#undef T

static inline bool is_class(char c, unsigned cls) {
        return char_class[(unsigned char) c] & cls;
}

static inline bool is_ows(char c) {
        return c == ' ' || c == '\t';
}

static bool mem_caseeq(const char *a, size_t a_len, const char *b) {
        size_t b_len = strlen(b);
        return a_len == b_len && strncasecmp(a, b, a_len) == 0;
}

/* Parses "METHOD SP target SP HTTP/x.y" (no CRLF); n is bounded by max_request_line.
 * Returns 0, -400 or -505. */
static int parse_request_line(const char *p, size_t n, struct http_request *r) {
        size_t i = 0;

        while (i < n && is_class(p[i], C_TOKEN))
                i++;
        if (i > HTTP_MAX_METHOD)
                return -501;
        if (i == 0 || i >= n || p[i] != ' ')
                return -400;
        r->method = p;
        r->method_len = i;

        size_t t = ++i;
        while (i < n && p[i] != ' ') {
                if (!is_class(p[i], C_TARGET))
                        return -400;
                i++;
        }
        if (i == t || i >= n)
                return -400;
        r->target = p + t;
        r->target_len = i - t;

        if (r->target[0] == '/') {
                const char *q = memchr(r->target, '?', r->target_len);
                r->path = r->target;
                if (q) {
                        r->path_len = q - r->target;
                        r->query = q + 1;
                        r->query_len = r->target_len - r->path_len - 1;
                } else {
                        r->path_len = r->target_len;
                        r->query = NULL;
                        r->query_len = 0;
                }
        } else if (r->target_len == 1 && r->target[0] == '*' && r->method_len == 7 &&
                   memcmp(r->method, "OPTIONS", 7) == 0) {
                r->path = r->target;
                r->path_len = 1;
                r->query = NULL;
                r->query_len = 0;
        } else
                return -400;

        const char *v = p + i + 1;
        if (n - i - 1 != 8 || memcmp(v, "HTTP/", 5) != 0 || v[5] < '0' || v[5] > '9' || v[6] != '.' ||
            v[7] < '0' || v[7] > '9')
                return -400;
        if (v[5] != '1' || (v[7] != '0' && v[7] != '1'))
                return -505;
        r->minor_version = v[7] - '0';
        return 0;
}

/* Content-Length is 1*DIGIT with no sign, list or overflow. Returns 0 or -400. */
static int parse_content_length(const char *p, size_t n, uint64_t *ret) {
        uint64_t v = 0;

        if (n == 0)
                return -400;
        for (size_t i = 0; i < n; i++) {
                if (p[i] < '0' || p[i] > '9')
                        return -400;
                unsigned d = p[i] - '0';
                if (v > (UINT64_MAX - d) / 10)
                        return -400;
                v = v * 10 + d;
        }
        *ret = v;
        return 0;
}

/* Applies a Connection header's comma-separated options; "close" wins over "keep-alive". */
static void apply_connection(const char *p, size_t n, bool *saw_close, bool *saw_keep_alive) {
        size_t i = 0;

        while (i < n) {
                size_t s, e;

                while (i < n && (is_ows(p[i]) || p[i] == ','))
                        i++;
                s = i;
                while (i < n && p[i] != ',')
                        i++;
                e = i;
                while (e > s && is_ows(p[e - 1]))
                        e--;
                if (mem_caseeq(p + s, e - s, "close"))
                        *saw_close = true;
                else if (mem_caseeq(p + s, e - s, "keep-alive"))
                        *saw_keep_alive = true;
        }
}

/* Second pass over a complete head buf[0..head_len) whose bytes the scan already vetted: every CR
 * is followed by LF, every LF follows a CR, no control bytes but HTAB. Returns 0 or -4xx/-5xx. */
static int parse_head(const char *buf, size_t head_len, size_t max_headers, struct http_request *r) {
        const char *end = buf + head_len - 2; /* the empty line's CRLF */
        const char *p, *cr;
        bool have_cl = false, have_te = false, have_host = false;
        bool saw_close = false, saw_keep_alive = false;
        const char *te = NULL;
        size_t te_len = 0;
        int k;

        cr = memchr(buf, '\r', head_len);
        k = parse_request_line(buf, cr - buf, r);
        if (k < 0)
                return k;

        for (p = cr + 2; p < end; p = cr + 2) {
                const char *name = p, *v, *ve;

                cr = memchr(p, '\r', end - p);
                if (is_ows(*p)) /* obs-fold: a continuation line */
                        return -400;
                while (p < cr && is_class(*p, C_TOKEN))
                        p++;
                if (p == name || p == cr || *p != ':')
                        return -400;
                if (r->n_headers >= max_headers)
                        return -431;

                v = p + 1;
                while (v < cr && is_ows(*v))
                        v++;
                ve = cr;
                while (ve > v && is_ows(ve[-1]))
                        ve--;

                struct http_header *h = &r->headers[r->n_headers++];
                *h = (struct http_header) {
                        .name = name,
                        .name_len = p - name,
                        .value = v,
                        .value_len = ve - v,
                };

                if (mem_caseeq(h->name, h->name_len, "content-length")) {
                        if (have_cl)
                                return -400;
                        have_cl = true;
                        k = parse_content_length(h->value, h->value_len, &r->content_length);
                        if (k < 0)
                                return k;
                } else if (mem_caseeq(h->name, h->name_len, "transfer-encoding")) {
                        if (have_te)
                                return -400;
                        have_te = true;
                        te = h->value;
                        te_len = h->value_len;
                } else if (mem_caseeq(h->name, h->name_len, "host")) {
                        if (have_host)
                                return -400;
                        have_host = true;
                } else if (mem_caseeq(h->name, h->name_len, "connection"))
                        apply_connection(h->value, h->value_len, &saw_close, &saw_keep_alive);
                else if (mem_caseeq(h->name, h->name_len, "expect"))
                        r->expect_continue = mem_caseeq(h->value, h->value_len, "100-continue");
        }

        if (have_te) {
                /* Either framing could be the one a front-end used: refuse to pick. */
                if (have_cl || r->minor_version == 0)
                        return -400;
                if (!mem_caseeq(te, te_len, "chunked"))
                        return -501;
                r->body_kind = HTTP_BODY_CHUNKED;
        } else if (have_cl)
                r->body_kind = HTTP_BODY_LENGTH;
        else
                r->body_kind = HTTP_BODY_NONE;

        if (r->minor_version == 1 && !have_host)
                return -400;

        if (r->minor_version == 1)
                r->keep_alive = !saw_close;
        else {
                r->keep_alive = saw_keep_alive && !saw_close;
                r->expect_continue = false; /* RFC 9110 10.1.1: ignored from HTTP/1.0 clients */
        }
        r->head_len = head_len;
        return 0;
}

/* buf holds at least HTTP_MAX_METHOD + 1 bytes of a request line: are they all method? */
static bool method_too_long(const char *buf) {
        for (size_t i = 0; i <= HTTP_MAX_METHOD; i++)
                if (!is_class(buf[i], C_TOKEN))
                        return false;
        return true;
}

int http_parse_request(const char *buf, size_t len, size_t prev_len, const struct http_limits *lim,
                       struct http_request *ret) {
        size_t max_line = lim ? lim->max_request_line : DEFAULT_MAX_REQUEST_LINE;
        size_t max_head = MIN(lim ? lim->max_head : DEFAULT_MAX_HEAD, (size_t) INT_MAX);
        size_t max_headers = MIN(lim ? lim->max_headers : HTTP_MAX_HEADERS, (size_t) HTTP_MAX_HEADERS);
        size_t i, stop;
        bool in_request_line;

        /* Bytes before prev_len were vetted by the previous call; the checks below look back at
         * most three bytes, which are still in the buffer. */
        i = prev_len <= len ? prev_len : 0;
        in_request_line = i == 0 || !memchr(buf, '\n', i);
        stop = MIN(len, max_head);

        for (; i < stop; i++) {
                char c = buf[i];

                if (i > 0 && buf[i - 1] == '\r' && c != '\n')
                        return -400; /* bare CR */
                if (c == '\n') {
                        if (i == 0 || buf[i - 1] != '\r')
                                return -400; /* bare LF */
                        if (in_request_line) {
                                struct http_request r;
                                int k = parse_request_line(buf, i - 1, &r);
                                if (k < 0)
                                        return k;
                                in_request_line = false;
                        } else if (buf[i - 2] == '\n') {
                                struct http_request r = {};
                                int k = parse_head(buf, i + 1, max_headers, &r);
                                if (k < 0)
                                        return k;
                                *ret = r;
                                return (int) r.head_len;
                        }
                        continue;
                }
                if (is_class(c, C_CTL))
                        return -400;
                if (in_request_line && i == HTTP_MAX_METHOD && method_too_long(buf))
                        return -501;
                if (in_request_line && i >= max_line && c != '\r')
                        return -414;
        }

        return len > max_head ? -431 : 0;
}

/* A segment that is only '.' and "%2e" (any case): returns how many dots it decodes to, or 0
 * when it is anything else (an empty segment included). */
static size_t dot_segment(const char *s, size_t n) {
        size_t dots = 0;

        for (size_t i = 0; i < n; dots++) {
                if (s[i] == '.')
                        i++;
                else if (n - i >= 3 && s[i] == '%' && s[i + 1] == '2' && (s[i + 2] | 0x20) == 'e')
                        i += 3;
                else
                        return 0;
        }
        return dots;
}

ssize_t http_path_normalize(const char *path, size_t len, char *out) {
        size_t o = 0, i = 0;

        if (len == 0)
                return -EINVAL;
        if (path[0] != '/') {
                memmove(out, path, len);
                return (ssize_t) len;
        }

        /* out[0..o) is "/seg/seg..." (no trailing '/'), and never reaches the read position i:
         * each segment written was read at or after the same offset, so memmove in place works. */
        while (i < len) {
                size_t s = ++i; /* past the '/' */
                while (i < len && path[i] != '/')
                        i++;
                size_t n = i - s;

                switch (n == 0 ? 1 : dot_segment(path + s, n)) {
                case 1: /* "", "." */
                        break;
                case 2: /* ".." */
                        if (o == 0)
                                return -EINVAL;
                        while (out[--o] != '/')
                                ;
                        break;
                default: /* a name, or three dots or more */
                        out[o++] = '/';
                        memmove(out + o, path + s, n);
                        o += n;
                        continue;
                }
                /* A final ".", ".." or empty segment names a directory: keep its '/'. */
                if (i >= len)
                        out[o++] = '/';
        }
        if (o == 0)
                out[o++] = '/';
        return (ssize_t) o;
}

const struct http_header *http_request_header(const struct http_request *req, const char *name) {
        for (size_t i = 0; i < req->n_headers; i++)
                if (mem_caseeq(req->headers[i].name, req->headers[i].name_len, name))
                        return &req->headers[i];
        return NULL;
}

enum {
        CH_SIZE,          /* chunk-size hex digits */
        CH_SIZE_WS,       /* BWS between size and ';' */
        CH_EXT,           /* chunk extensions up to CR */
        CH_SIZE_LF,
        CH_DATA,
        CH_DATA_CR,
        CH_DATA_LF,
        CH_TRAILER,       /* start of a trailer line, or the final CRLF */
        CH_TRAILER_NAME,
        CH_TRAILER_VALUE,
        CH_TRAILER_LF,
        CH_FINAL_LF,
        CH_DONE,
};

/* Ends the size line: checks the size against max_body before any data is accepted. */
static int chunk_size_done(struct http_chunked *st, uint64_t max_body) {
        if (st->chunk_left > max_body || st->total > max_body - st->chunk_left)
                return -413;
        return 0;
}

ssize_t http_chunked_decode(struct http_chunked *st, const char *in, size_t in_len, char *out,
                            uint64_t max_body, size_t *ret_out_len, bool *ret_done) {
        size_t i = 0, o = 0;
        int k;

        while (i < in_len && st->state != CH_DONE) {
                char c = in[i];

                if (st->state == CH_DATA) {
                        size_t n = MIN((uint64_t) (in_len - i), st->chunk_left);
                        /* o <= i always, so in-place decoding only moves bytes backwards. */
                        memmove(out + o, in + i, n);
                        o += n;
                        i += n;
                        st->chunk_left -= n;
                        st->total += n;
                        if (st->chunk_left == 0)
                                st->state = CH_DATA_CR;
                        continue;
                }
                i++;

                /* During trailers chunk_left is free: it counts the trailer section's bytes. */
                if (st->state >= CH_TRAILER && ++st->chunk_left > CHUNK_MAX_TRAILER)
                        return -400;
                if (st->state <= CH_EXT || (st->state >= CH_TRAILER && st->state <= CH_TRAILER_VALUE))
                        if (++st->line_len > CHUNK_MAX_LINE)
                                return -400;

                switch (st->state) {
                case CH_SIZE:
                        if (is_class(c, C_HEX)) {
                                if (st->digits >= 16)
                                        return -400;
                                st->digits++;
                                st->chunk_left = st->chunk_left << 4 |
                                                 (c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
                                break;
                        }
                        if (st->digits == 0)
                                return -400;
                        k = chunk_size_done(st, max_body);
                        if (k < 0)
                                return k;
                        if (c == '\r')
                                st->state = CH_SIZE_LF;
                        else if (c == ';')
                                st->state = CH_EXT;
                        else if (is_ows(c))
                                st->state = CH_SIZE_WS;
                        else
                                return -400;
                        break;
                case CH_SIZE_WS:
                        if (c == ';')
                                st->state = CH_EXT;
                        else if (!is_ows(c))
                                return -400;
                        break;
                case CH_EXT:
                        if (c == '\r')
                                st->state = CH_SIZE_LF;
                        else if (c == '\n' || is_class(c, C_CTL))
                                return -400;
                        break;
                case CH_SIZE_LF:
                        if (c != '\n')
                                return -400;
                        st->line_len = 0;
                        st->digits = 0;
                        st->state = st->chunk_left > 0 ? CH_DATA : CH_TRAILER;
                        break;
                case CH_DATA_CR:
                        if (c != '\r')
                                return -400;
                        st->state = CH_DATA_LF;
                        break;
                case CH_DATA_LF:
                        if (c != '\n')
                                return -400;
                        st->state = CH_SIZE;
                        break;
                case CH_TRAILER:
                        if (c == '\r')
                                st->state = CH_FINAL_LF;
                        else if (is_class(c, C_TOKEN))
                                st->state = CH_TRAILER_NAME;
                        else
                                return -400; /* obs-fold, empty name, junk */
                        break;
                case CH_TRAILER_NAME:
                        if (c == ':')
                                st->state = CH_TRAILER_VALUE;
                        else if (!is_class(c, C_TOKEN))
                                return -400;
                        break;
                case CH_TRAILER_VALUE:
                        if (c == '\r')
                                st->state = CH_TRAILER_LF;
                        else if (c == '\n' || is_class(c, C_CTL))
                                return -400;
                        break;
                case CH_TRAILER_LF:
                        if (c != '\n')
                                return -400;
                        st->line_len = 0;
                        st->state = CH_TRAILER;
                        break;
                case CH_FINAL_LF:
                        if (c != '\n')
                                return -400;
                        st->chunk_left = 0;
                        st->state = CH_DONE;
                        break;
                default:
                        return -400; /* corrupted state */
                }
        }

        if (ret_out_len)
                *ret_out_len = o;
        if (ret_done)
                *ret_done = st->state == CH_DONE;
        return (ssize_t) i;
}

const char *http_status_reason(int status) {
        switch (status) {
        case 100: return "Continue";
        case 101: return "Switching Protocols";
        case 200: return "OK";
        case 201: return "Created";
        case 202: return "Accepted";
        case 204: return "No Content";
        case 206: return "Partial Content";
        case 301: return "Moved Permanently";
        case 302: return "Found";
        case 303: return "See Other";
        case 304: return "Not Modified";
        case 307: return "Temporary Redirect";
        case 308: return "Permanent Redirect";
        case 400: return "Bad Request";
        case 401: return "Unauthorized";
        case 403: return "Forbidden";
        case 404: return "Not Found";
        case 405: return "Method Not Allowed";
        case 406: return "Not Acceptable";
        case 408: return "Request Timeout";
        case 409: return "Conflict";
        case 410: return "Gone";
        case 411: return "Length Required";
        case 412: return "Precondition Failed";
        case 413: return "Content Too Large";
        case 414: return "URI Too Long";
        case 415: return "Unsupported Media Type";
        case 416: return "Range Not Satisfiable";
        case 417: return "Expectation Failed";
        case 422: return "Unprocessable Content";
        case 426: return "Upgrade Required";
        case 429: return "Too Many Requests";
        case 431: return "Request Header Fields Too Large";
        case 500: return "Internal Server Error";
        case 501: return "Not Implemented";
        case 502: return "Bad Gateway";
        case 503: return "Service Unavailable";
        case 504: return "Gateway Timeout";
        case 505: return "HTTP Version Not Supported";
        default: return "Unknown";
        }
}
