#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>

#include "client.h"
#include "macros.h"
#include "util.h"

static bool is_digit(char c) { return c >= '0' && c <= '9'; }

static bool is_host_char(char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '.' || c == '-' ||
               c == '_';
}

static bool is_v6_char(char c) {
        /* hex digits, colons, dots (embedded IPv4) and a %zone made of interface-name characters */
        return is_host_char(c) || c == ':' || c == '%';
}

int http_url_parse(const char *url, struct http_url *ret) {
        struct http_url u = {};
        const char *p, *host, *host_end;
        bool v6 = false;
        unsigned long port = 80;

        if (!url || strncasecmp(url, "http://", 7) != 0)
                return -EINVAL;
        p = url + 7;
        if (*p == '[') {
                host = ++p;
                while (*p && *p != ']') {
                        if (!is_v6_char(*p))
                                return -EINVAL;
                        p++;
                }
                if (*p != ']' || !memchr(host, ':', (size_t)(p - host)))
                        return -EINVAL;
                host_end = p++;
                v6 = true;
        } else {
                host = p;
                while (is_host_char(*p))
                        p++;
                host_end = p;
        }
        if (host_end == host || (size_t)(host_end - host) >= sizeof(u.host))
                return -EINVAL;
        if (*p == ':') {
                const char *digits = ++p;
                port = 0;
                while (is_digit(*p) && p - digits < 5)
                        port = port * 10 + (unsigned long)(*p++ - '0');
                if (p == digits || is_digit(*p) || port < 1 || port > 65535)
                        return -EINVAL;
        }
        /* Only an empty path: the API paths are appended to the address. */
        if (*p == '/')
                p++;
        if (*p)
                return -EINVAL;

        memcpy(u.host, host, (size_t)(host_end - host));
        snprintf(u.port, sizeof(u.port), "%lu", port);
        snprintf(u.authority, sizeof(u.authority), v6 ? "[%s]:%s" : "%s:%s", u.host, u.port);
        *ret = u;
        return 0;
}

void http_response_done(struct http_response *r) {
        if (!r)
                return;
        free(r->body);
        r->body = NULL;
        r->body_len = 0;
}

/* RFC 9110 tchar */
static bool is_tchar(char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || strchr("!#$%&'*+-.^_`|~", c);
}

struct response_head {
        int status;
        size_t len; /* status line + headers + the empty line */
        bool chunked, has_length;
        uint64_t length;
};

/* Parses the status line and headers that end at buf[end] (the final CRLFCRLF). Returns 0 or
 * -EBADMSG. */
