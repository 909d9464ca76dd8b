/* The cluster CLI: the tables `serve status` and `serve nodes` print (from the spec's example
 * answers), address parsing, HTTP response parsing (whole, in pieces, malformed), and whole
 * commands against a one-shot fake serve-head on 127.0.0.1. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <stdarg.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/client.h"
#include "macros.h"
#include "tap.h"

static const char status_json[] =
        "{\"proxy_location\":\"EveryNode\",\"http_options\":{\"host\":\"0.0.0.0\",\"port\":8000},"
        "\"config_error\":{\"message\":\"apps.yaml:3:5: applications[0].import_path: missing ':'\",\"time\":1700000000.0},"
        "\"applications\":{"
        " \"echo\":{\"name\":\"echo\",\"route_prefix\":\"/echo\",\"status\":\"RUNNING\",\"message\":\"\","
        "  \"last_deployed_time_s\":1700000000.0,"
        "  \"deployments\":{\"Echo\":{\"name\":\"Echo\",\"status\":\"HEALTHY\",\"message\":\"\",\"target_replicas\":2,"
        "   \"replicas\":["
        "    {\"replica_id\":\"echo/Echo#1\",\"state\":\"RUNNING\",\"pid\":4242,\"node_id\":\"worker-1\",\"node_ip\":\"127.0.0.2\",\"start_time_s\":1700000000.0},"
        "    {\"replica_id\":\"echo/Echo#2\",\"state\":\"STARTING\",\"pid\":4243,\"node_id\":\"worker-22\",\"node_ip\":\"127.0.0.3\",\"start_time_s\":1700000000.0}],"
        "   \"pending\":[]}}},"
        " \"llm\":{\"name\":\"llm\",\"route_prefix\":\"/generate\",\"status\":\"DEPLOYING\",\"message\":\"1 replica pending\","
        "  \"last_deployed_time_s\":1700000001.0,"
        "  \"deployments\":{\"Generator\":{\"name\":\"Generator\",\"status\":\"UPDATING\",\"message\":\"\",\"target_replicas\":1,"
        "   \"replicas\":[],"
        "   \"pending\":[{\"count\":1,\"reason\":\"needs 64 CPUs; the largest node offers 4\"}]}}}}}";

static const char nodes_json[] =
        "{\"nodes\":["
        " {\"node_id\":\"worker-1\",\"node_ip\":\"127.0.0.2\",\"state\":\"ALIVE\",\"labels\":{\"group\":\"cpu\"},"
        "  \"resources_total\":{\"CPU\":4,\"memory\":8589934592,\"GPU\":2,\"accel\":4},"
        "  \"resources_available\":{\"CPU\":2.5,\"memory\":6442450944,\"GPU\":1.5,\"accel\":3},"
        "  \"replicas\":3,\"last_heartbeat_s_ago\":0.4,\"http_port\":8000},"
        " {\"node_id\":\"worker-2\",\"node_ip\":\"127.0.0.3\",\"state\":\"DEAD\",\"labels\":{},"
        "  \"resources_total\":{\"CPU\":8,\"memory\":17179869184,\"GPU\":0},"
        "  \"resources_available\":{\"CPU\":8,\"memory\":17179869184,\"GPU\":0},"
        "  \"replicas\":0,\"last_heartbeat_s_ago\":42.0,\"http_port\":8000}]}";

/* Renders json with fn into a string (malloc'd). */
static char *render(int (*fn)(const cJSON *, FILE *), const char *json, int *ret_r) {
        cJSON *j = cJSON_Parse(json);
        char *s = NULL;
        size_t n = 0;
        FILE *f = open_memstream(&s, &n);
        *ret_r = j ? fn(j, f) : -999;
        fclose(f);
        cJSON_Delete(j);
        return s;
}

static void comment(const char *s) {
        for (const char *l = s; l && *l;) {
                const char *e = strchr(l, '\n');
                int n = e ? (int)(e - l) : (int)strlen(l);
                printf("#   | %.*s\n", n, l);
                l += n + (e ? 1 : 0);
        }
}

/* The line of text that contains needle (a copy), or NULL. */
static char *line_with(const char *text, const char *needle) {
        const char *p = strstr(text, needle);
        if (!p)
                return NULL;
        const char *b = p, *e = strchr(p, '\n');
        while (b > text && b[-1] != '\n')
                b--;
        return strndup(b, e ? (size_t)(e - b) : strlen(b));
}

