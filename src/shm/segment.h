/* A replica's shared-memory segment: one memfd (mode 0600, sealed against resizing, never a
 * /dev/shm name) holding a control block and two rings: requests (proxy -> replica) and
 * responses (replica -> proxy). Each ring has a doorbell eventfd. The segment and its eventfds
 * travel to the replica over a unix socket (SCM_RIGHTS). */
#pragma once

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "ring.h"

#define SEGMENT_MAGIC 0x5345525645534547ull /* "SERVESEG" */
#define SEGMENT_VERSION 1u

/* The control block at the start of the segment. Written by the replica: never trusted. */
struct segment_ctl {
        uint64_t magic;
        uint32_t version;
        uint32_t ring_size;
        _Alignas(RING_CACHELINE) _Atomic uint64_t heartbeat_ns; /* replica: CLOCK_MONOTONIC */
        _Atomic uint32_t replica_state;                         /* replica: SEGMENT_STATE_* */
};

enum {
        SEGMENT_STATE_STARTING = 0,
        SEGMENT_STATE_READY = 1,
        SEGMENT_STATE_DRAINING = 2,
};

struct segment {
        int fd;                /* the memfd */
        void *base;
        size_t len;
        uint32_t ring_size;    /* our own copy: never re-read from shared memory */
        struct segment_ctl *ctl;
        struct ring req;       /* proxy produces, replica consumes */
        struct ring resp;      /* replica produces, proxy consumes */
        int req_bell;          /* eventfd: rung by the proxy when the replica sleeps */
        int resp_bell;         /* eventfd: rung by the replica when the proxy sleeps */
};

/* Creates a segment with two rings of ring_size bytes each (power of two, >= 4096), plus the two
 * doorbell eventfds. `name` only labels the memfd in /proc (memfd:NAME).
 * Returns 0 or a negative errno. seg is zeroed/reset on failure. */
int segment_create(const char *name, uint32_t ring_size, struct segment *ret);

/* Maps a segment received from the proxy (the replica side): checks the size with fstat and
 * the magic/version, takes ownership of the three fds. Returns 0, -EBADMSG, or a negative errno. */
int segment_attach(int memfd, int req_bell, int resp_bell, struct segment *ret);

/* Unmaps and closes; accepts a zeroed or already-closed segment. */
void segment_close(struct segment *seg);

/* Rings an eventfd doorbell (write 1). Returns 0 or a negative errno (EAGAIN is success). */
int doorbell_ring(int efd);

/* Sends `len` bytes plus up to 8 fds as one SOCK_SEQPACKET message. Returns 0 or -errno. */
int unix_send_fds(int sock, const void *data, size_t len, const int *fds, size_t n_fds);

/* Receives one message of at most `cap` bytes and up to `max_fds` fds (set O_CLOEXEC).
 * Returns the byte count (0 at EOF) and stores the fds; extra or truncated fds/bytes -> -EBADMSG
 * (received fds are closed). */
ssize_t unix_recv_fds(int sock, void *buf, size_t cap, int *ret_fds, size_t max_fds, size_t *ret_n_fds);
