/* The `config` message: the resolved deployments, routes and HTTP options every worker holds.
 * serve-head sends it whole to a node that has none (or is behind), and to a node holding the
 * previous epoch only what a reload changed:
 *
 *   {"v":1,"type":"config","epoch":E,"proxy_location":S,"http":{...},     whole
 *    "routes":[{"prefix":P,"app":A,"ingress":D}...],"deployments":[DEP...]}
 *
 *   {"v":1,"type":"config","epoch":E,"base":E-1,                         the changes since E-1
 *    "deployments":[DEP...],                        upserted, whole (dep_spec_to_json)
 *    "deployments_removed":[{"app":A,"name":N}...],
 *    "routes":[...], "http":{...}, "proxy_location":S}     each only when it changed (whole)
 *
 * A deployment is named by (app, name). Its replica count is not part of what changes: workers
 * take counts from `assign`, so an autoscaling decision sends no config. A delta whose base is
 * not the epoch held asks for the whole config (-ESTALE). */
#pragma once

#include <cjson/cJSON.h>
#include <stddef.h>

/* Deployments or routes in one config, at most (a limit on what a peer may send). */
#define CONFIG_MSG_MAX_ITEMS 100000

/* The changes from whole config message old to whole config message new (whose epoch is old's
 * + 1) as a delta message. Returns 0 and *ret, or -ENOMEM / -EINVAL (not whole messages). */
int config_msg_delta(const cJSON *old, const cJSON *new, cJSON **ret);

/* Applies a `config` message (whole, or a delta on top of *held) after checking every field
 * (each deployment with dep_spec_from_json): *held (a whole config message, or NULL) is replaced
 * only on success. Returns 0; -ESTALE for a delta that does not follow *held (ask for the whole
 * config); -EINVAL with err; -ENOMEM. */
int config_msg_apply(cJSON **held, const cJSON *msg, char *err, size_t errlen);
