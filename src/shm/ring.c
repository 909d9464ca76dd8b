/* SPSC ring of variable-length records; see ring.h for the layout and the doorbell protocol.
 *
 * Memory ordering, by pair:
 *   (H) producer's store-release of head in ring_publish()  <->  consumer's load-acquire of head
 *       in ring_next(): the records written before publishing are visible to the consumer.
 *   (T) consumer's store-release of tail in ring_release()  <->  producer's load-acquire of tail
 *       in ring_alloc()/ring_free_space(): the consumer is done reading a record's bytes before
 *       the producer overwrites them.
 *   (S) Dekker handshake for the doorbell: the consumer stores consumer_sleeping = 1 (seq_cst)
 *       then reloads head (seq_cst); the producer stores head, issues a seq_cst fence, then loads
 *       consumer_sleeping. At least one side sees the other's store, so either the consumer sees
 *       the new head and stays awake, or the producer sees the sleeper and rings the doorbell.
 *
 * The peer may be hostile: each side uses only its private size/mask/cursors for addressing, and
 * every value read from shared memory (the peer's cursor, record headers) is read once and
 * validated before it is used. */

#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "macros.h"
#include "ring.h"

/* Cursors are 32-bit and free-running; head - tail <= size must be decidable, so size <= 2^31.
 * Keep a margin: the segment caps rings at 1 GiB anyway. */
#define RING_SIZE_MIN 4096u
#define RING_SIZE_MAX (1u << 30)

static inline uint32_t record_bytes(uint32_t len) {
        return RING_HDR_SIZE + ALIGN_TO(len, RING_ALIGN);
}

size_t ring_footprint(uint32_t size) {
        return sizeof(struct ring_shared) + (size_t) size;
}

int ring_attach(struct ring *r, void *mem, uint32_t size, bool init) {
        if (!r || !mem)
                return -EINVAL;
        if (size < RING_SIZE_MIN || size > RING_SIZE_MAX || (size & (size - 1)) != 0)
                return -EINVAL;
        if ((uintptr_t) mem % RING_CACHELINE != 0)
                return -EINVAL;

        struct ring_shared *sh = mem;
        if (init) {
                /* Before the segment is shared with anyone: no ordering needed. */
                atomic_store_explicit(&sh->head, 0, memory_order_relaxed);
                atomic_store_explicit(&sh->tail, 0, memory_order_relaxed);
                atomic_store_explicit(&sh->consumer_sleeping, 0, memory_order_relaxed);
                memset(sh->pad_, 0, sizeof(sh->pad_));
        }

        /* A view starts at the cursor value the creator wrote (0); we deliberately do not trust
         * whatever the shared header says now. */
        *r = (struct ring) {
                .sh = sh,
                .data = (uint8_t *) mem + sizeof(struct ring_shared),
                .size = size,
                .mask = size - 1,
                .max_payload = size / 4,
                .local = 0,
                .cached = 0,
        };
        return 0;
}

uint32_t ring_max_payload(const struct ring *r) {
        return r->max_payload;
}

/* Producer: loads the consumer's tail and checks it against our own cursor. A legitimate tail
 * never passes our (unpublished) head and never falls more than `size` behind it.
 * Returns 0 and the new tail, or -EBADMSG. */
static int producer_reload_tail(struct ring *r, uint32_t *ret_tail) {
        /* Pairs with the store-release of tail in ring_release() (T). */
        uint32_t t = atomic_load_explicit(&r->sh->tail, memory_order_acquire);
        if (r->local - t > r->size)
                return -EBADMSG;
        *ret_tail = t;
        return 0;
}

static inline void write_hdr(struct ring *r, uint32_t pos, uint32_t len, uint16_t type,
                             uint16_t flags) {
        struct ring_record_hdr h = { .len = len, .type = type, .flags = flags };
        memcpy(r->data + pos, &h, sizeof(h));
}

int ring_alloc(struct ring *r, uint16_t type, uint16_t flags, uint32_t len, void **ret_payload) {
        if (type == RING_TYPE_PAD)
                return -EINVAL;
        if (len > r->max_payload)
                return -EMSGSIZE;

        uint32_t rec = record_bytes(len);
        uint32_t pos = r->local & r->mask;
        uint32_t contiguous = r->size - pos;
        /* A record never wraps: if it does not fit before the end, a PAD fills the rest. Both
         * are multiples of 8, so the PAD always has room for its header. */
        uint32_t need = rec <= contiguous ? rec : contiguous + rec;

        if (r->size - (r->local - r->cached) < need) {
                uint32_t t;
                int k = producer_reload_tail(r, &t);
                if (k < 0)
                        return k;
                r->cached = t;
                if (r->size - (r->local - r->cached) < need)
                        return -EAGAIN;
        }

        if (rec > contiguous) {
                write_hdr(r, pos, contiguous - RING_HDR_SIZE, RING_TYPE_PAD, 0);
                r->local += contiguous;
                pos = 0;
        }

        write_hdr(r, pos, len, type, flags);
        r->local += rec;
        *ret_payload = r->data + pos + RING_HDR_SIZE;
        return 0;
}

