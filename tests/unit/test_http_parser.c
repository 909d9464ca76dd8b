/* http_parser: every request is fed whole, as every truncated prefix, and one byte at a time
 * (resuming with prev_len); all three must agree. Rejections carry their exact status. */

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "macros.h"
#include "http/http_parser.h"
#include "tap.h"

static const struct http_limits lim = {
        .max_request_line = 8192,
        .max_head = 16384,
        .max_headers = 64,
};

static bool span_eq(const char *p, size_t n, const char *want) {
        return want ? p && n == strlen(want) && memcmp(p, want, n) == 0 : p == NULL;
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
        return memcmp(a->headers, b->headers, a->n_headers * sizeof(a->headers[0])) == 0;
}

/* Feeds buf one byte at a time with prev_len; returns the first non-zero result (0 if none) and
 * the request when it completed. */
static int parse_bytewise(const char *buf, size_t len, const struct http_limits *l,
                          struct http_request *ret) {
        for (size_t n = 1; n <= len; n++) {
                int r = http_parse_request(buf, n, n - 1, l, ret);
                if (r != 0)
                        return r;
        }
        return 0;
}

/* Parses a valid request whole, every prefix, and bytewise; returns the whole result in *ret. */
static bool check_valid(const char *s, const struct http_limits *l, struct http_request *ret) {
        size_t len = strlen(s);
        struct http_request whole, bytewise;
        int r = http_parse_request(s, len, 0, l, &whole);

        if (!ok(r > 0, "valid request parses whole: %.*s", (int) strcspn(s, "\r\n"), s)) {
                printf("#   got %d\n", r);
                return false;
        }
        bool prefixes_again = true;
        for (size_t n = 0; n < (size_t) r; n++) {
                struct http_request tmp;
                int k = http_parse_request(s, n, 0, l, &tmp);
                if (k != 0) {
                        printf("#   prefix %zu returned %d\n", n, k);
                        prefixes_again = false;
                        break;
                }
        }
        ok(prefixes_again, "every truncated prefix returns 0 (again)");
        int b = parse_bytewise(s, len, l, &bytewise);
        is_int(b, r, "byte-by-byte result matches whole");
        ok(b == r && same_request(&whole, &bytewise), "byte-by-byte request matches whole");
        *ret = whole;
        return true;
}

static void check_status(const char *s, int want, const char *what) {
        size_t len = strlen(s);
        struct http_request req;

        is_int(http_parse_request(s, len, 0, &lim, &req), want, "%s: whole", what);
        is_int(parse_bytewise(s, len, &lim, &req), want, "%s: byte by byte", what);
}

static void test_simple_get(void) {
        struct http_request req;
        const char *s = "GET /hello/world HTTP/1.1\r\nHost: example.com\r\nUser-Agent:  curl/8 \t\r\n"
                        "Accept: */*\r\n\r\n";

        if (!check_valid(s, &lim, &req))
                return;
        is_int(req.head_len, strlen(s), "head_len covers the whole head");
        ok(span_eq(req.method, req.method_len, "GET"), "method");
        ok(span_eq(req.target, req.target_len, "/hello/world"), "target");
        ok(span_eq(req.path, req.path_len, "/hello/world"), "path");
        ok(req.query == NULL, "no '?' -> query NULL");
        is_int(req.minor_version, 1, "HTTP/1.1");
        is_int(req.n_headers, 3, "three headers");
        ok(span_eq(req.headers[1].name, req.headers[1].name_len, "User-Agent"), "header name");
        ok(span_eq(req.headers[1].value, req.headers[1].value_len, "curl/8"),
           "header value stripped of surrounding SP/HTAB");
        is_int(req.body_kind, HTTP_BODY_NONE, "no body");
        ok(req.keep_alive, "HTTP/1.1 keeps alive by default");
        ok(!req.expect_continue, "no Expect");

        const struct http_header *h = http_request_header(&req, "HOST");
        ok(h && span_eq(h->value, h->value_len, "example.com"), "header lookup is case-insensitive");
        ok(http_request_header(&req, "Cookie") == NULL, "missing header -> NULL");
        ok(http_request_header(&req, "Hos") == NULL, "lookup does not match a prefix");

        is_int(http_parse_request(NULL, 0, 0, &lim, &req), 0, "empty buffer: again");
        ok(http_parse_request(s, strlen(s), 0, NULL, &req) == (int) strlen(s), "lim == NULL uses defaults");
}

