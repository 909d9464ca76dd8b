/* Whole and delta `config` messages (config_msg.h): what changed between two epochs, and a
 * worker's held config with a message applied to it. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "config_msg.h"
#include "ctlmsg.h"
#include "macros.h"
#include "spec.h"

static const char *dep_app(const cJSON *d) { return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(d, "app")); }
static const char *dep_name(const cJSON *d) { return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(d, "name")); }

static cJSON *find_dep(const cJSON *deps, const char *app, const char *name) {
        cJSON *it;
        cJSON_ArrayForEach(it, deps)
                if (streq_ptr(dep_app(it), app) && streq_ptr(dep_name(it), name))
                        return it;
        return NULL;
}

/* Equal but for "replicas": a count changes through `assign`, never through `config`. */
static bool dep_same(const cJSON *a, const cJSON *b) {
        const cJSON *x, *y = b->child;
        for (x = a->child; x; x = x->next, y = y->next) {
                if (x->string && streq(x->string, "replicas"))
                        x = x->next;
                if (y && y->string && streq(y->string, "replicas"))
                        y = y->next;
                if (!x || !y)
                        break;
                if (!streq_ptr(x->string, y->string) || !cJSON_Compare(x, y, true))
                        return false;
        }
        return !x && !y;
}

static bool item_same(const cJSON *a, const cJSON *b) {
        return (!a && !b) || (a && b && cJSON_Compare(a, b, true));
}

int config_msg_delta(const cJSON *old, const cJSON *new, cJSON **ret) {
        const cJSON *od = cJSON_GetObjectItemCaseSensitive(old, "deployments");
        const cJSON *nd = cJSON_GetObjectItemCaseSensitive(new, "deployments");
        const cJSON *oe = cJSON_GetObjectItemCaseSensitive(old, "epoch"), *ne = cJSON_GetObjectItemCaseSensitive(new, "epoch");
        static const char *const whole_keys[] = { "routes", "http", "proxy_location" };
        cJSON *m, *up = NULL, *rm = NULL, *it;

        if (!cJSON_IsArray(od) || !cJSON_IsArray(nd) || !cJSON_IsNumber(oe) || !cJSON_IsNumber(ne))
                return -EINVAL;
        m = ctlmsg_new("config");
        if (!m)
                return -ENOMEM;
        bool ok = cJSON_AddNumberToObject(m, "epoch", ne->valuedouble) && cJSON_AddNumberToObject(m, "base", oe->valuedouble);
        for (size_t i = 0; ok && i < ELEMENTSOF(whole_keys); i++) {
                const cJSON *a = cJSON_GetObjectItemCaseSensitive(old, whole_keys[i]);
                const cJSON *b = cJSON_GetObjectItemCaseSensitive(new, whole_keys[i]);
                if (b && !item_same(a, b))
                        ok = cJSON_AddItemToObject(m, whole_keys[i], cJSON_Duplicate(b, true));
        }
        ok = ok && (up = cJSON_AddArrayToObject(m, "deployments")) && (rm = cJSON_AddArrayToObject(m, "deployments_removed"));
        cJSON_ArrayForEach(it, nd) {
                if (!ok)
                        break;
                const cJSON *was = find_dep(od, dep_app(it), dep_name(it));
                if (!was || !dep_same(was, it))
                        ok = cJSON_AddItemToArray(up, cJSON_Duplicate(it, true));
        }
        cJSON_ArrayForEach(it, od) {
                if (!ok)
                        break;
                if (!find_dep(nd, dep_app(it), dep_name(it))) {
                        cJSON *o = cJSON_CreateObject();
                        ok = o && cJSON_AddStringToObject(o, "app", dep_app(it) ?: "") &&
                             cJSON_AddStringToObject(o, "name", dep_name(it) ?: "") && cJSON_AddItemToArray(rm, o);
                        if (!ok)
                                cJSON_Delete(o);
                }
        }
        if (!ok) {
                cJSON_Delete(m);
                return -ENOMEM;
        }
        *ret = m;
        return 0;
}

static int check_routes(const cJSON *routes, char *err, size_t errlen) {
        const cJSON *it;
        int r;

        cJSON_ArrayForEach(it, routes) {
                const char *prefix, *app, *ingress;
                if ((r = ctl_get_string(it, "prefix", 1024, true, &prefix, err, errlen)) < 0 ||
                    (r = ctl_get_string(it, "app", 200, true, &app, err, errlen)) < 0 ||
                    (r = ctl_get_string(it, "ingress", 200, true, &ingress, err, errlen)) < 0)
                        return r;
                if (prefix[0] != '/') {
                        snprintf(err, errlen, "field prefix: must start with '/'");
                        return -EINVAL;
                }
        }
        return 0;
}

static int check_deps(const cJSON *deps, char *err, size_t errlen) {
        const cJSON *it;
        int r;

        cJSON_ArrayForEach(it, deps) {
                struct dep_spec d;
                if ((r = dep_spec_from_json(it, &d, err, errlen)) < 0)
                        return r;
                dep_spec_done(&d);
                /* A message naming one deployment twice is not one a head makes. */
                for (const cJSON *o = it->next; o; o = o->next)
                        if (streq_ptr(dep_app(o), dep_app(it)) && streq_ptr(dep_name(o), dep_name(it))) {
                                snprintf(err, errlen, "deployment %s/%s listed twice", dep_app(it), dep_name(it));
                                return -EINVAL;
                        }
        }
        return 0;
}