/* True if the line containing `row` shows every one of the NULL-terminated words. */
static bool row_has(const char *text, const char *row, ...) {
        char *line = line_with(text, row);
        va_list ap;
        bool good = line != NULL;
        const char *w;

        va_start(ap, row);
        while ((w = va_arg(ap, const char *)))
                if (!line || !strstr(line, w)) {
                        printf("#   row '%s' lacks '%s': %s\n", row, w, line ? line : "(no such row)");
                        good = false;
                }
        va_end(ap);
        free(line);
        return good;
}

/* The column where word starts on the line containing row, or -1. */
static long column_of(const char *text, const char *row, const char *word) {
        char *line = line_with(text, row);
        char *p = line ? strstr(line, word) : NULL;
        long c = p ? p - line : -1;
        free(line);
        return c;
}

static void test_status_worker_groups(void) {
        int r;
        char *s = render(cli_render_status,
                         "{\"applications\":{},\"worker_groups\":["
                         "{\"name\":\"cpu\",\"provider\":\"netns\",\"min_nodes\":0,\"max_nodes\":3,"
                         "\"nodes\":{\"LAUNCHING\":1,\"JOINING\":0,\"ALIVE\":2,\"DRAINING\":0,\"DELETING\":0},"
                         "\"wanted\":1,\"consecutive_failures\":0,\"last_error\":\"\",\"backoff_s\":0},"
                         "{\"name\":\"gpu\",\"provider\":\"aws\",\"min_nodes\":1,\"max_nodes\":1,"
                         "\"nodes\":{\"LAUNCHING\":0,\"JOINING\":0,\"ALIVE\":0,\"DRAINING\":0,\"DELETING\":1},"
                         "\"wanted\":0,\"consecutive_failures\":3,\"last_error\":\"quota exceeded\",\"backoff_s\":40}]}",
                         &r);

        is_int(r, 0, "status with worker groups renders");
        comment(s);
        ok(row_has(s, "GROUP", "PROVIDER", "NODES", "MIN-MAX", "WANTED", "STATUS", NULL), "the groups table has a header");
        ok(row_has(s, "cpu ", "netns", "1 launching, 2 alive", "0-3", " 1 ", "ok", NULL),
           "cpu: its nodes by state, bounds, wanted, ok");
        ok(row_has(s, "gpu ", "aws", "1 deleting", "1-1", "FAILING (3 launch(es) in a row): quota exceeded; next launch in 40 s",
                   NULL),
           "gpu: failing, with its last error and the backoff");
        ok(strstr(s, "No applications are deployed.") != NULL, "the applications part follows");
        free(s);
}

static void test_status_table(void) {
        int r;
        char *s = render(cli_render_status, status_json, &r);

        is_int(r, 0, "status renders");
        comment(s);
        ok(strncmp(s, "CONFIG ERROR: apps.yaml:3:5: applications[0].import_path: missing ':'\n",
                   strlen("CONFIG ERROR: apps.yaml:3:5: applications[0].import_path: missing ':'\n")) == 0,
           "the config error comes first, with its location");
        ok(strstr(s, "still being served") != NULL, "it says the last valid config keeps serving");
        ok(row_has(s, "APPLICATION", "STATUS", "ROUTE", "MESSAGE", NULL), "applications have a header");
        ok(row_has(s, "echo ", "RUNNING", "/echo", NULL), "echo: RUNNING at /echo");
        ok(row_has(s, "llm ", "DEPLOYING", "/generate", "1 replica pending", NULL), "llm: DEPLOYING with its message");
        ok(row_has(s, "echo/Echo ", "HEALTHY", NULL), "deployment echo/Echo is HEALTHY");
        ok(column_of(s, "echo/Echo ", "HEALTHY") > 0 &&
                   column_of(s, "echo/Echo ", "HEALTHY") == column_of(s, "llm/Generator ", "UPDATING"),
           "deployment STATUS column is aligned");
        /* echo/Echo: 1 running of 2 target, 0 pending, 1 starting */
        ok(row_has(s, "echo/Echo ", " 1 ", " 2 ", " 0 ", NULL), "echo/Echo shows running 1 vs target 2");
        ok(row_has(s, "echo/Echo#1", "RUNNING", "worker-1", "127.0.0.2", "4242", NULL), "replica #1 row");
        ok(row_has(s, "echo/Echo#2", "STARTING", "worker-22", "4243", NULL), "replica #2 row");
        ok(column_of(s, "echo/Echo#1", "4242") == column_of(s, "echo/Echo#2", "4243") &&
                   column_of(s, "echo/Echo#1", "4242") == column_of(s, "REPLICA ", "PID"),
           "replica PID column is aligned under its header");
        ok(row_has(s, "needs 64 CPUs", "llm/Generator", "1", NULL), "the pending replica and its reason");
        free(s);

        s = render(cli_render_status, "{\"config_error\":null,\"applications\":{}}", &r);
        is_int(r, 0, "empty status renders");
        ok(strstr(s, "No applications") && !strstr(s, "CONFIG ERROR"), "empty: says so, no config error");
        free(s);

        s = render(cli_render_status, "[1,2]", &r);
        is_int(r, -EINVAL, "a non-object answer is refused");
        free(s);

        s = render(cli_render_status,
                   "{\"applications\":{\"a\":{\"status\":\"RUNNING\",\"message\":\"evil\\u001b[2Jtext\\nmore\"}}}", &r);
        ok(r == 0 && !strchr(s, '\033') && strstr(s, "evil?[2Jtext more"), "control characters are neutralised");
        free(s);
}

