/* A YAML document as a small tree that keeps every node's line:column, and typed getters that
 * check a node against a schema and report "FILE:LINE:COLUMN: field.path: what is wrong".
 * Shared by the config file parsers (apps.yaml, worker.yaml, cluster.yaml) so each of them is
 * only its schema. Pure library: nothing here logs. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "macros.h"

/* The schemas are a few levels deep; this only stops pathological input early. */
#define YT_MAX_TREE_DEPTH 128
/* A 4 MiB file of "[a,a,a,...]" would otherwise cost ~100 bytes of tree per input byte pair. */
#define YT_MAX_NODES (1u << 20)
/* Free-form values are bounded so converting them to JSON cannot exhaust the stack. */
#define YT_MAX_VALUE_DEPTH 64
/* Names end up in paths, shared-memory segment names and URLs elsewhere. */
#define YT_MAX_NAME 128

enum yt_type { YT_SCALAR, YT_SEQUENCE, YT_MAPPING };

struct yt_node {
        enum yt_type type;
        bool plain;             /* plain scalar, no !!str: null/bool/number resolution applies */
        char *text;             /* scalars: NUL-terminated, but may hold NULs before len */
        size_t len;
        int line, column;       /* 1-based */
        struct yt_node **items; /* sequence: items; mapping: key, value, key, value, ... */
        size_t n_items, cap;
};

/* One parse: the file name for messages, the first error, and the dotted path of the field
 * being looked at. Initialise with `struct yt_parser p = { .name = "file.yaml" };` and free
 * p.error when done. */
struct yt_parser {
        const char *name;
        char *error;
        size_t n_nodes;
        char path[1024];
        size_t path_len;
};

void yt_node_free(struct yt_node *n);

/* Builds the tree of the (single) document. Aliases, unknown tags, a second document, more
 * than YT_MAX_NODES nodes or YT_MAX_TREE_DEPTH levels are errors. Returns 0 and *ret (NULL for
 * an empty stream), or -EINVAL (message in p->error) or -ENOMEM. */
int yt_load_tree(struct yt_parser *p, const char *text, size_t len, struct yt_node **ret);

/* A whole YAML document as JSON (null for an empty one), with YAML's types for plain scalars.
 * Returns 0 and *ret, or -EINVAL ("NAME:LINE:COLUMN: ..." in *ret_error) or -ENOMEM. */
struct cJSON;
int yt_text_to_json(const char *name, const char *text, size_t len, struct cJSON **ret, char **ret_error);

/* Reads a whole file (pipes and /dev/stdin too) of at most max_size bytes into a malloc'd,
 * NUL-terminated buffer. Returns 0, *ret_text and *ret_len; -EFBIG ("PATH: too large (over N
 * MiB)") or the errno of a failed open/read ("PATH: strerror"), with the message in
 * *ret_error when ret_error is not NULL. */
int yt_read_file(const char *path, size_t max_size, char **ret_text, size_t *ret_len,
                 char **ret_error);

/* ---- messages ---- */

/* Record "NAME:LINE:COLUMN: PATH: message" as p->error (replacing an earlier one); return
 * -EINVAL, or -ENOMEM when the message could not be built. */
_printf_(4, 5) int yt_fail_at(struct yt_parser *p, int line, int column, const char *fmt, ...);
_printf_(3, 4) int yt_fail(struct yt_parser *p, const struct yt_node *at, const char *fmt, ...);

#define YT_DESCRIBE_MAX 48
#define YT_DESCRIBE_BUF (YT_DESCRIBE_MAX * 4 + 16)

/* Copies up to `max` bytes of s into buf (room for max*4+8), escaping quotes, backslashes and
 * control characters so a message stays one readable line. Returns buf. */
char *yt_escape(const char *s, size_t len, size_t max, char *buf);

/* What a node is, for "got ..." in messages: a quoted scalar, or the kind of collection.
 * Returns a static string or buf. */
const char *yt_describe(const struct yt_node *n, char buf[static YT_DESCRIBE_BUF]);
#define YT_DESCRIBE(n) yt_describe((n), (char[YT_DESCRIBE_BUF]){})

/* Appends ".key" (or "key" at the top) or e.g. "[3]" to the field path; returns the length to
 * pass to yt_path_pop(). A path too long for the buffer is cut, which only shortens messages. */
_printf_(2, 3) size_t yt_path_push(struct yt_parser *p, const char *fmt, ...);
size_t yt_path_push_key(struct yt_parser *p, const struct yt_node *key);
void yt_path_pop(struct yt_parser *p, size_t saved);

/* ---- scalars ---- */

