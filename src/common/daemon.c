#include <errno.h>
#include <signal.h>
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