static void test_nodes_table(void) {
        int r;
        char *s = render(cli_render_nodes, nodes_json, &r);

        is_int(r, 0, "nodes renders");
        comment(s);
        ok(row_has(s, "NODE ", "IP", "STATE", "CPU", "MEMORY", "GPU", "REPLICAS", "HEARTBEAT", NULL), "nodes header");
        ok(row_has(s, "worker-1", "127.0.0.2", "ALIVE", "1.5/4", "2Gi/8Gi", "0.5/2", "0.4s ago", "accel 1/4",
                   "group=cpu", NULL),
           "worker-1: used/total CPU, memory, GPU, custom, labels, heartbeat");
        ok(row_has(s, "worker-2", "127.0.0.3", "DEAD", "0/8", " 0/16Gi", "42.0s ago", NULL), "worker-2 is DEAD");
        ok(column_of(s, "worker-1", "ALIVE") == column_of(s, "worker-2", "DEAD"), "STATE column is aligned");
        free(s);

        s = render(cli_render_nodes, "{\"nodes\":[]}", &r);
        ok(r == 0 && strstr(s, "No nodes"), "no nodes: says so");
        free(s);
        s = render(cli_render_nodes, "{\"nodes\":5}", &r);
        is_int(r, -EINVAL, "nodes that are not an array are refused");
        free(s);
}

static void test_url(void) {
        struct http_url u;

        ok(http_url_parse("http://localhost:8265", &u) == 0 && streq(u.host, "localhost") && streq(u.port, "8265") &&
                   streq(u.authority, "localhost:8265"),
           "http://localhost:8265");
        ok(http_url_parse("HTTP://10.0.0.1:80/", &u) == 0 && streq(u.host, "10.0.0.1") && streq(u.port, "80"),
           "upper-case scheme, trailing slash");
        ok(http_url_parse("http://[::1]:8265", &u) == 0 && streq(u.host, "::1") && streq(u.authority, "[::1]:8265"),
           "IPv6 in brackets");
        ok(http_url_parse("http://head.example", &u) == 0 && streq(u.port, "80"), "port defaults to 80");
        const char *bad[] = { "https://localhost:8265", "localhost:8265", "http://", "http://:8265",
                              "http://host:", "http://host:0", "http://host:65536", "http://host:123456",
                              "http://host:80/api", "http://user@host:80", "http://[::1", "http://[]:80",
                              "http://[1.2.3.4]:80", "http://ho st:80", "http://host:80?x", "ftp://x" };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                ok(http_url_parse(bad[i], &u) == -EINVAL, "rejects %s", bad[i]);
}

static int parse_str(const char *s, bool eof, struct http_response *ret) {
        return http_response_parse(s, strlen(s), eof, HTTP_BODY_MAX, ret);
}

