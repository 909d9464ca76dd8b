/* Single-producer single-consumer ring of variable-length records in shared memory.
 *
 * Cursors are free-running 32-bit byte counts masked on use; the producer's (head) and the
 * consumer's (tail) live on separate cache lines. A record is an 8-byte header (payload length,
 * type) followed by its payload, padded to 8 bytes; a record never wraps: when it does not fit
 * before the end of the data area, a PAD record fills the rest and the record starts at 0.
 *
 * The shared header is writable by both sides, and the peer may be hostile (a replica is
 * untrusted code): each side keeps its own copy of the size and its own cursor, and every value
 * read from shared memory is validated before use. A consumer that reads from an untrusted
 * producer must copy a payload before parsing it (the producer can still write to it).
 *
 * Doorbell protocol: the consumer announces that it is going to sleep
 * (ring_consumer_prepare_sleep); the producer's ring_publish() then returns true exactly once,
 * and the caller rings the doorbell (an eventfd). A busy ring costs no syscalls. */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RING_CACHELINE 64
#define RING_HDR_SIZE 8u
#define RING_ALIGN 8u
#define RING_TYPE_PAD 0xffffu /* reserved: filler up to the end of the data area */

struct ring_shared {
        _Alignas(RING_CACHELINE) _Atomic uint32_t head;  /* written by the producer only */
        _Alignas(RING_CACHELINE) _Atomic uint32_t tail;  /* written by the consumer only */
        _Alignas(RING_CACHELINE) _Atomic uint32_t consumer_sleeping;
        _Alignas(RING_CACHELINE) char pad_[RING_CACHELINE];
};

/* Header in front of every record (in shared memory). */
struct ring_record_hdr {
        uint32_t len;  /* payload bytes, not counting this header or padding */
        uint16_t type; /* caller-defined; RING_TYPE_PAD reserved */
        uint16_t flags;
};

/* One process's private view of a ring. */
struct ring {
        struct ring_shared *sh;
        uint8_t *data;
        uint32_t size;       /* bytes in the data area, a power of two */
        uint32_t mask;
        uint32_t max_payload;
        uint32_t local;      /* producer: unpublished head; consumer: unreleased tail */
        uint32_t cached;     /* producer: last tail seen; consumer: last head seen */
};

struct ring_record {
        uint16_t type;
        uint16_t flags;
        uint32_t len;
        const void *payload; /* valid until ring_release() */
};

/* Bytes of shared memory a ring with `size` data bytes occupies (header + data). */
size_t ring_footprint(uint32_t size);

/* Sets up a view over mem (ring_footprint(size) bytes, 64-byte aligned). `size` must be a power
 * of two >= 4096. With `init`, zeroes the shared header (the creating side does this once).
 * Returns 0 or -EINVAL. */
int ring_attach(struct ring *r, void *mem, uint32_t size, bool init);

/* Largest payload a single record can carry (size / 4, so a record always fits after a PAD). */
uint32_t ring_max_payload(const struct ring *r);

/* Producer: reserves a record of `len` payload bytes and writes its header; the record becomes
 * visible to the consumer at the next ring_publish(). On success stores the payload pointer in
 * *ret_payload and returns 0. Returns -EAGAIN when there is not enough free space now,
 * -EMSGSIZE when len > ring_max_payload(), -EBADMSG when the consumer's cursor is impossible
 * (the peer is broken or hostile). */
int ring_alloc(struct ring *r, uint16_t type, uint16_t flags, uint32_t len, void **ret_payload);

/* Producer: makes every record allocated so far visible (one release store for a batch).
 * Returns true when the consumer was asleep and must be woken (ring its doorbell). */
bool ring_publish(struct ring *r);

/* Producer: free bytes right now (for flow control decisions). */
uint32_t ring_free_space(struct ring *r);

/* Consumer: reads the next record into *ret. Returns 1 (a record), 0 (empty) or -EBADMSG (a
 * malformed record or impossible producer cursor: the producer is broken). The payload stays
 * valid until ring_release(). */
int ring_next(struct ring *r, struct ring_record *ret);

/* Consumer: hands the space of every record read so far back to the producer. */
void ring_release(struct ring *r);

/* Consumer: announces it will sleep on the doorbell. Returns true when the ring is still empty
 * (go to sleep), false when a record arrived meanwhile (the announcement is withdrawn). */
bool ring_consumer_prepare_sleep(struct ring *r);

/* Consumer: woke up (or decided not to sleep); withdraws the announcement. */
void ring_consumer_awake(struct ring *r);
