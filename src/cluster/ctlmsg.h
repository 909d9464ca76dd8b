/* The control protocol's framing and field validation (worker <-> head).
 *
 * A frame is a 4-byte big-endian length N (1 <= N <= CTLMSG_MAX) and N bytes holding one JSON
 * object with "v" (CTLMSG_VERSION) and "type" (a string). Everything a peer sends is checked:
 * the frame length before anything is buffered, the JSON, the version, and then each field
 * with the ctl_get_* helpers below, which say which field is wrong. */
#pragma once

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define CTLMSG_VERSION 1
#define CTLMSG_MAX (16u << 20)

/* Appends one frame holding msg to out. Returns 0 or -ENOMEM/-EMSGSIZE. */
int ctlmsg_encode(struct buf *out, const cJSON *msg);

/* Takes the next complete frame from the start of in (consuming it). Returns 1 and *ret (the
 * message; *ret_type points into it), 0 when more bytes are needed, or -EBADMSG with
 * *ret_error (a static string saying what was wrong) for a frame that must close the connection. */
int ctlmsg_decode(struct buf *in, cJSON **ret, const char **ret_type, const char **ret_error);

/* The next complete frame at the start of in, without consuming or parsing it: returns 1 with
 * *ret_body and *ret_len (the JSON text, pointing into in; the frame is 4 + *ret_len bytes),
 * 0 when more bytes are needed, or -EBADMSG for a length out of range. */
int ctlmsg_peek(const struct buf *in, const char **ret_body, size_t *ret_len);

/* Field getters for validation. Each returns 0 and the value, or -EINVAL after writing
 * "field KEY: what" into err (size errlen). Optional getters leave *ret alone when the key is
 * absent (or null) and return 0. */
int ctl_get_string(const cJSON *o, const char *key, size_t max_len, bool required, const char **ret, char *err, size_t errlen);
int ctl_get_int(const cJSON *o, const char *key, long long min, long long max, bool required, long long *ret, char *err,
                size_t errlen);
int ctl_get_double(const cJSON *o, const char *key, double min, double max, bool required, double *ret, char *err,
                   size_t errlen);
int ctl_get_bool(const cJSON *o, const char *key, bool required, bool *ret, char *err, size_t errlen);
/* An array (or absent = empty when !required) of at most max_items items. */
int ctl_get_array(const cJSON *o, const char *key, int max_items, bool required, const cJSON **ret, char *err, size_t errlen);
int ctl_get_object(const cJSON *o, const char *key, bool required, const cJSON **ret, char *err, size_t errlen);

/* A new message {"v":1,"type":type}. NULL on allocation failure. */
cJSON *ctlmsg_new(const char *type);
