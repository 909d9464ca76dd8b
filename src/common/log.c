#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <systemd/sd-journal.h>
#include <time.h>

#include "log.h"

static const char *log_ident = "serve";
static int log_max_level = LOG_INFO;
static bool log_journal;

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
                char ln[32];
                snprintf(ln, sizeof ln, "CODE_LINE=%d", line);
                sd_journal_send("MESSAGE=%s", msg, "PRIORITY=%d", level, "SYSLOG_IDENTIFIER=%s", log_ident,
                                "CODE_FILE=%s", file, ln,
                                ctx_app ? "SERVE_APP=%s" : "SERVE_APP=%s", ctx_app ? ctx_app : "",
                                "SERVE_DEPLOYMENT=%s", ctx_deployment ? ctx_deployment : "",
                                "SERVE_REPLICA=%s", ctx_replica ? ctx_replica : "", NULL);
        } else {
                char ctx[512] = "";
                struct timespec ts;
                struct tm tm;
                char tbuf[32];

                if (ctx_app || ctx_deployment || ctx_replica)
                        snprintf(ctx, sizeof ctx, " [%s%s%s%s%s]", ctx_app ? ctx_app : "",
                                 ctx_deployment ? "/" : "", ctx_deployment ? ctx_deployment : "",
                                 ctx_replica ? "#" : "", ctx_replica ? ctx_replica : "");
                clock_gettime(CLOCK_REALTIME, &ts);
                gmtime_r(&ts.tv_sec, &tm);
                strftime(tbuf, sizeof tbuf, "%H:%M:%S", &tm);
                fprintf(stderr, "%s.%03ld %s[%d] %s:%s %s\n", tbuf, ts.tv_nsec / 1000000, log_ident, (int)getpid(),
                        level_name(level), ctx, msg);
        }
        errno = saved;
        return -err;
}
