/* Which replica a scale-down stops first (supervisor_next_to_stop): the fewest requests must
 * wait for a drain, so one still starting goes first, then an idle one, then the least busy;
 * never simply the first in the list. */
#include <stdlib.h>
#include <string.h>

#include "supervisor.h"
#include "tap.h"

static struct replica *add(struct deployment *d, enum replica_state st, int ongoing) {
        struct replica *rep = calloc(1, sizeof *rep);
        if (!rep)
                abort();
        rep->dep = d;
        rep->state = st;
        rep->ongoing = ongoing;
        list_add_tail(&d->replicas, &rep->be.link);
        return rep;
}

/* What replica_stop() does to the candidates: they leave STARTING/READY. */
static void stop(struct replica *rep) { rep->state = REPLICA_DRAINING; }

int main(void) {
        struct deployment d = {};

        list_init(&d.replicas);
        struct replica *busy3 = add(&d, REPLICA_READY, 3);
        struct replica *dead = add(&d, REPLICA_DEAD, 0);
        struct replica *idle = add(&d, REPLICA_READY, 0);
        struct replica *busy1 = add(&d, REPLICA_READY, 1);
        struct replica *starting = add(&d, REPLICA_STARTING, 0);
        (void)dead;

        struct replica *r = supervisor_next_to_stop(&d);
        ok(r == starting, "a replica still starting goes first (it serves nothing yet)");
        stop(r);
        r = supervisor_next_to_stop(&d);
        ok(r == idle, "then an idle one, not the first in the list (which is busy)");
        stop(r);
        r = supervisor_next_to_stop(&d);
        ok(r == busy1, "then the least busy");
        stop(r);
        r = supervisor_next_to_stop(&d);
        ok(r == busy3, "then the busiest");
        stop(r);
        ok(supervisor_next_to_stop(&d) == NULL, "nothing when none is starting or ready");

        struct deployment e = {};
        list_init(&e.replicas);
        struct replica *a = add(&e, REPLICA_READY, 2);
        struct replica *b = add(&e, REPLICA_DRAINING, 0);
        (void)b;
        ok(supervisor_next_to_stop(&e) == a, "a draining replica is never picked again");
        struct deployment f = {};
        list_init(&f.replicas);
        ok(supervisor_next_to_stop(&f) == NULL, "an empty deployment has nothing to stop");

        struct deployment *all[] = { &d, &e };
        for (size_t i = 0; i < 2; i++)
                while (!list_empty(&all[i]->replicas)) {
                        struct replica *x = list_first(&all[i]->replicas, struct replica, be.link);
                        list_del(&x->be.link);
                        free(x);
                }
        return tap_done();
}