static int parse_head(const char *buf, size_t end, struct response_head *h) {
        const char *p = buf, *stop = buf + end + 2; /* up to and including the last header's CRLF */
        bool seen_te = false;

        /* "HTTP/1.x NNN[ reason]" */
        if (end < 12 || memcmp(p, "HTTP/1.", 7) != 0 || !is_digit(p[7]) || p[8] != ' ' || !is_digit(p[9]) ||
            !is_digit(p[10]) || !is_digit(p[11]) || (p[12] != ' ' && p[12] != '\r'))
                return -EBADMSG;
        h->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
        if (h->status < 100)
                return -EBADMSG;
        p = memmem(p, (size_t)(stop - p), "\r\n", 2);
        if (!p)
                return -EBADMSG;
        for (size_t i = 0; buf + i < p; i++)
                if ((unsigned char)buf[i] < 0x20 && buf[i] != '\t')
                        return -EBADMSG;
        p += 2;

        while (p < stop) {
                const char *eol = memmem(p, (size_t)(stop - p), "\r\n", 2), *colon, *v, *ve;
                if (!eol)
                        return -EBADMSG;
                if (*p == ' ' || *p == '\t') /* obsolete line folding */
                        return -EBADMSG;
                colon = memchr(p, ':', (size_t)(eol - p));
                if (!colon || colon == p)
                        return -EBADMSG;
                for (const char *c = p; c < colon; c++)
                        if (!is_tchar(*c))
                                return -EBADMSG;
                for (v = colon + 1; v < eol && (*v == ' ' || *v == '\t'); v++)
                        ;
                for (ve = eol; ve > v && (ve[-1] == ' ' || ve[-1] == '\t'); ve--)
                        ;
                for (const char *c = v; c < ve; c++)
                        if (((unsigned char)*c < 0x20 && *c != '\t') || *c == 0x7f)
                                return -EBADMSG;

                size_t nlen = (size_t)(colon - p), vlen = (size_t)(ve - v);
                if (nlen == 14 && strncasecmp(p, "Content-Length", 14) == 0) {
                        uint64_t n = 0;
                        if (vlen == 0 || vlen > 18)
                                return -EBADMSG;
                        for (size_t i = 0; i < vlen; i++) {
                                if (!is_digit(v[i]))
                                        return -EBADMSG;
                                n = n * 10 + (uint64_t)(v[i] - '0');
                        }
                        if (h->has_length && h->length != n)
                                return -EBADMSG;
                        h->has_length = true;
                        h->length = n;
                } else if (nlen == 17 && strncasecmp(p, "Transfer-Encoding", 17) == 0) {
                        /* We ask for no codings, so only plain "chunked" can be right. */
                        if (seen_te || vlen != 7 || strncasecmp(v, "chunked", 7) != 0)
                                return -EBADMSG;
                        seen_te = h->chunked = true;
                }
                p = eol + 2;
        }
        /* Both framings at once is how responses get desynchronised; refuse it. */
        if (h->chunked && h->has_length)
                return -EBADMSG;
        h->len = end + 4;
        return 0;
}

/* Walks a chunked body in p[0..len); copies the data to dst unless it is NULL. Returns 0 with the
 * decoded size in *ret_size when the last chunk and trailers are complete, -EAGAIN when more bytes
 * are needed, -EBADMSG, -EFBIG. */
static int chunked_decode(const char *p, size_t len, size_t max, char *dst, size_t *ret_size) {
        size_t i = 0, total = 0;

        for (;;) {
                uint64_t size = 0;
                size_t digits = 0;

                for (; i < len; i++, digits++) {
                        char c = p[i];
                        int d = is_digit(c) ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
                        if (d < 0)
                                break;
                        if (digits >= 15)
                                return -EFBIG;
                        size = size * 16 + (uint64_t)d;
                }
                if (i == len)
                        return -EAGAIN;
                if (digits == 0)
                        return -EBADMSG;
                if (size > max - total)
                        return -EFBIG;
                if (p[i] == ';') /* chunk extensions: ignored, but no bare CR/LF inside */
                        while (i < len && p[i] != '\r') {
                                if (p[i] == '\n')
                                        return -EBADMSG;
                                i++;
                        }
                if (i + 2 > len)
                        return -EAGAIN;
                if (p[i] != '\r' || p[i + 1] != '\n')
                        return -EBADMSG;
                i += 2;

                if (size == 0) {
                        /* trailer fields, then the empty line */
                        for (;;) {
                                const char *eol = memmem(p + i, len - i, "\r\n", 2);
                                if (!eol)
                                        return len - i > HTTP_HEADER_MAX ? -EFBIG : -EAGAIN;
                                size_t l = (size_t)(eol - (p + i));
                                i += l + 2;
                                if (l == 0)
                                        break;
                        }
                        *ret_size = total;
                        return 0;
                }
                if (len - i < size + 2)
                        return -EAGAIN;
                if (p[i + size] != '\r' || p[i + size + 1] != '\n')
                        return -EBADMSG;
                if (dst)
                        memcpy(dst + total, p + i, size);
                total += size;
                i += size + 2;
        }
}

