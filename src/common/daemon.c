#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <systemd/sd-daemon.h>

#include "daemon.h"

int signalfd_daemon(void) {
        sigset_t mask;
        int fd;

        sigemptyset(&mask);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGHUP);
        sigprocmask(SIG_BLOCK, &mask, NULL);
        signal(SIGPIPE, SIG_IGN);
        fd = signalfd(-1, &mask, SFD_CLOEXEC);
        return fd < 0 ? -errno : fd;
}

void watchdog_init(struct watchdog *w) {
        uint64_t usec = 0;

        *w = (struct watchdog){};
        if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0)
                w->interval_ns = usec * 1000 / 2;
}

uint64_t watchdog_tick(struct watchdog *w, uint64_t now) {
        if (!w->interval_ns)
                return UINT64_MAX;
        if (now >= w->next_ns) {
                sd_notify(0, "WATCHDOG=1");
                w->next_ns = now + w->interval_ns;
        }
        return w->next_ns - now;
}

void daemon_set_limits(void) {
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                (void)setrlimit(RLIMIT_NOFILE, &rl);
        }
        (void)mallopt(M_MMAP_THRESHOLD, 256 * 1024);
        (void)mallopt(M_TRIM_THRESHOLD, 1024 * 1024);
}