static void test_targets(void) {
        struct http_request req;

        if (check_valid("GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\n", &lim, &req)) {
                ok(span_eq(req.path, req.path_len, "/a"), "/a?b=c -> path /a");
                ok(span_eq(req.query, req.query_len, "b=c"), "/a?b=c -> query b=c");
                ok(span_eq(req.target, req.target_len, "/a?b=c"), "target as sent");
        }
        if (check_valid("GET /a? HTTP/1.1\r\nHost: x\r\n\r\n", &lim, &req)) {
                ok(span_eq(req.path, req.path_len, "/a"), "/a? -> path /a");
                ok(req.query != NULL && req.query_len == 0, "/a? -> empty query, not NULL");
        }
        if (check_valid("GET /x?a=1?b=2 HTTP/1.1\r\nHost: x\r\n\r\n", &lim, &req))
                ok(span_eq(req.query, req.query_len, "a=1?b=2"), "query splits at the first '?'");
        if (check_valid("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", &lim, &req))
                ok(span_eq(req.target, req.target_len, "*") && req.query == NULL, "OPTIONS *");

        check_status("GET * HTTP/1.1\r\nHost: x\r\n\r\n", -400, "* only for OPTIONS");
        check_status("GET http://x/a HTTP/1.1\r\nHost: x\r\n\r\n", -400, "absolute-form rejected");
        check_status("CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n", -400, "authority-form rejected");
        check_status("GET a HTTP/1.1\r\nHost: x\r\n\r\n", -400, "target without /");
        check_status("GET /a#f HTTP/1.1\r\nHost: x\r\n\r\n", -400, "fragment in target");
        check_status("GET /a\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", -400, "non-ASCII in target");
        check_status("GET /a\tb HTTP/1.1\r\nHost: x\r\n\r\n", -400, "HTAB in target");
        check_status("GET  / HTTP/1.1\r\nHost: x\r\n\r\n", -400, "two spaces after method");
        check_status("GET /  HTTP/1.1\r\nHost: x\r\n\r\n", -400, "two spaces after target");
        check_status("GET / HTTP/1.1 \r\nHost: x\r\n\r\n", -400, "space after version");
        check_status("GET HTTP/1.1\r\nHost: x\r\n\r\n", -400, "missing target");
        check_status("\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", -400, "empty request line");
}

static void test_methods_versions(void) {
        struct http_request req;

        if (check_valid("M-SEARCH /a HTTP/1.0\r\n\r\n", &lim, &req)) {
                ok(span_eq(req.method, req.method_len, "M-SEARCH"), "any token is a method");
                is_int(req.minor_version, 0, "HTTP/1.0");
        }
        check_status("G(T / HTTP/1.1\r\nHost: x\r\n\r\n", -400, "method with non-token char");
        check_status("GE\x01T / HTTP/1.1\r\nHost: x\r\n\r\n", -400, "control byte in method");
        check_status("GET / HTTP/2.0\r\nHost: x\r\n\r\n", -505, "HTTP/2.0");
        check_status("GET / HTTP/1.2\r\nHost: x\r\n\r\n", -505, "HTTP/1.2");
        check_status("GET / HTTP/0.9\r\nHost: x\r\n\r\n", -505, "HTTP/0.9");
        check_status("GET / HTTP/1.10\r\nHost: x\r\n\r\n", -400, "HTTP/1.10 is malformed");
        check_status("GET / http/1.1\r\nHost: x\r\n\r\n", -400, "lower-case http");
        check_status("GET / HTTP/1\r\nHost: x\r\n\r\n", -400, "HTTP/1");
        check_status("GET / HTTP/1.x\r\nHost: x\r\n\r\n", -400, "HTTP/1.x");
        check_status("GET /\r\n\r\n", -400, "HTTP/0.9-style request line");

        /* A method longer than any we implement is 501, answered as soon as its 33rd byte arrives,
         * so a client cannot make us buffer it; 32 bytes are still a method. */
        char m[1200];
        snprintf(m, sizeof m, "%.*s / HTTP/1.1\r\nHost: x\r\n\r\n", HTTP_MAX_METHOD,
                 "ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFGHIJKLMNOP");
        if (check_valid(m, &lim, &req))
                is_int(req.method_len, HTTP_MAX_METHOD, "a %d-byte method is accepted", HTTP_MAX_METHOD);
        snprintf(m, sizeof m, "%.*s / HTTP/1.1\r\nHost: x\r\n\r\n", HTTP_MAX_METHOD + 1,
                 "ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFGHIJKLMNOP");
        check_status(m, -501, "a 33-byte method");
        memset(m, 'G', 1024);
        strcpy(m + 1024, " / HTTP/1.1\r\nHost: x\r\n\r\n");
        check_status(m, -501, "a 1,024-byte method");
        is_int(http_parse_request(m, HTTP_MAX_METHOD, 0, &lim, &req), 0, "32 method bytes: again");
        is_int(http_parse_request(m, HTTP_MAX_METHOD + 1, 0, &lim, &req), -501,
               "33rd method byte: 501 before the line ends");
        memcpy(m, "GE(T", 4);
        is_int(http_parse_request(m, strlen(m), 0, &lim, &req), -400,
               "a long method with a non-token byte is malformed, not unimplemented");

        /* The request line is judged as soon as its CRLF arrives. */
        const char *s = "GET / HTTP/3.0\r\n";
        is_int(http_parse_request(s, strlen(s), 0, &lim, &req), -505, "bad version answered early");
}

