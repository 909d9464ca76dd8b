/* A small blocking HTTP/1.1 client for the CLI's calls to serve-head's REST API: one request per
 * connection (Connection: close), http:// only, bounded body, 30 s socket timeouts. The response
 * parser works on a buffer, so it is tested without a socket. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#define HTTP_BODY_MAX (64u * 1024 * 1024)
#define HTTP_HEADER_MAX (64u * 1024)
#define HTTP_TIMEOUT_S 30

struct http_url {
        char host[256];      /* without IPv6 brackets, as getaddrinfo() wants it */
        char port[6];        /* decimal, 1..65535 */
        char authority[270]; /* for the Host header: [v6]:port or host:port */
};

/* Parses "http://HOST[:PORT][/]" (HOST: name, IPv4, or [IPv6]; PORT defaults to 80). Anything
 * else (another scheme, user info, a path, a query) is refused, since the API paths are ours to
 * append. Returns 0 and fills *ret, or -EINVAL. */
int http_url_parse(const char *url, struct http_url *ret);

struct http_response {
        int status;
        char *body; /* malloc'd, NUL-terminated (the NUL is not counted in body_len) */
        size_t body_len;
};

/* Frees the body; accepts a zeroed struct. */
void http_response_done(struct http_response *r);

/* Parses one response held in buf[0..len). eof says the peer has closed, which completes a body
 * framed by neither Content-Length nor chunked encoding. Interim 1xx responses are skipped.
 * Returns 0 and fills *ret (written only on success) when the response is complete, -EAGAIN when
 * more bytes are needed, -EBADMSG when it is malformed or truncated at eof, -EFBIG when the
 * headers exceed HTTP_HEADER_MAX or the body exceeds max_body, -ENOMEM. */
int http_response_parse(const char *buf, size_t len, bool eof, size_t max_body, struct http_response *ret);

struct http_error {
        bool unreachable;  /* no connection was made (resolve or connect failed) */
        char message[256]; /* what went wrong, without the address: "Connection refused" */
};

/* Sends METHOD path to url (Connection: close, Content-Length always set) with an optional
 * "Authorization: Bearer token" and body, and reads the whole response. Any HTTP status counts as
 * success. Returns 0 and fills *ret, or a negative errno with *ret_error describing it
 * (-EPROTO: malformed response; -EFBIG: body over HTTP_BODY_MAX; -ETIMEDOUT; connect errors). */
int http_request(const struct http_url *url, const char *method, const char *path, const char *token,
                 const char *content_type, const void *body, size_t body_len, struct http_response *ret,
                 struct http_error *ret_error);
