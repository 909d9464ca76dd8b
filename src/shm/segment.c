/* A replica's shared-memory segment (memfd + two rings + two eventfd doorbells) and the unix
 * socket helpers that carry its fds to the replica.
 *
 * Layout (every part page-aligned, identical on both sides):
 *   [0, 4096)                   struct segment_ctl
 *   [4096, 4096 + R)            request ring  (ring_footprint(ring_size) rounded up to 4096)
 *   [4096 + R, 4096 + 2R)       response ring */

#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "macros.h"
#include "segment.h"

#define SEGMENT_PAGE 4096u
#define SEGMENT_CTL_SIZE SEGMENT_PAGE
#define SEGMENT_RING_MIN 4096u
#define SEGMENT_RING_MAX (1u << 30)
#define UNIX_MAX_FDS 8u

static bool ring_size_valid(uint32_t ring_size) {
        return ring_size >= SEGMENT_RING_MIN && ring_size <= SEGMENT_RING_MAX &&
               (ring_size & (ring_size - 1)) == 0;
}

static size_t ring_area(uint32_t ring_size) {
        return ALIGN_TO(ring_footprint(ring_size), (size_t) SEGMENT_PAGE);
}

static size_t segment_size(uint32_t ring_size) {
        return SEGMENT_CTL_SIZE + 2 * ring_area(ring_size);
}

static void segment_reset(struct segment *seg) {
        *seg = (struct segment) { .fd = -1, .req_bell = -1, .resp_bell = -1 };
}

/* Points the two ring views into a mapped segment. */
static int segment_map_rings(struct segment *seg, bool init) {
        uint8_t *base = seg->base;
        int r = ring_attach(&seg->req, base + SEGMENT_CTL_SIZE, seg->ring_size, init);
        if (r < 0)
                return r;
        return ring_attach(&seg->resp, base + SEGMENT_CTL_SIZE + ring_area(seg->ring_size),
                           seg->ring_size, init);
}

int segment_create(const char *name, uint32_t ring_size, struct segment *ret) {
        _cleanup_close_ int fd = -1, req_bell = -1, resp_bell = -1;
        int r;

        if (!ret)
                return -EINVAL;
        segment_reset(ret);
        if (!name || !ring_size_valid(ring_size))
                return -EINVAL;

        size_t len = segment_size(ring_size);

        fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0)
                return negative_errno();
        if (fchmod(fd, 0600) < 0)
                return negative_errno();
        if (ftruncate(fd, (off_t) len) < 0)
                return negative_errno();
        /* A replica must never be able to shrink the file under the proxy's mapping (SIGBUS on
         * the proxy's next access) or grow it; F_SEAL_SEAL keeps the seals from being lifted. */
        if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
                return negative_errno();

        req_bell = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (req_bell < 0)
                return negative_errno();
        resp_bell = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (resp_bell < 0)
                return negative_errno();

        void *base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (base == MAP_FAILED)
                return negative_errno();

        struct segment seg = {
                .base = base,
                .len = len,
                .ring_size = ring_size,
                .ctl = base,
        };
        /* A fresh memfd reads as zeroes; only the identifying fields need writing. */
        seg.ctl->magic = SEGMENT_MAGIC;
        seg.ctl->version = SEGMENT_VERSION;
        seg.ctl->ring_size = ring_size;
        atomic_store_explicit(&seg.ctl->heartbeat_ns, 0, memory_order_relaxed);
        atomic_store_explicit(&seg.ctl->replica_state, SEGMENT_STATE_STARTING,
                              memory_order_relaxed);

        r = segment_map_rings(&seg, true);
        if (r < 0) {
                munmap(base, len);
                return r;
        }

        seg.fd = TAKE_FD(fd);
        seg.req_bell = TAKE_FD(req_bell);
        seg.resp_bell = TAKE_FD(resp_bell);
        *ret = seg;
        return 0;
}

int segment_attach(int memfd, int req_bell, int resp_bell, struct segment *ret) {
        /* Ownership of the three fds is ours from here on, success or not. */
        _cleanup_close_ int fd = memfd, rq = req_bell, rs = resp_bell;
        struct stat st;

        if (!ret)
                return -EINVAL;
        segment_reset(ret);
        if (fd < 0 || rq < 0 || rs < 0)
                return -EBADF;

        if (fstat(fd, &st) < 0)
                return negative_errno();
        if (!S_ISREG(st.st_mode) || st.st_size < (off_t) SEGMENT_CTL_SIZE ||
            (uint64_t) st.st_size > segment_size(SEGMENT_RING_MAX))
                return -EBADMSG;

        size_t len = (size_t) st.st_size;
        void *base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (base == MAP_FAILED)
                return negative_errno();

        /* Read each field once; everything after this uses our own copies. */
        const volatile struct segment_ctl *vctl = base;
        uint64_t magic = vctl->magic;
        uint32_t version = vctl->version;
        uint32_t ring_size = vctl->ring_size;

        if (magic != SEGMENT_MAGIC || version != SEGMENT_VERSION || !ring_size_valid(ring_size) ||
            segment_size(ring_size) != len) {
                munmap(base, len);
                return -EBADMSG;
        }

        struct segment seg = {
                .base = base,
                .len = len,
                .ring_size = ring_size,
                .ctl = base,
        };
        int r = segment_map_rings(&seg, false);
        if (r < 0) {
                munmap(base, len);
                return r;
        }

        seg.fd = TAKE_FD(fd);
        seg.req_bell = TAKE_FD(rq);
        seg.resp_bell = TAKE_FD(rs);
        *ret = seg;
        return 0;
}

