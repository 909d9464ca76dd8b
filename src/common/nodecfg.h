/* worker.yaml and cluster.yaml: the node agent's and the head's own configuration, parsed with
 * yamltree into plain structs with every default filled in. Errors read like apps.yaml's:
 * "FILE:LINE:COLUMN: field.path: what is wrong"; unknown keys are errors. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/config.h" /* struct custom_resource */

#define NODECFG_DEFAULT_JOIN_TOKEN_FILE "/etc/serve/join-token"
#define NODECFG_DEFAULT_API_TOKEN_FILE "/etc/serve/api-token"
#define NODECFG_DEFAULT_API_PORT 8265
#define NODECFG_DEFAULT_CONTROL_PORT 8266
#define NODECFG_DEFAULT_HTTP_PORT 8000
#define NODECFG_DEFAULT_DATA_PORT 8267
#define NODECFG_DEFAULT_METRICS_PORT 8268
#define NODECFG_DEFAULT_WORKER_STATE_DIR "/var/lib/serve/worker"
/* Where serve-head keeps its CA with the default --state-dir: a worker on the head's own
 * machine trusts it when its join token is a bare secret. */
#define NODECFG_DEFAULT_CA_FILE "/var/lib/serve/pki/ca.crt"
#define NODECFG_DEFAULT_NODE_CERT_VALIDITY_S (24 * 3600)

/* How nodes talk to each other: mutually authenticated TLS 1.3 (the default), or plaintext on
 * an isolated network (an explicit opt-out, warned about at every start). */
enum transport { TRANSPORT_TLS, TRANSPORT_PLAINTEXT };

struct node_label {
        char *key;
        char *value;
};

/* What a node offers. In worker.yaml each field set here overrides what discovery found (the
 * has_* flags say which); in a worker group it describes the nodes the group would launch. */
struct resource_spec {
        bool has_num_cpus;
        double num_cpus;        /* > 0, may be fractional */
        bool has_memory;
        uint64_t memory;        /* bytes, > 0 */
        bool has_num_gpus;
        unsigned num_gpus;      /* whole GPUs */
        bool has_gpu_memory;
        uint64_t gpu_memory;    /* bytes per GPU, > 0 */
        bool has_custom;
        struct custom_resource *custom; /* name -> amount >= 0 */
        size_t n_custom;
};

struct worker_config {
        char *path;             /* the file name used in messages */
        char *head_address;     /* "HOST:PORT" as written */
        char *head_host;        /* the HOST part, IPv6 without brackets */
        int head_port;          /* 1..65535 */
        char *join_token_file;  /* default NODECFG_DEFAULT_JOIN_TOKEN_FILE */
        char *node_name;        /* default gethostname() */
        char *node_address;     /* IP address; default "127.0.0.1"; data and metrics bind it;
                                 * "auto": the worker resolves it at start (net_local_address_towards) */
        char *http_host;        /* IP address the proxy binds; default "0.0.0.0" */
        int http_port;          /* default 8000 */
        int data_port;          /* default 8267 */
        int metrics_port;       /* default 8268; 0 = no metrics endpoint */
        struct node_label *labels;
        size_t n_labels;
        struct resource_spec resources;
        enum transport transport; /* default TRANSPORT_TLS */
        char *state_dir;        /* the node's key and certificates; default NODECFG_DEFAULT_WORKER_STATE_DIR */
        char *ca_file;          /* the cluster CA to trust with a bare join token; NULL: the default
                                 * NODECFG_DEFAULT_CA_FILE if it exists */
};

struct head_config {
        char *api_host;         /* IP address; default "127.0.0.1" */
        int api_port;           /* default 8265 */
        char *control_host;     /* IP address; default "0.0.0.0" */
        int control_port;       /* default 8266 */
        char *api_token_file;   /* default NODECFG_DEFAULT_API_TOKEN_FILE */
        char *join_token_file;  /* default NODECFG_DEFAULT_JOIN_TOKEN_FILE */
};

/* Labels every node of a group carries in its worker.yaml (the renderer, userdata.h, writes
 * them): "group" is the group's name, "serve.config" the hash of the group's node config. A
 * group's own labels may not set serve.config, and "group" only to the group's name. */
#define NODECFG_LABEL_GROUP "group"
#define NODECFG_LABEL_CONFIG "serve.config"
#define NODECFG_MAX_PROVIDER_OPTIONS 64
#define NODECFG_MAX_PACKAGE_VERSION 64

