/* The cloud-init user-data a provider's `create` hook receives for a new node of a worker group:
 * a #cloud-config document that installs the serve package (from the group's apt source, at its
 * package version), writes /etc/serve/worker.yaml (head address, node name, labels, the group's
 * shape) and the join token, and starts serve-worker. Pure: no I/O, no logging. */
#pragma once

#include <stdint.h>

#include "common/nodecfg.h"

/* The user-data for node `node_name` of group g: a #cloud-config document (malloc'd). join_token
 * NULL renders "REDACTED" in its place. c->autoscaler_head_address must be set (cluster.yaml
 * requires it as soon as a group has a provider). Returns 0 and *ret, -EINVAL without a head
 * address, or -ENOMEM. */
int userdata_render(const struct cluster_config *c, const struct worker_group *g, const char *node_name,
                    const char *join_token, char **ret);

/* A hash of everything in g's rendered user-data except node name and token (shape, labels,
 * apt source, package version, head address, transport): nodes whose serve.config label differs
 * are outdated. The label's value is this hash as 16 lowercase hex digits. */
uint64_t userdata_config_hash(const struct cluster_config *c, const struct worker_group *g);

/* s as one YAML scalar that reads back as exactly s, in any YAML 1.1 or 1.2 parser, as a mapping
 * key or a value, in block or flow context: plain when it is a harmless word ("cpu",
 * "cpu-3f9a2c"), otherwise double-quoted with every quote, backslash, control character, line
 * or paragraph separator and byte order mark escaped (invalid UTF-8 becomes U+FFFD). Returns 0
 * and *ret (malloc'd), or -ENOMEM. */
int userdata_yaml_scalar(const char *s, char **ret);
