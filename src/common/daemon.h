/* What the daemons (serve run, serve-worker, serve-head) share about being a service: signals
 * through a signalfd, and systemd's watchdog. */
#pragma once

#include <stdint.h>

/* For the daemons: blocks SIGINT, SIGTERM and SIGHUP (they arrive through the returned
 * signalfd, read in the event loop) and ignores SIGPIPE. Returns the fd or -errno. */
int signalfd_daemon(void);

/* For the data-plane daemons: the soft limit of open files raised to the hard one (our own caps
 * bound connections, not RLIMIT_NOFILE's default 1024), and large allocations (bodies, frames,
 * responses) returned to the kernel when freed instead of kept at a flood's peak by glibc's
 * adaptive thresholds. */
void daemon_set_limits(void);

/* systemd's watchdog (WatchdogSec=): WATCHDOG=1 is sent from the event loop at half the
 * interval, so a stuck loop gets the daemon restarted. Disabled when not asked for. */
struct watchdog {
        uint64_t interval_ns, next_ns;
};
void watchdog_init(struct watchdog *w);
/* Pings when due. Returns the nanoseconds until the next ping (UINT64_MAX when disabled). */
uint64_t watchdog_tick(struct watchdog *w, uint64_t now);