void segment_close(struct segment *seg) {
        if (!seg)
                return;
        /* A zeroed segment has fds of 0 that it does not own: only an open one (base set) owns
         * its fds. */
        if (seg->base) {
                munmap(seg->base, seg->len);
                if (seg->fd >= 0)
                        close(seg->fd);
                if (seg->req_bell >= 0)
                        close(seg->req_bell);
                if (seg->resp_bell >= 0)
                        close(seg->resp_bell);
        }
        segment_reset(seg);
}

int doorbell_ring(int efd) {
        uint64_t one = 1;
        for (;;) {
                ssize_t n = write(efd, &one, sizeof(one));
                if (n == (ssize_t) sizeof(one))
                        return 0;
                if (n >= 0)
                        return -EIO;
                if (errno == EINTR)
                        continue;
                /* The counter is saturated: the consumer has wake-ups pending anyway. */
                if (errno == EAGAIN)
                        return 0;
                return negative_errno();
        }
}

int unix_send_fds(int sock, const void *data, size_t len, const int *fds, size_t n_fds) {
        union {
                struct cmsghdr hdr;
                char buf[CMSG_SPACE(sizeof(int) * UNIX_MAX_FDS)];
        } control;
        struct iovec iov = { .iov_base = (void *) data, .iov_len = len };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

        if (n_fds > UNIX_MAX_FDS || (n_fds > 0 && !fds) || (len > 0 && !data))
                return -EINVAL;

        if (n_fds > 0) {
                memset(&control, 0, sizeof(control));
                mh.msg_control = control.buf;
                mh.msg_controllen = CMSG_SPACE(sizeof(int) * n_fds);
                struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
                cm->cmsg_level = SOL_SOCKET;
                cm->cmsg_type = SCM_RIGHTS;
                cm->cmsg_len = CMSG_LEN(sizeof(int) * n_fds);
                memcpy(CMSG_DATA(cm), fds, sizeof(int) * n_fds);
        }

        for (;;) {
                ssize_t n = sendmsg(sock, &mh, MSG_NOSIGNAL);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return negative_errno();
                /* SOCK_SEQPACKET sends a message whole or not at all. */
                if ((size_t) n != len)
                        return -EIO;
                return 0;
        }
}

static void close_fds(const int *fds, size_t n) {
        for (size_t i = 0; i < n; i++)
                if (fds[i] >= 0)
                        close(fds[i]);
}

ssize_t unix_recv_fds(int sock, void *buf, size_t cap, int *ret_fds, size_t max_fds,
                      size_t *ret_n_fds) {
        union {
                struct cmsghdr hdr;
                char buf[CMSG_SPACE(sizeof(int) * UNIX_MAX_FDS)];
        } control;
        struct iovec iov = { .iov_base = buf, .iov_len = cap };
        struct msghdr mh = {
                .msg_iov = &iov,
                .msg_iovlen = 1,
                .msg_control = control.buf,
                .msg_controllen = sizeof(control.buf),
        };
        int got[UNIX_MAX_FDS];
        size_t n_got = 0;
        bool bad = false;
        ssize_t n;

        if ((cap > 0 && !buf) || (max_fds > 0 && !ret_fds))
                return -EINVAL;

        do
                n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
        while (n < 0 && errno == EINTR);
        if (n < 0)
                return negative_errno();

        /* Collect every fd the kernel installed, so that we can close them all on error. */
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
                if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
                        continue;
                size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                const uint8_t *p = CMSG_DATA(cm);
                for (size_t i = 0; i < k; i++) {
                        int fd;
                        memcpy(&fd, p + i * sizeof(int), sizeof(int));
                        if (n_got < ELEMENTSOF(got))
                                got[n_got++] = fd;
                        else {
                                close(fd);
                                bad = true;
                        }
                }
        }

        /* Without ret_n_fds the caller cannot take fds: any fd is then unexpected. */
        size_t allowed = ret_n_fds ? max_fds : 0;
        if (bad || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || n_got > allowed) {
                close_fds(got, n_got);
                return -EBADMSG;
        }

        if (n_got > 0)
                memcpy(ret_fds, got, sizeof(int) * n_got);
        if (ret_n_fds)
                *ret_n_fds = n_got;
        return n;
}
