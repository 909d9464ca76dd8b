/* What every libFuzzer target here shares: undefined behaviour halts the run (it is a finding,
 * not a log line), and check() aborts on a violated invariant so libFuzzer saves the input. */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
const char *__ubsan_default_options(void);

const char *__ubsan_default_options(void) {
        return "halt_on_error=1:print_stacktrace=1";
}

#define check(cond)              \
        do {                     \
                if (!(cond))     \
                        abort(); \
        } while (0)

/* The input as a program: read little-endian values from it; past its end they read as 0. */
struct input {
        const uint8_t *p;
        size_t n;
};

static inline uint8_t get8(struct input *in) {
        if (in->n == 0)
                return 0;
        in->n--;
        return *in->p++;
}

static inline uint16_t get16(struct input *in) {
        uint16_t lo = get8(in);
        return (uint16_t)(lo | get8(in) << 8);
}

static inline uint32_t get32(struct input *in) {
        uint32_t lo = get16(in);
        return lo | (uint32_t)get16(in) << 16;
}

static inline uint64_t get64(struct input *in) {
        uint64_t lo = get32(in);
        return lo | (uint64_t)get32(in) << 32;
}

/* Copies up to len input bytes into dst, zero-filling what the input lacks. */
static inline void get_bytes(struct input *in, void *dst, size_t len) {
        size_t k = len < in->n ? len : in->n;
        memcpy(dst, in->p, k);
        memset((uint8_t *)dst + k, 0, len - k);
        in->p += k;
        in->n -= k;
}