static void test_bodies(void) {
        struct http_request req;

        if (check_valid("POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 42\r\n\r\n", &lim, &req)) {
                is_int(req.body_kind, HTTP_BODY_LENGTH, "Content-Length body");
                is_int(req.content_length, 42, "content_length");
        }
        if (check_valid("POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", &lim, &req))
                ok(req.body_kind == HTTP_BODY_LENGTH && req.content_length == 0, "Content-Length: 0");
        if (check_valid("POST /p HTTP/1.1\r\nHost: x\r\ncontent-length: 18446744073709551615\r\n\r\n",
                        &lim, &req))
                ok(req.content_length == UINT64_MAX, "largest Content-Length");
        if (check_valid("POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", &lim, &req))
                is_int(req.body_kind, HTTP_BODY_CHUNKED, "chunked body");
        if (check_valid("POST /p HTTP/1.1\r\nHost: x\r\ntransfer-encoding:  ChUnKeD \r\n\r\n", &lim, &req))
                is_int(req.body_kind, HTTP_BODY_CHUNKED, "chunked is case-insensitive, OWS stripped");
}

static void test_smuggling(void) {
        static const struct {
                const char *req;
                int status;
                const char *what;
        } cases[] = {
                { "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n", -400, "CL not digits" },
                { "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", -400, "CL negative" },
                { "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\n", -400, "CL with sign" },
                { "POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n", -400, "CL empty" },
                { "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1 2\r\n\r\n", -400, "CL inner space" },
                { "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551616\r\n\r\n", -400,
                  "CL overflow" },
                { "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n", -400, "CL list" },
                { "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", -400,
                  "duplicate CL, same value" },
                { "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\ncontent-length: 6\r\n\r\n", -400,
                  "duplicate CL, different value" },
                { "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                  -400, "CL + TE" },
                { "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
                  -400, "TE + CL" },
                { "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nContent-Length: 5\r\n\r\n",
                  -400, "TE gzip + CL" },
                { "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", -501, "TE gzip" },
                { "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", -501,
                  "TE list" },
                { "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", -501,
                  "TE chunked twice in a list" },
                { "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n", -501,
                  "TE xchunked" },
                { "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n\r\n", -501, "TE empty" },
                { "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                  "Transfer-Encoding: chunked\r\n\r\n", -400, "two TE headers" },
                { "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", -400, "TE in HTTP/1.0" },
                { "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n", -400,
                  "space before colon" },
                { "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding\t: chunked\r\n\r\n", -400,
                  "HTAB before colon" },
                { "GET / HTTP/1.1\r\nHost: x\r\n: v\r\n\r\n", -400, "empty field name" },
                { "GET / HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n", -400, "no colon" },
                { "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n", -400, "obs-fold (SP)" },
                { "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\tfolded\r\n\r\n", -400, "obs-fold (HTAB)" },
                { "GET / HTTP/1.1\r\n Host: x\r\n\r\n", -400, "first header line starts with SP" },
                { "GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n", -400, "bare LF in a header" },
                { "GET / HTTP/1.1\nHost: x\r\n\r\n", -400, "bare LF after request line" },
                { "GET / HTTP/1.1\r\nHost: x\r\n\n", -400, "bare LF as the empty line" },
                { "GET / HTTP/1.1\r\nHost: x\rX: y\r\n\r\n", -400, "bare CR in a header" },
                { "GET / HTTP/1.1\r\nHost: x\r\n\r\r\n", -400, "bare CR in the empty line" },
                { "GET / HTTP/1.1\r\nHost: x\r\nX: a\x7f\r\n\r\n", -400, "DEL in a value" },
                { "GET / HTTP/1.1\r\nHost: x\r\nX: a\x1b[0m\r\n\r\n", -400, "ESC in a value" },
                { "GET / HTTP/1.1\r\nHo\x01st: x\r\n\r\n", -400, "control byte in a name" },
                { "GET / HTTP/1.1\r\nX(: y\r\nHost: x\r\n\r\n", -400, "non-token in a name" },
                { "GET / HTTP/1.1\r\n\r\n", -400, "HTTP/1.1 without Host" },
                { "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", -400, "two Host headers" },
                { "GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", -400, "two Host headers, same value" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++)
                check_status(cases[i].req, cases[i].status, cases[i].what);

        /* A NUL byte cannot be written in a C string literal of the table above. */
        static const char nul[] = "GET / HTTP/1.1\r\nHost: x\r\nX: a\0b\r\n\r\n";
        struct http_request req;
        is_int(http_parse_request(nul, sizeof(nul) - 1, 0, &lim, &req), -400, "NUL in a value");
        is_int(parse_bytewise(nul, sizeof(nul) - 1, &lim, &req), -400, "NUL in a value, bytewise");
        /* ... and the NUL is answered as soon as it arrives, not at the end of the head. */
        is_int(http_parse_request(nul, 32, 0, &lim, &req), -400, "NUL answered before the head ends");

        if (check_valid("GET / HTTP/1.1\r\nHost: x\r\nX: a\tb \xc3\xa9\r\n\r\n", &lim, &req))
                ok(span_eq(req.headers[1].value, req.headers[1].value_len, "a\tb \xc3\xa9"),
                   "HTAB and obs-text allowed inside a value");
        if (check_valid("GET / HTTP/1.0\r\n\r\n", &lim, &req))
                ok(req.n_headers == 0, "HTTP/1.0 needs no Host");
}

static void test_pipelined(void) {
        const char *s = "POST /one HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                        "GET /two?q HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                        "GET /thr";
        size_t len = strlen(s);
        struct http_request a, b, c;

        int r = http_parse_request(s, len, 0, &lim, &a);
        ok(r > 0 && (size_t) r == a.head_len, "first request parses from a pipelined buffer");
        ok(span_eq(a.path, a.path_len, "/one") && a.content_length == 5, "first request's fields");
        ok(memcmp(s + r, "hello", 5) == 0, "head_len points at the body");

        size_t off = r + a.content_length;
        int r2 = http_parse_request(s + off, len - off, 0, &lim, &b);
        ok(r2 > 0, "second request parses after the first's body");
        ok(span_eq(b.path, b.path_len, "/two") && span_eq(b.query, b.query_len, "q"), "second's target");
        ok(!b.keep_alive, "second asked to close");

        off += r2;
        is_int(http_parse_request(s + off, len - off, 0, &lim, &c), 0, "partial third request -> again");
}

static void test_keep_alive(void) {
        static const struct {
                const char *req;
                bool keep_alive;
                const char *what;
        } cases[] = {
                { "GET / HTTP/1.1\r\nHost: x\r\n\r\n", true, "1.1 default" },
                { "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", false, "1.1 close" },
                { "GET / HTTP/1.1\r\nHost: x\r\nConnection: CLOSE\r\n\r\n", false, "1.1 CLOSE" },
                { "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, close\r\n\r\n", false,
                  "1.1 close in a list" },
                { "GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
                  false, "1.1 close in a second header" },
                { "GET / HTTP/1.1\r\nHost: x\r\nConnection: closed\r\n\r\n", true, "1.1 'closed' is not close" },
                { "GET / HTTP/1.0\r\n\r\n", false, "1.0 default" },
                { "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true, "1.0 keep-alive" },
                { "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true, "1.0 Keep-Alive" },
                { "GET / HTTP/1.0\r\nConnection: foo ,  keep-alive \r\n\r\n", true, "1.0 keep-alive in a list" },
                { "GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", false, "1.0 close wins" },
        };
        struct http_request req;

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                int r = http_parse_request(cases[i].req, strlen(cases[i].req), 0, &lim, &req);
                ok(r > 0 && req.keep_alive == cases[i].keep_alive, "keep-alive: %s", cases[i].what);
        }

        const char *e = "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n";
        ok(http_parse_request(e, strlen(e), 0, &lim, &req) > 0 && req.expect_continue,
           "Expect: 100-continue");
        e = "POST / HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: 3\r\n\r\n";
        ok(http_parse_request(e, strlen(e), 0, &lim, &req) > 0 && !req.expect_continue,
           "other Expect values are not 100-continue");
        e = "POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n";
        ok(http_parse_request(e, strlen(e), 0, &lim, &req) > 0 && !req.expect_continue,
           "Expect ignored from HTTP/1.0");
}

static void test_limits(void) {
        struct http_limits l = { .max_request_line = 32, .max_head = 128, .max_headers = 4 };
        struct http_request req;
        char buf[512];

        /* Request line of exactly 32 bytes is fine; 33 is not. */
        snprintf(buf, sizeof(buf), "GET /%s HTTP/1.1\r\nHost: x\r\n\r\n", "aaaaaaaaaaaaaaaaaa");
        is_int(strchr(buf, '\r') - buf, 32, "test line is 32 bytes");
        ok(http_parse_request(buf, strlen(buf), 0, &l, &req) > 0, "request line at the limit");
        snprintf(buf, sizeof(buf), "GET /%s HTTP/1.1\r\nHost: x\r\n\r\n", "aaaaaaaaaaaaaaaaaaa");
        is_int(http_parse_request(buf, strlen(buf), 0, &l, &req), -414, "request line over the limit");
        is_int(parse_bytewise(buf, strlen(buf), &l, &req), -414, "request line over the limit, bytewise");

        /* 414 as soon as max+1 bytes arrived without CRLF, before the target is even complete. */
        memset(buf, 0, sizeof(buf));
        memcpy(buf, "GET /", 5);
        memset(buf + 5, 'a', 100);
        is_int(http_parse_request(buf, 32, 0, &l, &req), 0, "32 bytes without CRLF: again");
        is_int(http_parse_request(buf, 33, 32, &l, &req), -414, "33rd byte without CRLF: 414");
        is_int(http_parse_request(buf, 33, 0, &l, &req), -414, "same without prev_len");

        /* Head of exactly 128 bytes (with the final CRLF) is fine; 129 is not. */
        char hdr[128];
        size_t base = strlen("GET / HTTP/1.1\r\nHost: x\r\nX: \r\n\r\n");
        memset(hdr, 'v', 128 - base);
        hdr[128 - base] = 0;
        snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: x\r\nX: %s\r\n\r\n", hdr);
        is_int(strlen(buf), 128, "test head is 128 bytes");
        is_int(http_parse_request(buf, strlen(buf), 0, &l, &req), 128, "head at the limit");
        snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: x\r\nX: v%s\r\n\r\n", hdr);
        is_int(http_parse_request(buf, strlen(buf), 0, &l, &req), -431, "head over the limit");
        is_int(parse_bytewise(buf, strlen(buf), &l, &req), -431, "head over the limit, bytewise");
        is_int(http_parse_request(buf, 128, 0, &l, &req), 0, "128 bytes, no end of head: again");
        is_int(http_parse_request(buf, 129, 128, &l, &req), -431, "129th byte, no end of head: 431");

        const char *four = "GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        ok(http_parse_request(four, strlen(four), 0, &l, &req) > 0 && req.n_headers == 4,
           "max_headers headers");
        const char *five = "GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n";
        is_int(http_parse_request(five, strlen(five), 0, &l, &req), -431, "max_headers + 1 headers");

        /* max_headers is capped at HTTP_MAX_HEADERS whatever the caller asks. */
        struct http_limits big = { .max_request_line = 8192, .max_head = 65536, .max_headers = 1000 };
        size_t n = 0;
        static char many[8192];
        n += sprintf(many + n, "GET / HTTP/1.1\r\nHost: x\r\n");
        for (int i = 0; i < HTTP_MAX_HEADERS; i++)
                n += sprintf(many + n, "H%d: v\r\n", i);
        n += sprintf(many + n, "\r\n");
        is_int(http_parse_request(many, n, 0, &big, &req), -431, "more than HTTP_MAX_HEADERS headers");
}

static void test_resume_chunks(void) {
        /* Feeding in uneven slices with prev_len gives the same answer as parsing whole. */
        const char *s = "PUT /up?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\nX-Long: "
                        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\nbodybodybo";
        size_t len = strlen(s);
        struct http_request whole, part;
        int want = http_parse_request(s, len, 0, &lim, &whole);
        bool all_same = want > 0;

        for (size_t step = 1; step < 40 && all_same; step++) {
                size_t prev = 0;
                int r = 0;
                for (size_t n = step; r == 0; n += step) {
                        n = MIN(n, len);
                        r = http_parse_request(s, n, prev, &lim, &part);
                        prev = n;
                        if (n == len)
                                break;
                }
                if (r != want || !same_request(&whole, &part)) {
                        printf("#   step %zu: got %d want %d\n", step, r, want);
                        all_same = false;
                }
        }
        ok(all_same, "resuming with prev_len in slices of 1..39 bytes matches the whole parse");
}

struct chunk_result {
        ssize_t consumed;
        size_t out_len;
        bool done;
        char out[512];
};

static ssize_t decode_whole(const char *in, size_t len, uint64_t max_body, struct chunk_result *res) {
        struct http_chunked st = {};
        res->consumed = http_chunked_decode(&st, in, len, res->out, max_body, &res->out_len, &res->done);
        return res->consumed;
}

/* Byte by byte; returns the first error or the total consumed. */
static ssize_t decode_bytewise(const char *in, size_t len, uint64_t max_body, struct chunk_result *res) {
        struct http_chunked st = {};
        size_t consumed = 0, o = 0;
        bool done = false;

        for (size_t i = 0; i < len && !done; i++) {
                size_t n;
                ssize_t k = http_chunked_decode(&st, in + i, 1, res->out + o, max_body, &n, &done);
                if (k < 0)
                        return res->consumed = k;
                consumed += k;
                o += n;
        }
        res->out_len = o;
        res->done = done;
        return res->consumed = consumed;
}

static void check_chunked(const char *in, size_t len, const char *want, size_t want_consumed,
                          const char *what) {
        struct chunk_result w, b;
        char inplace[512];
        struct http_chunked st = {};
        size_t out_len;
        bool done;

        decode_whole(in, len, UINT64_MAX, &w);
        decode_bytewise(in, len, UINT64_MAX, &b);
        memcpy(inplace, in, len);
        ssize_t k = http_chunked_decode(&st, inplace, len, inplace, UINT64_MAX, &out_len, &done);

        is_int(w.consumed, want_consumed, "%s: whole consumed", what);
        ok(w.done && span_eq(w.out, w.out_len, want), "%s: whole output", what);
        is_int(b.consumed, want_consumed, "%s: byte-by-byte consumed", what);
        ok(b.done && span_eq(b.out, b.out_len, want), "%s: byte-by-byte output", what);
        ok(k == (ssize_t) want_consumed && done && span_eq(inplace, out_len, want),
           "%s: in-place output", what);
}

static void check_chunked_error(const char *in, uint64_t max_body, int want, const char *what) {
        struct chunk_result w, b;
        size_t len = strlen(in);

        is_int(decode_whole(in, len, max_body, &w), want, "%s: whole", what);
        is_int(decode_bytewise(in, len, max_body, &b), want, "%s: byte by byte", what);
}

static void test_chunked(void) {
        const char *s = "5\r\nhello\r\n6;name=val;x\r\n world\r\n0\r\n\r\n";
        check_chunked(s, strlen(s), "hello world", strlen(s), "two chunks and an extension");

        s = "1a\r\nabcdefghijklmnopqrstuvwxyz\r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\nY: \t\r\n\r\n";
        check_chunked(s, strlen(s), "abcdefghijklmnopqrstuvwxyz0123456789", strlen(s),
                      "hex sizes upper/lower case, trailers");

        s = "0000000000000003\r\nabc\r\n0\r\n\r\n";
        check_chunked(s, strlen(s), "abc", strlen(s), "16 hex digits");

        s = "3 ; ext\r\nabc\r\n0\r\n\r\n";
        check_chunked(s, strlen(s), "abc", strlen(s), "whitespace before ';'");

        s = "0\r\n\r\n";
        check_chunked(s, strlen(s), "", strlen(s), "empty body");

        /* The decoder stops at the end of the body: what follows is the next request. */
        s = "3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        check_chunked(s, strlen(s), "abc", strlen("3\r\nabc\r\n0\r\n\r\n"), "pipelined remainder");

        struct chunk_result r;
        s = "5\r\nhel";
        ok(decode_whole(s, strlen(s), UINT64_MAX, &r) == 6 && !r.done && span_eq(r.out, r.out_len, "hel"),
           "partial body: consumes all, not done");

        check_chunked_error("g\r\nabc\r\n0\r\n\r\n", UINT64_MAX, -400, "non-hex size");
        check_chunked_error("\r\nabc\r\n0\r\n\r\n", UINT64_MAX, -400, "empty size");
        check_chunked_error("-1\r\nabc\r\n0\r\n\r\n", UINT64_MAX, -400, "negative size");
        check_chunked_error("0x3\r\nabc\r\n0\r\n\r\n", UINT64_MAX, -400, "0x prefix");
        check_chunked_error("00000000000000003\r\nabc\r\n0\r\n\r\n", UINT64_MAX, -400, "17 digits");
        check_chunked_error("FFFFFFFFFFFFFFFFF\r\n", UINT64_MAX, -400, "overflowing size");
        check_chunked_error("3\nabc\r\n0\r\n\r\n", UINT64_MAX, -400, "bare LF after size");
        check_chunked_error("3\rabc\r\n0\r\n\r\n", UINT64_MAX, -400, "bare CR after size");
        check_chunked_error("3 \r\nabc\r\n0\r\n\r\n", UINT64_MAX, -400, "trailing space without ext");
        check_chunked_error("3\r\nabcd\r\n0\r\n\r\n", UINT64_MAX, -400, "data longer than size");
        check_chunked_error("3\r\nabc0\r\n\r\n", UINT64_MAX, -400, "missing CRLF after data");
        check_chunked_error("3\r\nabc\n0\r\n\r\n", UINT64_MAX, -400, "bare LF after data");
        check_chunked_error("3;a\x01\r\nabc\r\n0\r\n\r\n", UINT64_MAX, -400, "control byte in extension");
        check_chunked_error("0\r\n folded\r\n\r\n", UINT64_MAX, -400, "obs-fold trailer");
        check_chunked_error("0\r\nX : y\r\n\r\n", UINT64_MAX, -400, "space before colon in trailer");
        check_chunked_error("0\r\n: y\r\n\r\n", UINT64_MAX, -400, "empty trailer name");
        check_chunked_error("0\r\nnocolon\r\n\r\n", UINT64_MAX, -400, "trailer without colon");
        check_chunked_error("0\r\n\r\r", UINT64_MAX, -400, "bad final CRLF");

        check_chunked_error("5\r\nhello\r\n0\r\n\r\n", 4, -413, "size over max_body");
        check_chunked_error("3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n", 5, -413, "total over max_body");
        check_chunked_error("FFFFFFFFFFFFFFFF\r\n", UINT64_MAX - 1, -413, "16 F's over max_body");
        s = "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        check_chunked(s, strlen(s), "abcde", strlen(s), "total exactly max_body (unbounded)");
        ok(decode_whole(s, strlen(s), 5, &r) == (ssize_t) strlen(s) && r.done, "total == max_body is fine");

        /* Extensions and trailers are bounded. */
        static char big[20000];
        size_t n = sprintf(big, "1;");
        memset(big + n, 'e', 5000);
        strcpy(big + n + 5000, "\r\na\r\n0\r\n\r\n");
        check_chunked_error(big, UINT64_MAX, -400, "5000-byte chunk extension");
        n = sprintf(big, "0\r\n");
        for (int i = 0; i < 200; i++)
                n += sprintf(big + n, "X-Trailer-%03d: %060d\r\n", i, 0);
        strcpy(big + n, "\r\n");
        check_chunked_error(big, UINT64_MAX, -400, "too many trailer bytes");
}

static void test_path_normalize(void) {
        static const struct {
                const char *in;
                const char *want; /* NULL: -EINVAL */
        } cases[] = {
                { "/", "/" },
                { "/a", "/a" },
                { "/a/b/c", "/a/b/c" },
                { "/a/", "/a/" },
                /* dot-segments (RFC 3986 5.2.4 and its examples) */
                { "/a/./b/../c", "/a/c" },
                { "/a/b/c/./../../g", "/a/g" },
                { "/mid/content=5/../6", "/mid/6" },
                { "/.", "/" },
                { "/./", "/" },
                { "/a/.", "/a/" },
                { "/a/..", "/" },
                { "/a/b/..", "/a/" },
                { "/a/b/../", "/a/" },
                { "/a/../b", "/b" },
                { "/echo/../-/healthz", "/-/healthz" },
                { "/..", NULL },
                { "/../", NULL },
                { "/../a", NULL },
                { "/a/../../b", NULL },
                { "/echo/../../-/x", NULL },
                { "/a/./../..", NULL },
                /* not dot-segments: dots inside a name, three dots */
                { "/a./b", "/a./b" },
                { "/.a/..b/c..", "/.a/..b/c.." },
                { "/.../b", "/.../b" },
                { "/a/.../..", "/a/" },
                { "/%2e%2e%2e", "/%2e%2e%2e" },
                /* "%2e" counts as '.' when the whole segment is dots */
                { "/%2E", "/" },
                { "/%2e/a", "/a" },
                { "/a/%2e%2E/b", "/b" },
                { "/a/.%2e/b", "/b" },
                { "/a/%2e./b", "/b" },
                { "/.%2e/x", NULL },
                { "/%2e%2e", NULL },
                { "/a/%2e%2e/%2E%2E", NULL },
                { "/a%2e/b", "/a%2e/b" },
                { "/%2ea", "/%2ea" },
                { "/%2", "/%2" },
                { "/%2x", "/%2x" },
                { "/a/%2", "/a/%2" },
                /* "%2f" is data, not a separator */
                { "/a%2f..%2fb", "/a%2f..%2fb" },
                { "/a/%2f/..", "/a/" },
                { "/a%2F../b", "/a%2F../b" },
                { "/..%2f", "/..%2f" },
                /* runs of '/' are one */
                { "//", "/" },
                { "///", "/" },
                { "/a//b", "/a/b" },
                { "//a///b//", "/a/b/" },
                { "/a//..", "/" },
                { "/a//../b", "/b" },
                { "//..", NULL },
                /* not origin-form: unchanged */
                { "*", "*" },
                { "", NULL },
        };
        bool all = true, in_place = true;

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                size_t len = strlen(cases[i].in);
                char out[64], copy[64];
                ssize_t n = http_path_normalize(cases[i].in, len, out);
                bool good = cases[i].want ? n >= 0 && span_eq(out, (size_t) n, cases[i].want) && (size_t) n <= len
                                          : n == -EINVAL;
                if (!good) {
                        printf("#   %s -> %s (%zd), want %s\n", cases[i].in, n >= 0 ? out : "error", n,
                               cases[i].want ? cases[i].want : "-EINVAL");
                        all = false;
                }
                memcpy(copy, cases[i].in, len);
                ssize_t m = http_path_normalize(copy, len, copy);
                if (m != n || (n > 0 && memcmp(copy, out, n) != 0)) {
                        printf("#   %s in place -> %zd\n", cases[i].in, m);
                        in_place = false;
                }
        }
        ok(all, "path normalisation: %zu cases (dot-segments, %%2e, %%2f, //, climbing above /)",
           ELEMENTSOF(cases));
        ok(in_place, "normalising in place gives the same results");

        /* What the proxy routes on: the parser's path, normalised. */
        struct http_request req;
        const char *s = "GET /echo/../../-/x?a=/../b HTTP/1.1\r\nHost: x\r\n\r\n";
        char out[64];
        ok(http_parse_request(s, strlen(s), 0, &lim, &req) > 0 &&
                   http_path_normalize(req.path, req.path_len, out) == -EINVAL,
           "GET /echo/../../-/x climbs above / (answered 400, not routed to /echo)");
        s = "GET /echo/./a/..//b?q=/../ HTTP/1.1\r\nHost: x\r\n\r\n";
        ssize_t n;
        ok(http_parse_request(s, strlen(s), 0, &lim, &req) > 0 &&
                   (n = http_path_normalize(req.path, req.path_len, out)) > 0 && span_eq(out, n, "/echo/b"),
           "the path is normalised, the query left alone");
}

static void test_reasons(void) {
        static const struct {
                int code;
                const char *reason;
        } r[] = {
                { 100, "Continue" }, { 101, "Switching Protocols" }, { 200, "OK" }, { 201, "Created" },
                { 202, "Accepted" }, { 204, "No Content" }, { 206, "Partial Content" },
                { 301, "Moved Permanently" }, { 302, "Found" }, { 304, "Not Modified" },
                { 307, "Temporary Redirect" }, { 308, "Permanent Redirect" }, { 400, "Bad Request" },
                { 401, "Unauthorized" }, { 403, "Forbidden" }, { 404, "Not Found" },
                { 405, "Method Not Allowed" }, { 408, "Request Timeout" }, { 411, "Length Required" },
                { 413, "Content Too Large" }, { 414, "URI Too Long" },
                { 415, "Unsupported Media Type" }, { 429, "Too Many Requests" },
                { 431, "Request Header Fields Too Large" }, { 500, "Internal Server Error" },
                { 501, "Not Implemented" }, { 502, "Bad Gateway" }, { 503, "Service Unavailable" },
                { 504, "Gateway Timeout" }, { 505, "HTTP Version Not Supported" }, { 999, "Unknown" },
                { -1, "Unknown" },
        };
        bool all = true;

        for (size_t i = 0; i < ELEMENTSOF(r); i++)
                if (strcmp(http_status_reason(r[i].code), r[i].reason) != 0) {
                        printf("#   %d -> %s\n", r[i].code, http_status_reason(r[i].code));
                        all = false;
                }
        ok(all, "reason phrases for the common status codes");
}

int main(void) {
        test_simple_get();
        test_targets();
        test_methods_versions();
        test_bodies();
        test_smuggling();
        test_pipelined();
        test_keep_alive();
        test_limits();
        test_resume_chunks();
        test_chunked();
        test_path_normalize();
        test_reasons();
        return tap_done();
}