static void test_response_parser(void) {
        struct http_response res = {};
        const char *cl = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}";
        const char *ch = "HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n"
                         "5;ext=1\r\n{\"err\r\nA\r\nor\":\"bad\"}\r\n0\r\nX-Trailer: 1\r\n\r\n";
        int r;

        r = parse_str(cl, false, &res);
        ok(r == 0 && res.status == 200 && res.body_len == 11 && streq(res.body, "{\"ok\":true}"),
           "Content-Length body");
        http_response_done(&res);

        r = parse_str(ch, false, &res);
        ok(r == 0 && res.status == 400 && streq(res.body, "{\"error\":\"bad\"}"), "chunked body with extension and trailer");
        http_response_done(&res);

        /* Every proper prefix needs more bytes, and is malformed if the peer closes there. */
        bool all_again = true, all_bad = true;
        for (const char *const *m = (const char *const[]){ cl, ch, NULL }; *m; m++)
                for (size_t n = 0; n < strlen(*m); n++) {
                        all_again &= http_response_parse(*m, n, false, HTTP_BODY_MAX, &res) == -EAGAIN;
                        all_bad &= http_response_parse(*m, n, true, HTTP_BODY_MAX, &res) == -EBADMSG;
                }
        ok(all_again, "every truncated prefix asks for more");
        ok(all_bad, "every truncated prefix is malformed at EOF");

        r = parse_str("HTTP/1.0 200 OK\r\n\r\nread to close", false, &res);
        is_int(r, -EAGAIN, "no framing: waits for close");
        r = parse_str("HTTP/1.0 200 OK\r\n\r\nread to close", true, &res);
        ok(r == 0 && streq(res.body, "read to close"), "no framing: body ends at close");
        http_response_done(&res);

        r = parse_str("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", false, &res);
        ok(r == 0 && res.status == 204 && res.body_len == 0, "100 Continue is skipped; 204 has no body");
        http_response_done(&res);

        const char *bad[] = {
                "HTTP/2 200 OK\r\n\r\n",
                "HTTP/1.1 20 OK\r\n\r\n",
                "HTTP/1.1 200OK\r\n\r\n",
                "HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\nab",
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
                "HTTP/1.1 200 OK\r\nX: a\r\n folded\r\nContent-Length: 0\r\n\r\n",
                "HTTP/1.1 200 OK\r\nNo colon\r\n\r\n",
                "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
                "HTTP/1.1 101 Switching Protocols\r\n\r\n",
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                r = parse_str(bad[i], true, &res);
                if (!is_int(r, -EBADMSG, "malformed response %zu refused", i))
                        http_response_done(&res);
        }

        const char *big = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
        r = http_response_parse(big, strlen(big), false, 10, &res);
        is_int(r, -EFBIG, "Content-Length over the limit");
        const char *huge = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n";
        r = http_response_parse(huge, strlen(huge), false, HTTP_BODY_MAX, &res);
        is_int(r, -EFBIG, "a huge chunk size is refused, not overflowed");
}

/* ---- end to end against a fake serve-head ------------------------------------------------------- */

struct fake {
        pid_t pid;
        int port;
        int request_fd; /* read end: the request the server received */
};

/* Forks a server on 127.0.0.1:ephemeral that reads one request (headers and Content-Length body),
 * writes it to a pipe, answers `response` and exits. */
static int fake_start(struct fake *f, const char *response) {
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t al = sizeof(a);
        int p[2], s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(s, 4) < 0 ||
            getsockname(s, (struct sockaddr *)&a, &al) < 0 || pipe2(p, O_CLOEXEC) < 0)
                return -errno;
        fflush(stdout);
        f->pid = fork();
        if (f->pid < 0)
                return -errno;
        if (f->pid == 0) {
                char req[65536];
                size_t len = 0;
                int c = accept(s, NULL, NULL);
                if (c < 0)
                        _exit(1);
                for (;;) {
                        ssize_t n = read(c, req + len, sizeof(req) - 1 - len);
                        if (n <= 0)
                                break;
                        len += (size_t)n;
                        req[len] = 0;
                        char *end = strstr(req, "\r\n\r\n");
                        char *clh = strcasestr(req, "\r\nContent-Length:");
                        if (end && (size_t)(end + 4 - req) + (clh ? strtoul(clh + 17, NULL, 10) : 0) <= len)
                                break;
                }
                if (write(p[1], req, len) < 0)
                        _exit(1);
                close(p[1]);
                if (write(c, response, strlen(response)) < 0)
                        _exit(1);
                close(c);
                _exit(0);
        }
        close(s);
        close(p[1]);
        f->port = ntohs(a.sin_port);
        f->request_fd = p[0];
        return 0;
}