/* Whether n is a scalar whose text is exactly s. */
bool yt_scalar_is(const struct yt_node *n, const char *s);
/* YAML core schema null: empty, ~, null, Null, NULL (plain scalars only). */
bool yt_is_null(const struct yt_node *n);
/* Returns 1 or 0 for a plain true/false (any core-schema spelling), -1 otherwise. */
int yt_scalar_bool(const struct yt_node *n);

enum yt_number_kind { YT_NUMBER_NONE, YT_NUMBER_INT, YT_NUMBER_FLOAT };
/* YAML core schema numbers: [-+]digits, 0x.., 0o.., decimal floats with optional exponent.
 * ".inf" and ".nan" are no numbers here: JSON cannot carry them. */
enum yt_number_kind yt_number_kind(const char *s, size_t len);
/* Returns 0 and *ret, -ERANGE when it does not fit, -EINVAL when it is no integer. */
int yt_scalar_int64(const struct yt_node *n, long long *ret);
/* Returns 0 and a finite *ret, -ERANGE for overflow, -EINVAL when it is no number. */
int yt_scalar_double(const struct yt_node *n, double *ret);

/* ---- typed getters: each returns 0 and stores the value, or fails (yt_fail) ---- */

/* An integer in [min, max], quoted or not ("8000" and 8000 mean the same to an operator).
 * `what` completes "must be ...". */
int yt_get_int(struct yt_parser *p, const struct yt_node *n, long long min, long long max,
               const char *what, int *ret);
/* A non-negative (zero_ok) or positive finite number. */
int yt_get_double(struct yt_parser *p, const struct yt_node *n, bool zero_ok, double *ret);
/* Any scalar but null, as a malloc'd string without NULs; replaces (frees) *ret. */
int yt_get_string(struct yt_parser *p, const struct yt_node *n, bool empty_ok, char **ret);
/* A name: non-empty string of at most YT_MAX_NAME bytes without '/' or control characters;
 * replaces (frees) *ret. */
int yt_get_name(struct yt_parser *p, const struct yt_node *n, char **ret);
/* Any YAML value as compact JSON text in a malloc'd string; replaces (frees) *ret. */
int yt_get_json(struct yt_parser *p, const struct yt_node *n, char **ret);

/* ---- mappings ---- */

/* Returns 0 when n is a mapping, fails with "must be a mapping, got ..." otherwise. */
int yt_expect_mapping(struct yt_parser *p, const struct yt_node *n);

/* Fails with "unknown key (did you mean "x"?); allowed here: a, b, c". */
int yt_fail_unknown_key(struct yt_parser *p, const struct yt_node *key, const char *const keys[],
                        size_t n_keys);

typedef int (*yt_field_fn)(struct yt_parser *p, unsigned idx, const struct yt_node *val,
                           void *userdata);

/* Walks a schema mapping: every key must be one of `keys` (at most 64), at most once. Calls fn
 * with the key's index and value, the key appended to the field path. Returns 0 or the first
 * failure. */
int yt_parse_fields(struct yt_parser *p, const struct yt_node *map, const char *const keys[],
                    size_t n_keys, yt_field_fn fn, void *userdata);

/* Free-form mappings: keys are scalars without NULs, each at most once (checked in
 * O(n log n)). Returns 0 or fails. */
int yt_check_free_mapping(struct yt_parser *p, const struct yt_node *map);

/* A mapping of at most `max` entries (null = none) whose keys are names: 1 to YT_MAX_NAME
 * characters without control characters (`noun` names a key in messages: "label"; `what` the
 * entries: "labels"). Allocates *ret_items as yt_parse_list() does, counts each entry in
 * *ret_n before parsing it (a free function sees it even when its value fails), then calls
 * parse with the path extended by the key. Returns 0, a parse error, or -ENOMEM. */
int yt_parse_map(struct yt_parser *p, const struct yt_node *v, const char *noun, const char *what, size_t max,
                 size_t elem_size, void **ret_items, size_t *ret_n,
                 int (*parse)(struct yt_parser *p, const struct yt_node *key, const struct yt_node *val, void *item,
                              void *userdata),
                 void *userdata);

/* A list of at most `max` entries (null or [] = none), `what` naming them in messages ("a list
 * of deployments"). Allocates *ret_items (zeroed, elem_size bytes each) and sets *ret_n before
 * parsing, so a free function sees every entry when one fails; then calls parse for entry i
 * with the path extended by "[i]". Returns 0, a parse error, or -ENOMEM. */
int yt_parse_list(struct yt_parser *p, const struct yt_node *v, const char *what, size_t max, size_t elem_size,
                  void **ret_items, size_t *ret_n,
                  int (*parse)(struct yt_parser *p, const struct yt_node *item, size_t i, void *userdata), void *userdata);
