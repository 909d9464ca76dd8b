/* The C reference for tests/python/test_serve.py: search_ref.out is this program's output for
 * search_ref.in. Regenerate with
 *   cc -O2 -Iexamples/search -o /tmp/search_ref tests/python/search_ref.c examples/search/embed.c examples/search/rank.c -lm
 *   /tmp/search_ref < tests/python/search_ref.in > tests/python/search_ref.out */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include "embed.h"
#include "rank.h"
/* stdin: lines "Q text" then "D text"... "R top_k" ranks; "E text" prints the vector bits */
int main(void) {
        static char line[1 << 20];
        static float docs[1024 * EMBED_DIM], q[EMBED_DIM];
        size_t n = 0;
        struct rank_hit hits[1024];
        while (fgets(line, sizeof line, stdin)) {
                size_t len = strlen(line);
                if (len && line[len - 1] == '\n') line[--len] = 0;
                if (line[0] == 'E') {
                        float v[EMBED_DIM];
                        embed_text(line + 2, len - 2, v);
                        for (int i = 0; i < EMBED_DIM; i++) { uint32_t u; memcpy(&u, &v[i], 4); printf("%08x", u); }
                        printf("\n");
                } else if (line[0] == 'Q') { embed_text(line + 2, len - 2, q); n = 0; }
                else if (line[0] == 'D') embed_text(line + 2, len - 2, docs + EMBED_DIM * n++);
                else if (line[0] == 'R') {
                        size_t k = rank_cpu(q, docs, n, EMBED_DIM, atoi(line + 2), hits);
                        for (size_t i = 0; i < k; i++) printf("%u:%.6f ", hits[i].index, (double) hits[i].score);
                        printf("\n");
                }
        }
}