struct worker_group {
        char *name;             /* required, unique */
        int min_nodes;          /* default 0 */
        int max_nodes;          /* >= min_nodes; default min_nodes */
        struct resource_spec resources; /* with a provider, has_num_cpus is always true */
        struct node_label *labels;
        size_t n_labels;
        char *provider;         /* NULL when absent: the autoscaler cannot launch this group */
        struct node_label *provider_options; /* name ([A-Za-z0-9_]+) -> the scalar's text */
        size_t n_provider_options;           /* <= NODECFG_MAX_PROVIDER_OPTIONS */
        double idle_timeout_s;  /* >= 0; default 60 */
        double boot_timeout_s;  /* > 0; default 600: create to registration */
        double cost;            /* per node-hour, >= 0; -1 when not given */
        int max_surge;          /* >= 1; default 1: nodes of this group launched at once */
        char *apt_source;       /* a sources.list line ("deb ..."); NULL: the image's own sources */
        char *package_version;  /* Debian version of the serve package; NULL: the newest */
        int line, column;       /* where the entry starts, for later error messages */
};

/* How eagerly the cluster autoscaler adds nodes for pending replicas. */
enum upscaling_mode { UPSCALING_DEFAULT, UPSCALING_CONSERVATIVE, UPSCALING_AGGRESSIVE };

struct cluster_config {
        char *path;
        struct head_config head;
        double worker_heartbeat_interval_s; /* > 0; default 1 */
        double worker_timeout_s;            /* > worker_heartbeat_interval_s; default 10 */
        struct worker_group *groups;
        size_t n_groups;
        double autoscaler_interval_s;       /* > 0; default 5 */
        enum upscaling_mode autoscaler_upscaling_mode; /* default UPSCALING_DEFAULT */
        int autoscaler_max_concurrent_launches;        /* >= 1; default 10 */
        char *autoscaler_head_address;      /* "HOST:PORT" new nodes dial; required when a group
                                             * has a provider, NULL otherwise when absent */
        char *autoscaler_head_host;         /* its HOST, IPv6 without brackets */
        int autoscaler_head_port;
        double autoscaler_batch_idle_s;     /* >= 0; default 1 */
        double autoscaler_batch_max_s;      /* >= autoscaler_batch_idle_s; default 10 */
        double autoscaler_reconcile_interval_s; /* > 0; default 60 */
        enum transport transport;           /* default TRANSPORT_TLS */
        char *ca_cert_file, *ca_key_file;   /* tls: an operator's CA; NULL: made in <state-dir>/pki */
        double node_cert_validity_s;        /* tls: >= 10; default NODECFG_DEFAULT_NODE_CERT_VALIDITY_S */
};

/* Parses worker.yaml text; `name` is the file name used in messages. Returns 0 and *ret (free
 * with worker_config_free()), or -EINVAL with *ret_error "FILE:LINE:COLUMN: FIELD: what"
 * (ret_error may be NULL), or -ENOMEM. */
int worker_config_parse(const char *name, const char *text, size_t len, struct worker_config **ret,
                        char **ret_error);
/* Reads and parses a file: as worker_config_parse(), plus -EFBIG or the errno of a failed read,
 * with a message naming the file. */
int worker_config_load_file(const char *path, struct worker_config **ret, char **ret_error);
void worker_config_free(struct worker_config *c);

/* The same for cluster.yaml. An empty file is valid: every default. */
int cluster_config_parse(const char *name, const char *text, size_t len,
                         struct cluster_config **ret, char **ret_error);
int cluster_config_load_file(const char *path, struct cluster_config **ret, char **ret_error);
void cluster_config_free(struct cluster_config *c);

/* A node name: 1 to 200 characters of A-Z a-z 0-9 '.' '_' '-' (host names fit). It is what
 * the node's certificate names, so worker.yaml's node_name must be one. */
bool node_name_valid(const char *name);

/* Reads a join or API token: the file's contents with surrounding whitespace trimmed. The file
 * must not be readable or writable by group or others (a token anyone on the node can read
 * lets anyone join the cluster or change it). Returns 0 and *ret_token (malloc'd), or -EPERM
 * (loose permissions), -EINVAL (empty, or whitespace/control characters inside), -EFBIG, or
 * the errno of a failed open/read; each with *ret_error naming the file (ret_error may be
 * NULL). */
int read_token_file(const char *path, char **ret_token, char **ret_error);
