/* Strict, resumable HTTP/1.1 request parser. Results point into the caller's buffer (no copies).
 *
 * Usage: append received bytes to a buffer and call http_parse_request() on the whole buffer;
 * it returns 0 ("again") until the head is complete. Pass the previous buffer length as
 * prev_len so the end-of-head search resumes where it stopped (the same result is produced with
 * prev_len = 0; it only saves work). Bodies are framed by the caller: Content-Length bytes, or
 * http_chunked_decode() for Transfer-Encoding: chunked. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define HTTP_MAX_HEADERS 64
/* Longest method accepted: longer than any method a server implements (RFC 9112 3: 501). */
#define HTTP_MAX_METHOD 32

struct http_header {
        const char *name;
        size_t name_len;
        const char *value; /* leading and trailing whitespace (SP/HTAB) stripped */
        size_t value_len;
};

enum http_body_kind {
        HTTP_BODY_NONE,    /* no Content-Length, no Transfer-Encoding */
        HTTP_BODY_LENGTH,  /* Content-Length: content_length bytes follow */
        HTTP_BODY_CHUNKED, /* Transfer-Encoding: chunked */
};

struct http_request {
        const char *method;
        size_t method_len;
        const char *target; /* request-target as sent (origin-form, or "*" for OPTIONS) */
        size_t target_len;
        const char *path; /* target up to '?' */
        size_t path_len;
        const char *query; /* after '?', without it; NULL when there is no '?' */
        size_t query_len;
        int minor_version; /* HTTP/1.<minor_version>: 0 or 1 */

        struct http_header headers[HTTP_MAX_HEADERS];
        size_t n_headers;

        enum http_body_kind body_kind;
        uint64_t content_length; /* valid when body_kind == HTTP_BODY_LENGTH */
        bool keep_alive;         /* from version and Connection: close / keep-alive */
        bool expect_continue;    /* Expect: 100-continue */
        size_t head_len;         /* bytes of request line + headers + final CRLF */
};

struct http_limits {
        size_t max_request_line; /* bytes before the first CRLF; longer -> -414 */
        size_t max_head;         /* request line + headers; longer -> -431 */
        size_t max_headers;      /* count, <= HTTP_MAX_HEADERS; more -> -431 */
};

/* Parses the request head at the start of buf[0..len).
 * Returns the head length (> 0) when the head is complete and valid (ret is filled),
 * 0 when more bytes are needed, or a negative HTTP status:
 *   -400 malformed (bad method/target/version syntax, NUL or control bytes, obs-fold,
 *        bare LF or CR, invalid or duplicate Content-Length, Content-Length together with
 *        Transfer-Encoding, missing Host on HTTP/1.1, whitespace before ':')
 *   -414 request line longer than max_request_line
 *   -431 head longer than max_head, or more than max_headers headers
 *   -501 Transfer-Encoding other than exactly "chunked"; a method longer than HTTP_MAX_METHOD
 *        (answered as soon as its HTTP_MAX_METHOD + 1st byte arrives). Any other method token
 *        is accepted: the application decides which methods it implements.
 *   -505 HTTP version other than 1.0 or 1.1
 * A negative result is final for the connection: the caller answers and closes. */
int http_parse_request(const char *buf, size_t len, size_t prev_len, const struct http_limits *lim,
                       struct http_request *ret);

/* Normalises the path of a request target (the part before '?', as the parser returns it) into
 * out (room for len bytes; the result is never longer; out may be path itself):
 *   - dot-segments are removed as RFC 3986 5.2.4 says ("/a/./b/../c" -> "/a/c"; a final "." or
 *     ".." leaves a trailing '/': "/a/b/.." -> "/a/");
 *   - a segment made only of '.' and "%2e"/"%2E" counts as its decoded dots ("/a/%2e%2E/b" ->
 *     "/b"), so an encoded ".." cannot slip past the router to a handler that decodes it;
 *   - runs of '/' are merged into one ("/a//b" -> "/a/b"), before dot-segments are applied;
 *   - every other byte, "%2f" included, is left as sent: "%2f" is data, not a separator, and
 *     "/a%2f..%2fb" is one segment.
 * Returns the normalised length (>= 1; the result starts with '/'), or -EINVAL when the path
 * climbs above "/" ("/a/../../b", "/..": answer 400) or is empty. A path that is not
 * origin-form (e.g. "*") is copied unchanged. */
ssize_t http_path_normalize(const char *path, size_t len, char *out);

/* Case-insensitive lookup; returns the header or NULL. */
const struct http_header *http_request_header(const struct http_request *req, const char *name);

/* Decoder state for a chunked body; zero-initialise before the first call. */
struct http_chunked {
        int state;
        uint64_t chunk_left; /* bytes left in the current chunk */
        uint64_t total;      /* decoded bytes so far */
        unsigned digits;     /* hex digits seen in the current size line */
        size_t line_len;     /* bytes in the current size/trailer line (bounded) */
};

/* Decodes chunked framing from in[0..in_len) and writes the data bytes to out, which may be the
 * same buffer as in (decoding never writes past what it has read) — it must hold in_len bytes.
 * Returns the number of input bytes consumed (>= 0); sets *ret_out_len to the data bytes written
 * and *ret_done to true once the last chunk and trailers are consumed (the bytes after that are
 * not consumed: they belong to the next pipelined request).
 * Errors: -400 bad chunk size (non-hex, > 16 hex digits, overflow), missing CRLF, bad trailer;
 *         -413 when the decoded total would exceed max_body. */
ssize_t http_chunked_decode(struct http_chunked *st, const char *in, size_t in_len, char *out,
                            uint64_t max_body, size_t *ret_out_len, bool *ret_done);

/* Standard reason phrase for a status code ("OK", "Not Found", ...); "Unknown" otherwise. */
const char *http_status_reason(int status);
