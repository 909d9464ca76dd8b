#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <systemd/sd-journal.h>
#include <time.h>

#include "log.h"

static const char *log_ident = "serve";
static int log_max_level = LOG_INFO;
static bool log_journal;

static char log_node[128];
static __thread const char *ctx_app, *ctx_deployment, *ctx_replica;

/* JOURNAL_STREAM holds "dev:ino" of the journal stream; only trust it when it is our stderr. */
static bool stderr_is_journal(void) {
        const char *e = getenv("JOURNAL_STREAM");
        unsigned long long dev, ino;
        struct stat st;

        if (!e || sscanf(e, "%llu:%llu", &dev, &ino) != 2)
                return false;
        if (fstat(STDERR_FILENO, &st) < 0)
                return false;
        return st.st_dev == dev && st.st_ino == ino;
}

void log_init(const char *ident) {
        const char *lvl = getenv("SERVE_LOG_LEVEL");

        if (ident)
                log_ident = ident;
        if (getenv("SERVE_NODE"))
                snprintf(log_node, sizeof log_node, "%s", getenv("SERVE_NODE"));
        log_journal = stderr_is_journal();
        if (lvl) {
                if (streq(lvl, "debug"))
                        log_max_level = LOG_DEBUG;
                else if (streq(lvl, "warning"))
                        log_max_level = LOG_WARNING;
                else if (streq(lvl, "error"))
                        log_max_level = LOG_ERR;
        }
}

void log_set_level(int level) { log_max_level = level; }

void log_set_node(const char *node) {
        snprintf(log_node, sizeof log_node, "%s", node ? node : "");
        /* Replicas started from here inherit it. */
        if (node)
                setenv("SERVE_NODE", node, 1);
}
int log_get_level(void) { return log_max_level; }

void log_set_context(const char *app, const char *deployment, const char *replica) {
        ctx_app = app;
        ctx_deployment = deployment;
        ctx_replica = replica;
}

static const char *level_name(int level) {
        switch (level) {
        case LOG_DEBUG: return "debug";
        case LOG_INFO: return "info";
        case LOG_NOTICE: return "notice";
        case LOG_WARNING: return "warning";
        default: return "error";
        }
}

int log_full_errno(int level, int err, const char *file, int line, const char *fmt, ...) {
        char msg[2048];
        va_list ap;
        int saved = errno;

        if (err < 0)
                err = -err;
        if (level > log_max_level)
                return -err;

        errno = err ? err : saved; /* makes %m print the error we were given */
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);

        if (log_journal) {
                /* Only the fields that are set: `journalctl SERVE_APP=x` then finds exactly x's lines. */
                char f_msg[2100], f_pri[32], f_id[96], f_file[256], f_line[32], f_app[160], f_dep[160], f_rep[160], f_node[160];
                struct iovec iov[9];
                int n = 0;
#define FIELD(buf, ...) (snprintf(buf, sizeof buf, __VA_ARGS__), iov[n++] = (struct iovec){ buf, strlen(buf) })
                FIELD(f_msg, "MESSAGE=%s", msg);
                FIELD(f_pri, "PRIORITY=%d", level);
                FIELD(f_id, "SYSLOG_IDENTIFIER=%s", log_ident);
                FIELD(f_file, "CODE_FILE=%s", file);
                FIELD(f_line, "CODE_LINE=%d", line);
                if (ctx_app)
                        FIELD(f_app, "SERVE_APP=%s", ctx_app);
                if (ctx_deployment)
                        FIELD(f_dep, "SERVE_DEPLOYMENT=%s", ctx_deployment);
                if (ctx_replica)
                        FIELD(f_rep, "SERVE_REPLICA=%s", ctx_replica);
                if (log_node[0])
                        FIELD(f_node, "SERVE_NODE=%s", log_node);
#undef FIELD
                sd_journal_sendv(iov, n);
        } else {
                char ctx[512] = "";
                struct timespec ts;
                struct tm tm;
                char tbuf[32];

                /* "[app/Replica#n]" (the replica id names its deployment), or "[app/Deployment]". */
                if (ctx_app || ctx_deployment || ctx_replica)
                        snprintf(ctx, sizeof ctx, " [%s%s%s]", ctx_app ? ctx_app : "", ctx_app ? "/" : "",
                                 ctx_replica ? ctx_replica : ctx_deployment ? ctx_deployment : "");
                clock_gettime(CLOCK_REALTIME, &ts);
                gmtime_r(&ts.tv_sec, &tm);
                strftime(tbuf, sizeof tbuf, "%H:%M:%S", &tm);
                fprintf(stderr, "%s.%03ld %s%s%s%s[%d] %s:%s %s\n", tbuf, ts.tv_nsec / 1000000, log_ident,
                        log_node[0] ? "(" : "", log_node, log_node[0] ? ")" : "", (int)getpid(), level_name(level), ctx, msg);
        }
        errno = saved;
        return -err;
}

void log_limited(struct log_limiter *l, int level, const char *fmt, ...) {
        struct timespec ts;
        uint64_t now;
        char msg[512];
        va_list ap;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        now = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
        if (l->last_ns && now - l->last_ns < 60ull * 1000000000ull) {
                l->suppressed++;
                return;
        }
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        if (l->suppressed)
                log_full(level, "%s (and %llu more times in the last minute)", msg, (unsigned long long)l->suppressed);
        else
                log_full(level, "%s", msg);
        l->last_ns = now;
        l->suppressed = 0;
}
