/* The routing table's whole and delta messages: what a worker holds after applying them is what
 * the head built, a delta it cannot place asks for the whole table, a bad one changes nothing. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cluster/routing_table.h"
#include "tap.h"

static bool same(const struct routing_table *a, const struct routing_table *b) {
        if (a->version != b->version || a->n_nodes != b->n_nodes || a->n_deps != b->n_deps || a->n_ready != b->n_ready)
                return false;
        for (size_t i = 0; i < a->n_nodes; i++)
                if (a->nodes[i].id != b->nodes[i].id || strcmp(a->nodes[i].name, b->nodes[i].name) ||
                    strcmp(a->nodes[i].address, b->nodes[i].address) || a->nodes[i].data_port != b->nodes[i].data_port ||
                    a->nodes[i].min_serial != b->nodes[i].min_serial)
                        return false;
        for (size_t i = 0; i < a->n_deps; i++)
                if (a->deps[i].id != b->deps[i].id || strcmp(a->deps[i].app, b->deps[i].app) ||
                    a->deps[i].placed != b->deps[i].placed || a->deps[i].max_ongoing != b->deps[i].max_ongoing)
                        return false;
        return memcmp(a->ready, b->ready, a->n_ready * sizeof *a->ready) == 0;
}

/* A head-side table: nodes 1..n_nodes, deployments 100.., node k has k % 3 ready of each. */
static void build(struct routing_table *t, uint64_t version, unsigned n_nodes, unsigned n_deps, uint64_t serial_of_2) {
        char name[32], addr[32];
        routing_table_init(t);
        for (unsigned k = 1; k <= n_nodes; k++) {
                snprintf(name, sizeof name, "node-%u", k);
                snprintf(addr, sizeof addr, "10.0.0.%u", k);
                routing_table_add_node(t, k, name, addr, 9000, k == 2 ? serial_of_2 : 0);
        }
        for (unsigned d = 0; d < n_deps; d++) {
                snprintf(name, sizeof name, "D%u", d);
                routing_table_add_dep(t, 100 + d, "app", name, 5, 10);
                for (unsigned k = 1; k <= n_nodes; k++)
                        routing_table_add_ready(t, 100 + d, k, k % 3);
        }
        routing_table_seal(t);
        t->version = version;
}

/* Sends old -> new as a delta into the worker's table w (through text, as on the wire). */
static int deliver(cJSON *m, struct routing_table *w, char *err, size_t errlen) {
        char *text = cJSON_PrintUnformatted(m);
        cJSON *back = cJSON_Parse(text);
        int r = routing_table_apply(w, back, err, errlen);
        cJSON_Delete(back);
        cJSON_Delete(m);
        free(text);
        return r;
}

int main(void) {
        struct routing_table h1, h2, h3, w;
        char err[256] = "";
        cJSON *m = NULL;

        routing_table_init(&w);
        build(&h1, 7, 50, 4, 0);
        is_int(deliver(routing_table_full_message(&h1), &w, err, sizeof err), 0, "a whole table applies");
        ok(same(&w, &h1), "the worker holds what the head built");

        /* Node 51 joins, node 2's certificates are revoked, node 3 moves, one count changes. */
        build(&h2, 0, 51, 4, 12345);
        h2.nodes[2].data_port = 9001;
        h2.ready[0].count = 9;
        is_int(routing_table_delta_message(&h1, &h2, &m), 1, "a change makes a delta");
        h2.version = 8;
        char *text = cJSON_PrintUnformatted(m);
        ok(text && strlen(text) < 600, "the delta is small (%zu bytes)", text ? strlen(text) : 0);
        free(text);
        is_int(deliver(m, &w, err, sizeof err), 0, "the delta applies");
        ok(same(&w, &h2), "the worker holds the new table");
        is_int((int)w.nodes[1].min_serial, 12345, "the revocation boundary arrived");

        is_int(routing_table_delta_message(&h2, &h2, &m), 0, "no change, no message");

        /* A deployment goes, with its ready counts. */
        build(&h3, 0, 51, 3, 12345);
        h3.nodes[2].data_port = 9001;
        h3.ready[0].count = 9;
        is_int(routing_table_delta_message(&h2, &h3, &m), 1, "a removed deployment makes a delta");
        cJSON *stale = cJSON_Duplicate(m, true);
        is_int(deliver(m, &w, err, sizeof err), 0, "the removal applies");
        h3.version = 9;
        ok(same(&w, &h3), "the deployment and its counts are gone");
        is_int(deliver(stale, &w, err, sizeof err), -ESTALE, "a delta on another version asks for the whole table");
        ok(same(&w, &h3), "and changes nothing");

        /* Bad messages change nothing. */
        static const char *const bad[] = {
                "{\"version\":10,\"base\":9,\"ready\":[[100,999,1]]}",
                "{\"version\":10,\"base\":9,\"ready\":[[100,1]]}",
                "{\"version\":10,\"base\":9,\"ready\":[[100,1,-1]]}",
                "{\"version\":11,\"base\":9}",
                "{\"version\":10,\"base\":9,\"nodes\":[{\"id\":60,\"name\":\"node-1\",\"address\":\"a\",\"data_port\":1}]}",
                "{\"version\":10,\"base\":9,\"nodes\":[{\"id\":60,\"name\":\"x\",\"address\":\"a\",\"data_port\":0}]}",
                "{\"version\":10,\"base\":9,\"nodes\":[{\"id\":60,\"name\":\"x\",\"address\":\"a\",\"data_port\":1,\"min_serial\":\"1x\"}]}",
                "{\"version\":10,\"base\":9,\"nodes_removed\":[999]}",
                "{\"version\":10,\"full\":true,\"nodes_removed\":[1]}",
                "{\"version\":10,\"full\":true,\"ready\":[[100,1,0]]}",
                "{\"version\":10,\"base\":9,\"deployments\":[{\"id\":1,\"app\":\"app\",\"name\":\"D0\",\"max_ongoing\":1,\"placed\":0}]}",
        };
        for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
                cJSON *b = cJSON_Parse(bad[i]);
                is_int(routing_table_apply(&w, b, err, sizeof err), -EINVAL, "refused: %s (%s)", bad[i], err);
                cJSON_Delete(b);
        }
        ok(same(&w, &h3), "bad messages changed nothing");

        routing_table_done(&h1);
        routing_table_done(&h2);
        routing_table_done(&h3);
        routing_table_done(&w);
        return tap_done();
}
