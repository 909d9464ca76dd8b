/* Logging: journald (structured, with SERVE_* fields) when stderr is connected to the journal,
 * plain "LEVEL message" lines on stderr otherwise. An error is logged once, where it is handled. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <syslog.h>

#include "macros.h"

void log_init(const char *ident);
void log_set_level(int level);            /* LOG_ERR .. LOG_DEBUG; default LOG_INFO */
int log_get_level(void);
/* The node this process belongs to (journald field SERVE_NODE=, and a prefix on stderr);
 * inherited by child processes through $SERVE_NODE. */
void log_set_node(const char *node);

/* Logs and returns -|err| (or err unchanged if it is 0), so callers can write
 * `return log_error_errno(r, "Failed to open %s: %m", path);` — %m prints strerror(|err|). */
int log_full_errno(int level, int err, const char *file, int line, const char *fmt, ...) _printf_(5, 6);

#define log_full(level, ...) log_full_errno((level), 0, __FILE__, __LINE__, __VA_ARGS__)
#define log_debug(...) log_full(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_full(LOG_INFO, __VA_ARGS__)
#define log_notice(...) log_full(LOG_NOTICE, __VA_ARGS__)
#define log_warning(...) log_full(LOG_WARNING, __VA_ARGS__)
#define log_error(...) log_full(LOG_ERR, __VA_ARGS__)
#define log_error_errno(e, ...) log_full_errno(LOG_ERR, (e), __FILE__, __LINE__, __VA_ARGS__)
#define log_warning_errno(e, ...) log_full_errno(LOG_WARNING, (e), __FILE__, __LINE__, __VA_ARGS__)

/* One cause that remote parties can trigger at will (a misbehaving peer, a full budget): logged
 * the first time, then at most once a minute with how many times it happened meanwhile, so a
 * flood cannot flood the journal. One static limiter per cause. */
struct log_limiter {
        uint64_t last_ns;
        uint64_t suppressed;
};
void log_limited(struct log_limiter *l, int level, const char *fmt, ...) _printf_(3, 4);

/* Structured context added to every following line of this thread (journald fields
 * SERVE_APP=, SERVE_DEPLOYMENT=, SERVE_REPLICA=; NULL clears). */
void log_set_context(const char *app, const char *deployment, const char *replica);
