/* Minimal TAP output for unit tests: ok/not ok lines, a plan at the end, exit status 1 on any
 * failure. Assertions say what a user would notice, with the values involved. */
#pragma once

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int tap_n, tap_failed;

#define ok(cond, ...)                                                                 \
        ({                                                                            \
                bool _c = (cond);                                                     \
                tap_n++;                                                              \
                if (!_c) tap_failed++;                                                \
                printf("%s %d - ", _c ? "ok" : "not ok", tap_n);                      \
                printf(__VA_ARGS__);                                                  \
                printf("\n");                                                         \
                if (!_c) printf("#   failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
                _c;                                                                   \
        })

#define is_int(got, want, ...)                                                        \
        ({                                                                            \
                long long _g = (got), _w = (want);                                    \
                bool _r = ok(_g == _w, __VA_ARGS__);                                  \
                if (!_r) printf("#   got %lld, want %lld\n", _g, _w);                 \
                _r;                                                                   \
        })

static inline int tap_done(void) {
        printf("1..%d\n", tap_n);
        if (tap_failed) printf("# %d of %d failed\n", tap_failed, tap_n);
        return tap_failed ? 1 : 0;
}