static int make_body(const char *data, size_t len, struct http_response *ret) {
        char *b = malloc(len + 1);
        if (!b)
                return -ENOMEM;
        if (data && len)
                memcpy(b, data, len);
        b[len] = 0;
        ret->body = b;
        ret->body_len = len;
        return 0;
}

int http_response_parse(const char *buf, size_t len, bool eof, size_t max_body, struct http_response *ret) {
        struct response_head h;
        struct http_response res = {};
        const char *body;
        size_t avail;
        int r;

        for (;;) {
                const char *end = memmem(buf, MIN(len, HTTP_HEADER_MAX), "\r\n\r\n", 4);
                if (!end) {
                        if (len >= HTTP_HEADER_MAX)
                                return -EFBIG;
                        return eof ? -EBADMSG : -EAGAIN;
                }
                h = (struct response_head){};
                r = parse_head(buf, (size_t)(end - buf), &h);
                if (r < 0)
                        return r;
                if (h.status >= 200)
                        break;
                if (h.status == 101) /* we never ask to switch protocols */
                        return -EBADMSG;
                buf += h.len; /* an interim response (100 Continue, 103): the real one follows */
                len -= h.len;
        }

        res.status = h.status;
        body = buf + h.len;
        avail = len - h.len;
        if (h.status == 204 || h.status == 304)
                r = make_body(NULL, 0, &res);
        else if (h.chunked) {
                size_t size;
                r = chunked_decode(body, avail, max_body, NULL, &size);
                if (r == -EAGAIN && eof)
                        return -EBADMSG;
                if (r < 0)
                        return r;
                r = make_body(NULL, size, &res);
                if (r >= 0)
                        r = chunked_decode(body, avail, max_body, res.body, &size);
        } else if (h.has_length) {
                if (h.length > max_body)
                        return -EFBIG;
                if (avail < h.length)
                        return eof ? -EBADMSG : -EAGAIN;
                r = make_body(body, (size_t)h.length, &res);
        } else {
                /* Framed by the connection closing. */
                if (avail > max_body)
                        return -EFBIG;
                if (!eof)
                        return -EAGAIN;
                r = make_body(body, avail, &res);
        }
        if (r < 0) {
                http_response_done(&res);
                return r;
        }
        *ret = res;
        return 0;
}

static void set_error(struct http_error *e, bool unreachable, const char *fmt, ...) _printf_(3, 4);
static void set_error(struct http_error *e, bool unreachable, const char *fmt, ...) {
        va_list ap;

        if (!e)
                return;
        e->unreachable = unreachable;
        va_start(ap, fmt);
        vsnprintf(e->message, sizeof(e->message), fmt, ap);
        va_end(ap);
}

static int errno_timeout(int e) {
        /* A socket timeout surfaces as EAGAIN (or EINPROGRESS from connect). */
        return e == EAGAIN || e == EWOULDBLOCK || e == EINPROGRESS ? ETIMEDOUT : e;
}

static int connect_to(const struct http_url *url, struct http_error *ret_error) {
        struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *ai = NULL;
        struct timeval tv = { .tv_sec = HTTP_TIMEOUT_S };
        int r, last = ECONNREFUSED;

        r = getaddrinfo(url->host, url->port, &hints, &ai);
        /* "localhost" is the loopback address whatever the resolver says (RFC 6761): minimal
         * systems and containers may have no /etc/hosts entry for it. */
        if (r != 0 && strcasecmp(url->host, "localhost") == 0) {
                hints.ai_flags = AI_NUMERICHOST;
                r = getaddrinfo("127.0.0.1", url->port, &hints, &ai);
        }
        if (r != 0) {
                int e = r == EAI_SYSTEM ? errno : 0;
                set_error(ret_error, true, "%s", e ? strerror(e) : gai_strerror(r));
                return e ? -e : -EHOSTUNREACH;
        }
        for (struct addrinfo *a = ai; a; a = a->ai_next) {
                int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
                if (fd < 0) {
                        last = errno;
                        continue;
                }
                /* SO_SNDTIMEO also bounds a blocking connect(). */
                if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
                    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0 ||
                    connect(fd, a->ai_addr, a->ai_addrlen) < 0) {
                        last = errno_timeout(errno);
                        close(fd);
                        continue;
                }
                freeaddrinfo(ai);
                return fd;
        }
        freeaddrinfo(ai);
        set_error(ret_error, true, "%s", strerror(last));
        return -last;
}