bool ring_publish(struct ring *r) {
        /* Pairs with the load-acquire of head in ring_next() (H). */
        atomic_store_explicit(&r->sh->head, r->local, memory_order_release);

        /* Pairs with the seq_cst store of consumer_sleeping and the seq_cst reload of head in
         * ring_consumer_prepare_sleep() (S): orders our head store before the load below. */
        atomic_thread_fence(memory_order_seq_cst);
        if (!atomic_load_explicit(&r->sh->consumer_sleeping, memory_order_relaxed))
                return false;

        /* Only one publish per sleep wins the exchange, so the doorbell rings once. */
        return atomic_exchange_explicit(&r->sh->consumer_sleeping, 0, memory_order_relaxed) != 0;
}

uint32_t ring_free_space(struct ring *r) {
        uint32_t t;
        if (producer_reload_tail(r, &t) < 0)
                return 0;
        r->cached = t;
        return r->size - (r->local - t);
}

/* Consumer: loads the producer's head and checks it. A legitimate head never runs more than
 * `size` ahead of what we have not released, and never moves behind our read cursor: measured
 * from r->local, the distance must be <= size. Returns 0 or -EBADMSG. */
static int consumer_reload_head(struct ring *r) {
        /* Pairs with the store-release of head in ring_publish() (H). */
        uint32_t h = atomic_load_explicit(&r->sh->head, memory_order_acquire);
        if (h - r->local > r->size)
                return -EBADMSG;
        r->cached = h;
        return 0;
}

/* Reads a header exactly once from shared memory: the producer may rewrite it at any time, so
 * what we validate must be what we use (no double fetch). */
static inline struct ring_record_hdr read_hdr_once(const struct ring *r, uint32_t pos) {
        /* pos is a multiple of 8 and data is 64-byte aligned: one aligned 8-byte load. */
        typedef uint64_t __attribute__((may_alias)) u64_alias;
        uint64_t raw = *(const volatile u64_alias *) (const void *) (r->data + pos);
        struct ring_record_hdr h;
        memcpy(&h, &raw, sizeof(h));
        return h;
}

int ring_next(struct ring *r, struct ring_record *ret) {
        for (;;) {
                if (r->local == r->cached) {
                        int k = consumer_reload_head(r);
                        if (k < 0)
                                return k;
                        if (r->local == r->cached)
                                return 0;
                }

                uint32_t avail = r->cached - r->local; /* <= size, checked on reload */
                uint32_t pos = r->local & r->mask;     /* a multiple of 8: we only advance by
                                                        * validated multiples of 8 */
                if (avail < RING_HDR_SIZE)
                        return -EBADMSG;

                struct ring_record_hdr h = read_hdr_once(r, pos);
                uint32_t to_end = r->size - pos;

                if (h.type == RING_TYPE_PAD) {
                        /* A PAD covers exactly the rest of the data area, and all of it must be
                         * published. */
                        if (h.len != to_end - RING_HDR_SIZE || to_end > avail)
                                return -EBADMSG;
                        r->local += to_end;
                        continue;
                }

                if (h.len > r->max_payload)
                        return -EBADMSG;
                uint32_t rec = record_bytes(h.len); /* no overflow: len <= size / 4 */
                if (rec > avail || rec > to_end)
                        return -EBADMSG;

                r->local += rec;
                *ret = (struct ring_record) {
                        .type = h.type,
                        .flags = h.flags,
                        .len = h.len,
                        .payload = r->data + pos + RING_HDR_SIZE,
                };
                return 1;
        }
}

void ring_release(struct ring *r) {
        /* Pairs with the load-acquire of tail in producer_reload_tail() (T): our reads of the
         * released records happen before the producer reuses their space. */
        atomic_store_explicit(&r->sh->tail, r->local, memory_order_release);
}

bool ring_consumer_prepare_sleep(struct ring *r) {
        /* (S): the seq_cst store and the seq_cst load below pair with the producer's head store
         * + seq_cst fence + load of consumer_sleeping in ring_publish(). */
        atomic_store_explicit(&r->sh->consumer_sleeping, 1, memory_order_seq_cst);
        uint32_t h = atomic_load_explicit(&r->sh->head, memory_order_seq_cst);
        if (h != r->local) {
                /* Something arrived (or there are unread records): stay awake. The data itself
                 * is acquired by ring_next()'s load-acquire of head (H), not by this load. */
                atomic_store_explicit(&r->sh->consumer_sleeping, 0, memory_order_relaxed);
                return false;
        }
        return true;
}

void ring_consumer_awake(struct ring *r) {
        /* No ordering needed: a stale 1 only costs the producer one spurious doorbell, and the
         * records themselves are acquired through head (H). */
        atomic_store_explicit(&r->sh->consumer_sleeping, 0, memory_order_relaxed);
}
