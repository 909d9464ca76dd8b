/* What every libFuzzer target here shares: undefined behaviour halts the run (it is a finding,
 * not a log line), and check() aborts on a violated invariant so libFuzzer saves the input. */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

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