/* Waits for the server; returns what it received (malloc'd). */
static char *fake_finish(struct fake *f) {
        char *buf = calloc(1, 65537);
        size_t len = 0;
        ssize_t n;
        while (buf && (n = read(f->request_fd, buf + len, 65536 - len)) > 0)
                len += (size_t)n;
        close(f->request_fd);
        waitpid(f->pid, NULL, 0);
        return buf;
}

struct run_result {
        int status;
        char *out, *err;
};

static struct run_result run_cli(const char *const *args) {
        struct run_result r = {};
        char *argv[16] = { (char *)"serve" };
        size_t outn = 0, errn = 0;
        int argc = 1;
        for (; args[argc - 1]; argc++)
                argv[argc] = (char *)args[argc - 1];
        FILE *out = open_memstream(&r.out, &outn), *err = open_memstream(&r.err, &errn);
        r.status = cli_main(argc, argv, out, err);
        fclose(out);
        fclose(err);
        return r;
}

/* On failure, shows what the command printed, as TAP comments. */
static void show(bool good, const struct run_result *r) {
        if (good)
                return;
        comment(r->out);
        comment(r->err);
}

static void run_result_done(struct run_result *r) {
        free(r->out);
        free(r->err);
}

static void test_end_to_end(void) {
        struct fake f;
        char addr[64], tokfile[] = "/tmp/test_cli_tokenXXXXXX", yaml[] = "/tmp/test_cli_appsXXXXXX";
        const char body[] = "applications:\n  - name: echo\n    import_path: echo:app\n";
        struct run_result r;
        char *req;
        int fd;

        fd = mkstemp(tokfile);
        ok(fd >= 0 && write(fd, "s3cret-token\n", 13) == 13, "token file written");
        close(fd);
        fd = mkstemp(yaml);
        ok(fd >= 0 && write(fd, body, strlen(body)) == (ssize_t)strlen(body), "apps file written");
        close(fd);
        unsetenv("SERVE_API_TOKEN");
        unsetenv("SERVE_ADDRESS");

        /* deploy: token from --token-file (after the command), body as sent */
        if (fake_start(&f, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}") == 0) {
                snprintf(addr, sizeof(addr), "http://127.0.0.1:%d", f.port);
                r = run_cli((const char *[]){ "--address", addr, "deploy", yaml, "--token-file", tokfile, NULL });
                req = fake_finish(&f);
                show(is_int(r.status, 0, "deploy succeeds"), &r);
                ok(r.out && strncmp(r.out, "deployed ", 9) == 0 && strstr(r.out, yaml) && strchr(r.out, '\n') == r.out + strlen(r.out) - 1,
                   "deploy prints one line 'deployed FILE'");
                ok(req && strncmp(req, "PUT /api/serve/applications/ HTTP/1.1\r\n", 39) == 0, "deploy sends PUT /api/serve/applications/");
                ok(req && strstr(req, "\r\nAuthorization: Bearer s3cret-token\r\n"), "deploy sends the trimmed token as a Bearer header");
                ok(req && strstr(req, "\r\n\r\n") && streq(strstr(req, "\r\n\r\n") + 4, body), "deploy sends the file as the body");
                char clh[64];
                snprintf(clh, sizeof(clh), "\r\nContent-Length: %zu\r\n", strlen(body));
                ok(req && strstr(req, clh), "with its Content-Length");
                free(req);
                run_result_done(&r);
        } else
                ok(false, "fake server starts");

        /* deploy rejected: the error is printed (naming the user's file), exit 1; SERVE_API_TOKEN wins over the default file */
        setenv("SERVE_API_TOKEN", "env-token", 1);
        const char *e400 = "{\"error\":\"PUT /api/serve/applications/:3:5: applications[0].import_path: missing ':'\"}";
        static char r400[512];
        snprintf(r400, sizeof(r400), "HTTP/1.1 400 Bad Request\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
                 strlen(e400), e400);
        if (fake_start(&f, r400) == 0) {
                snprintf(addr, sizeof(addr), "http://127.0.0.1:%d", f.port);
                r = run_cli((const char *[]){ "deploy", "--address", addr, yaml, NULL });
                req = fake_finish(&f);
                is_int(r.status, 1, "a rejected deploy exits 1");
                char want[128];
                snprintf(want, sizeof(want), "serve: %s:3:5: applications[0].import_path: missing ':'\n", yaml);
                ok(r.err && streq(r.err, want),
                   "the rejection reason is printed with the file's name");
                show(r.err && strstr(r.err, "serve: ") && !strstr(r.err, "PUT /api"), &r);
                ok(req && strstr(req, "Authorization: Bearer env-token\r\n"), "SERVE_API_TOKEN is used");
                free(req);
                run_result_done(&r);
        }
        unsetenv("SERVE_API_TOKEN");

        /* status over a chunked answer */
        static char chunked[8192];
        snprintf(chunked, sizeof(chunked), "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%zx\r\n%s\r\n0\r\n\r\n",
                 strlen(status_json), status_json);
        if (fake_start(&f, chunked) == 0) {
                snprintf(addr, sizeof(addr), "http://127.0.0.1:%d", f.port);
                setenv("SERVE_ADDRESS", addr, 1);
                r = run_cli((const char *[]){ "status", NULL });
                req = fake_finish(&f);
                show(is_int(r.status, 0, "status succeeds"), &r);
                ok(r.out && strstr(r.out, "CONFIG ERROR") && strstr(r.out, "needs 64 CPUs"), "status prints the tables");
                ok(req && strncmp(req, "GET /api/serve/applications/ HTTP/1.1\r\n", 39) == 0 && !strstr(req, "Authorization"),
                   "status GETs without a token (SERVE_ADDRESS used)");
                free(req);
                run_result_done(&r);
                unsetenv("SERVE_ADDRESS");
        }

        /* nodes --json: pretty JSON as is */
        static char plain[8192];
        snprintf(plain, sizeof(plain), "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n%s", strlen(nodes_json), nodes_json);
        if (fake_start(&f, plain) == 0) {
                snprintf(addr, sizeof(addr), "--address=http://127.0.0.1:%d", f.port);
                r = run_cli((const char *[]){ "nodes", "--json", addr, NULL });
                req = fake_finish(&f);
                is_int(r.status, 0, "nodes --json succeeds");
                cJSON *j = r.out ? cJSON_Parse(r.out) : NULL;
                ok(j && strchr(r.out, '\n') != r.out + strlen(r.out) - 1 && strstr(r.out, "\"worker-2\""),
                   "nodes --json prints the API's JSON, pretty");
                cJSON_Delete(j);
                ok(req && strncmp(req, "GET /api/cluster/nodes HTTP/1.1\r\n", 33) == 0, "nodes GETs /api/cluster/nodes");
                free(req);
                run_result_done(&r);
        }

        /* shutdown -y sends DELETE with the token */
        if (fake_start(&f, "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"ok\":true}") == 0) {
                snprintf(addr, sizeof(addr), "http://127.0.0.1:%d", f.port);
                r = run_cli((const char *[]){ "--token-file", tokfile, "shutdown", "-y", "--address", addr, NULL });
                req = fake_finish(&f);
                is_int(r.status, 0, "shutdown -y succeeds");
                ok(req && strncmp(req, "DELETE /api/serve/applications/ HTTP/1.1\r\n", 42) == 0 &&
                           strstr(req, "Authorization: Bearer s3cret-token\r\n"),
                   "shutdown sends DELETE with the token");
                free(req);
                run_result_done(&r);
        }

        /* 401 from the server */
        if (fake_start(&f, "HTTP/1.1 401 Unauthorized\r\nContent-Length: 44\r\n\r\n{\"error\":\"missing or invalid bearer token\"}\n") == 0) {
                snprintf(addr, sizeof(addr), "http://127.0.0.1:%d", f.port);
                r = run_cli((const char *[]){ "--token-file", tokfile, "shutdown", "--yes", "--address", addr, NULL });
                free(fake_finish(&f));
                is_int(r.status, 1, "a refused token exits 1");
                ok(r.err && strstr(r.err, "missing or invalid bearer token") && strstr(r.err, tokfile),
                   "says the token (and its file) was refused");
                run_result_done(&r);
        }

        /* unreachable: a port nobody listens on */
        {
                struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
                socklen_t al = sizeof(a);
                int s = socket(AF_INET, SOCK_STREAM, 0);
                bind(s, (struct sockaddr *)&a, sizeof(a));
                getsockname(s, (struct sockaddr *)&a, &al);
                close(s);
                snprintf(addr, sizeof(addr), "http://127.0.0.1:%d", ntohs(a.sin_port));
                r = run_cli((const char *[]){ "status", "--address", addr, NULL });
                char want[128];
                snprintf(want, sizeof(want), "cannot reach serve-head at %s: Connection refused", addr);
                is_int(r.status, 1, "unreachable serve-head exits 1");
                show(ok(r.err && strstr(r.err, want), "says: %s", want), &r);
                run_result_done(&r);
        }

        /* token problems, confirmation and usage errors never reach a server */
        r = run_cli((const char *[]){ "deploy", yaml, "--token-file", "/nonexistent/api-token", "--address", "http://127.0.0.1:1", NULL });
        is_int(r.status, 1, "a missing token file exits 1");
        ok(r.err && strstr(r.err, "/nonexistent/api-token") && strstr(r.err, "No such file"), "names the token file");
        run_result_done(&r);

        int saved = dup(STDIN_FILENO), devnull = open("/dev/null", O_RDONLY);
        dup2(devnull, STDIN_FILENO);
        r = run_cli((const char *[]){ "shutdown", "--token-file", tokfile, "--address", "http://127.0.0.1:1", NULL });
        dup2(saved, STDIN_FILENO);
        close(saved);
        close(devnull);
        is_int(r.status, 1, "shutdown without --yes and no terminal exits 1");
        ok(r.err && strstr(r.err, "--yes") && !strstr(r.err, "cannot reach"), "it refuses before connecting");
        run_result_done(&r);

        struct {
                const char *args[6];
                int status;
                const char *says;
        } usage[] = {
                { { "frobnicate", NULL }, 2, "unknown command" },
                { { "deploy", NULL }, 2, "missing argument" },
                { { "status", "extra", NULL }, 2, "unexpected argument" },
                { { "config", "--json", NULL }, 2, "--json" },
                { { "status", "-y", NULL }, 2, "--yes" },
                { { "status", "--bogus", NULL }, 2, "unknown option" },
                { { "status", "--address", NULL }, 2, "needs a value" },
                { { "status", "--address", "https://x:1", NULL }, 2, "invalid address" },
                { { "--address", "http://x:1", NULL }, 2, "Usage:" },
        };
        for (size_t i = 0; i < ELEMENTSOF(usage); i++) {
                r = run_cli(usage[i].args);
                show(ok(r.status == usage[i].status && r.err && strstr(r.err, usage[i].says),
                        "usage error %zu: exit %d, says '%s'", i, usage[i].status, usage[i].says),
                     &r);
                run_result_done(&r);
        }

        r = run_cli((const char *[]){ "--help", NULL });
        ok(r.status == 0 && r.out && strstr(r.out, "run FILE") && strstr(r.out, "status") && strstr(r.out, "deploy FILE") &&
                   strstr(r.out, "nodes") && strstr(r.out, "shutdown") && strstr(r.out, "config") &&
                   strstr(r.out, "--address") && strstr(r.out, "--token-file") && strstr(r.out, "SERVE_API_TOKEN"),
           "serve --help lists every command and the global options");
        run_result_done(&r);
        r = run_cli((const char *[]){ "shutdown", "--help", NULL });
        ok(r.status == 0 && r.out && strstr(r.out, "--yes") && strstr(r.out, "--address"), "serve shutdown --help");
        run_result_done(&r);
        r = run_cli((const char *[]){ "help", "status", NULL });
        ok(r.status == 0 && r.out && strstr(r.out, "--json"), "serve help status");
        run_result_done(&r);

        unlink(tokfile);
        unlink(yaml);
}

int main(void) {
        test_status_worker_groups();
        signal(SIGPIPE, SIG_IGN);
        test_status_table();
        test_nodes_table();
        test_url();
        test_response_parser();
        test_end_to_end();
        return tap_done();
}