static int send_all(int fd, const char *p, size_t len) {
        while (len > 0) {
                ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno_timeout(errno);
                }
                p += n;
                len -= (size_t)n;
        }
        return 0;
}

int http_request(const struct http_url *url, const char *method, const char *path, const char *token,
                 const char *content_type, const void *body, size_t body_len, struct http_response *ret,
                 struct http_error *ret_error) {
        _cleanup_close_ int fd = -1;
        struct buf req = {}, resp = {};
        const size_t limit = HTTP_HEADER_MAX + HTTP_BODY_MAX;
        int r, send_r;

        r = buf_printf(&req, HTTP_HEADER_MAX,
                       "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: serve-cli\r\nAccept: */*\r\n"
                       "Connection: close\r\nContent-Length: %zu\r\n",
                       method, path, url->authority, body_len);
        if (r >= 0 && token)
                r = buf_printf(&req, HTTP_HEADER_MAX, "Authorization: Bearer %s\r\n", token);
        if (r >= 0 && content_type)
                r = buf_printf(&req, HTTP_HEADER_MAX, "Content-Type: %s\r\n", content_type);
        if (r >= 0)
                r = buf_append(&req, "\r\n", 2, HTTP_HEADER_MAX);
        if (r < 0) {
                buf_free(&req);
                set_error(ret_error, false, "building the request: %s", strerror(-r));
                return r;
        }

        fd = connect_to(url, ret_error);
        if (fd < 0) {
                buf_free(&req);
                return fd;
        }

        send_r = send_all(fd, req.data, req.len);
        buf_free(&req);
        if (send_r >= 0 && body_len > 0)
                send_r = send_all(fd, body, body_len);
        /* A server may answer (401, 413) and close before reading all of the body, so a failed send
         * is only reported when no response can be read either. */
        if (send_r < 0 && send_r != -EPIPE && send_r != -ECONNRESET) {
                set_error(ret_error, false, "sending the request: %s", strerror(-send_r));
                return send_r;
        }

        for (;;) {
                size_t room = MIN((size_t)65536, limit - resp.len);
                bool eof = false;
                ssize_t n;

                if (room == 0) {
                        r = -EFBIG;
                        break;
                }
                r = buf_reserve(&resp, room, limit);
                if (r < 0)
                        break;
                n = recv(fd, resp.data + resp.len, room, 0);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno != ECONNRESET) {
                                r = -errno_timeout(errno);
                                break;
                        }
                        eof = true; /* see what arrived before the reset */
                } else if (n == 0)
                        eof = true;
                else
                        resp.len += (size_t)n;

                r = http_response_parse(resp.data ? resp.data : "", resp.len, eof, HTTP_BODY_MAX, ret);
                if (r != -EAGAIN)
                        break;
        }
        buf_free(&resp);
        if (r >= 0)
                return 0;

        if (send_r < 0 && (r == -EBADMSG || r == -ECONNRESET)) {
                set_error(ret_error, false, "sending the request: %s", strerror(-send_r));
                return send_r;
        }
        switch (r) {
        case -EBADMSG:
                set_error(ret_error, false, "malformed HTTP response");
                return -EPROTO;
        case -EFBIG:
                set_error(ret_error, false, "response larger than %u MiB", HTTP_BODY_MAX >> 20);
                return r;
        case -ETIMEDOUT:
                set_error(ret_error, false, "no response within %d s", HTTP_TIMEOUT_S);
                return r;
        default:
                set_error(ret_error, false, "reading the response: %s", strerror(-r));
                return r;
        }
}