int config_msg_apply(cJSON **held, const cJSON *msg, char *err, size_t errlen) {
        const cJSON *routes, *deps, *removed, *http, *it;
        const char *ploc;
        long long epoch, base = -1;
        cJSON *next;
        int r;

        if ((r = ctl_get_int(msg, "epoch", 0, 1ll << 53, true, &epoch, err, errlen)) < 0 ||
            (r = ctl_get_int(msg, "base", 0, 1ll << 53, false, &base, err, errlen)) < 0 ||
            (r = ctl_get_object(msg, "http", false, &http, err, errlen)) < 0 ||
            (r = ctl_get_string(msg, "proxy_location", 64, false, &ploc, err, errlen)) < 0 ||
            (r = ctl_get_array(msg, "routes", CONFIG_MSG_MAX_ITEMS, false, &routes, err, errlen)) < 0 ||
            (r = ctl_get_array(msg, "deployments", CONFIG_MSG_MAX_ITEMS, false, &deps, err, errlen)) < 0 ||
            (r = ctl_get_array(msg, "deployments_removed", CONFIG_MSG_MAX_ITEMS, false, &removed, err, errlen)) < 0 ||
            (r = check_routes(routes, err, errlen)) < 0)
                return r;
        if (base >= 0 && epoch != base + 1) {
                snprintf(err, errlen, "field epoch: a delta goes from one epoch to the next (base %lld, epoch %lld)", base, epoch);
                return -EINVAL;
        }
        cJSON_ArrayForEach(it, removed) {
                const char *app, *name;
                if ((r = ctl_get_string(it, "app", 200, true, &app, err, errlen)) < 0 ||
                    (r = ctl_get_string(it, "name", 200, true, &name, err, errlen)) < 0)
                        return r;
        }
        if ((r = check_deps(deps, err, errlen)) < 0)
                return r;
        if (base < 0) {
                if (removed) {
                        snprintf(err, errlen, "field deployments_removed: only in a delta");
                        return -EINVAL;
                }
                next = cJSON_Duplicate(msg, true);
                if (!next)
                        return -ENOMEM;
                cJSON_Delete(*held);
                *held = next;
                return 0;
        }

        const cJSON *he = *held ? cJSON_GetObjectItemCaseSensitive(*held, "epoch") : NULL;
        if (!cJSON_IsNumber(he) || (long long)he->valuedouble != base)
                return -ESTALE;
        next = cJSON_Duplicate(*held, true);
        cJSON *nd = next ? cJSON_GetObjectItemCaseSensitive(next, "deployments") : NULL;
        if (next && !nd)
                nd = cJSON_AddArrayToObject(next, "deployments");
        if (!nd) {
                cJSON_Delete(next);
                return -ENOMEM;
        }
        /* Removed, then upserted in place (or appended): the order of the rest stays. */
        cJSON_ArrayForEach(it, removed) {
                cJSON *d = find_dep(nd, dep_app(it), dep_name(it));
                if (!d) {
                        cJSON_Delete(next);
                        return -ESTALE; /* we do not hold what the head thinks we hold */
                }
                cJSON_Delete(cJSON_DetachItemViaPointer(nd, d));
        }
        cJSON_ArrayForEach(it, deps) {
                cJSON *d = find_dep(nd, dep_app(it), dep_name(it)), *c = cJSON_Duplicate(it, true);
                if (!c || !(d ? cJSON_ReplaceItemViaPointer(nd, d, c) : cJSON_AddItemToArray(nd, c))) {
                        cJSON_Delete(c);
                        cJSON_Delete(next);
                        return -ENOMEM;
                }
        }
        if (cJSON_GetArraySize(nd) > (int)CONFIG_MSG_MAX_ITEMS) {
                cJSON_Delete(next);
                snprintf(err, errlen, "field deployments: more than %u", CONFIG_MSG_MAX_ITEMS);
                return -EINVAL;
        }
        static const char *const whole_keys[] = { "routes", "http", "proxy_location" };
        for (size_t i = 0; i < ELEMENTSOF(whole_keys); i++) {
                const cJSON *v = cJSON_GetObjectItemCaseSensitive(msg, whole_keys[i]);
                cJSON *c = v ? cJSON_Duplicate(v, true) : NULL;
                if (!v)
                        continue;
                if (!c || !(cJSON_GetObjectItemCaseSensitive(next, whole_keys[i]) ? cJSON_ReplaceItemInObjectCaseSensitive(next, whole_keys[i], c)
                                                                                   : cJSON_AddItemToObject(next, whole_keys[i], c))) {
                        cJSON_Delete(c);
                        cJSON_Delete(next);
                        return -ENOMEM;
                }
        }
        cJSON_SetNumberValue(cJSON_GetObjectItemCaseSensitive(next, "epoch"), (double)epoch);
        cJSON_Delete(*held);
        *held = next;
        return 0;
}
