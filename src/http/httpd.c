#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "httpd.h"
#include "macros.h"

struct hconn {
        struct httpd *h;
        struct netconn *nc;
        bool answered;
        struct list link;          /* h->conns */
};

static void respond(struct hconn *hc, struct httpd_response *resp) {
        struct buf *o = netconn_outbuf(hc->nc);

        (void)buf_printf(o, SIZE_MAX,
                         "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nConnection: close\r\n"
                         "Cache-Control: no-store\r\n\r\n",
                         resp->status, http_status_reason(resp->status), resp->content_type ?: "application/json",
                         resp->body.len);
        if (resp->body.len)
                (void)buf_append(o, resp->body.data, resp->body.len, SIZE_MAX);
        hc->answered = true;
        netconn_flush(hc->nc);
        /* The connection closes itself once the response is out; we are done with it. */
        hc->nc->userdata = NULL;
        netconn_close(hc->nc, true);
        list_del(&hc->link);
        free(hc);
}

static void on_data(struct netconn *nc) {
        struct hconn *hc = nc->userdata;
        struct http_request req;
        struct httpd_response resp = { .status = 200 };
        int r;

        if (!hc || hc->answered)
                return;
        r = http_parse_request(nc->in.data, nc->in.len, 0, &hc->h->limits, &req);
        if (r == 0)
                return;
        if (r < 0) {
                httpd_respond_error(&resp, -r, "malformed request");
                goto out;
        }
        if (req.body_kind == HTTP_BODY_CHUNKED) {
                httpd_respond_error(&resp, 411, "send the body with Content-Length");
                goto out;
        }
        uint64_t body_len = req.body_kind == HTTP_BODY_LENGTH ? req.content_length : 0;
        if (body_len > hc->h->max_body) {
                httpd_respond_error(&resp, 413, "request body too large");
                goto out;
        }
        if (nc->in.len < (size_t)r + body_len)
                return; /* wait for the body */
        struct httpd_request rq = { .req = &req, .body = nc->in.data + r, .body_len = (size_t)body_len, .peer = nc->peer };
        hc->h->handler(hc->h->userdata, &rq, &resp);
out:
        respond(hc, &resp); /* frees hc */
        buf_free(&resp.body);
}

static void on_close(struct netconn *nc, int err) {
        struct hconn *hc = nc->userdata;
        if (!hc)
                return;
        list_del(&hc->link);
        free(hc);
}


static const struct netconn_ops ops = { .on_data = on_data, .on_close = on_close };

static void on_accept(struct netlistener *l, int fd) {
        struct httpd *h = l->userdata;
        struct hconn *hc = calloc(1, sizeof *hc);

        if (!hc) {
                close(fd);
                return;
        }
        hc->h = h;
        if (netconn_adopt(l->loop, fd, &ops, hc, &hc->nc) < 0) {
                free(hc);
                return;
        }
        list_add_tail(&h->conns, &hc->link);
        hc->nc->in_limit = h->max_body + 65536;
}

int httpd_open(struct httpd *h, struct loop *loop, const char *host, int port, size_t max_body, httpd_handler handler,
               void *userdata) {
        h->limits = (struct http_limits){ .max_request_line = 8192, .max_head = 65536, .max_headers = HTTP_MAX_HEADERS };
        h->max_body = max_body;
        h->handler = handler;
        h->userdata = userdata;
        list_init(&h->conns);
        return netlistener_open(&h->listener, loop, host, port, on_accept, h);
}

void httpd_close(struct httpd *h) {
        struct list *pos, *tmp;

        netlistener_close(&h->listener);
        list_for_each_safe(pos, tmp, &h->conns) {
                struct hconn *hc = list_entry(pos, struct hconn, link);
                hc->nc->userdata = NULL;
                netconn_close(hc->nc, false);
                list_del(&hc->link);
                free(hc);
        }
}

void httpd_respond_json(struct httpd_response *resp, int status, const cJSON *j) {
        char *t = cJSON_Print(j);
        resp->status = status;
        resp->content_type = "application/json";
        resp->body.len = 0;
        if (t) {
                (void)buf_printf(&resp->body, SIZE_MAX, "%s\n", t);
                free(t);
        }
}

void httpd_respond_error(struct httpd_response *resp, int status, const char *message) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "error", message);
        httpd_respond_json(resp, status, j);
        cJSON_Delete(j);
}

bool httpd_is(const struct httpd_request *rq, const char *method, const char *path) {
        size_t ml = strlen(method), pl = strlen(path);
        return rq->req->method_len == ml && memcmp(rq->req->method, method, ml) == 0 && rq->req->path_len == pl &&
               memcmp(rq->req->path, path, pl) == 0;
}
