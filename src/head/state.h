/* The head's crash-safe state file, DIR/state.json: whatever JSON the head hands over (config
 * text and source, epoch, per-deployment placement). A save replaces the file atomically, so
 * after a crash or power loss the file holds either the old or the new state, never a mix. */
#pragma once

#include <cjson/cJSON.h>

#define STATE_FILE_NAME "state.json"
/* Larger states are refused on save and on load. */
#define STATE_FILE_MAX (64u * 1024 * 1024)

/* Writes `state` to dir/state.json: a temp file in `dir` (mode 0600, O_CLOEXEC), written
 * fully and fsync'd, renamed over state.json, then the directory fsync'd so the rename itself
 * is durable. The directory must exist. Returns 0, -EFBIG when the JSON exceeds
 * STATE_FILE_MAX, -ENOMEM, or -errno from the file system; on failure the old file is intact
 * and no temp file is left behind. */
int state_save(const char *dir, const cJSON *state);

/* Reads dir/state.json. Returns 0, -ENOENT when there is no state yet (the head's first start),
 * -EINVAL when the file is empty or not exactly one JSON value, -EFBIG when it exceeds
 * STATE_FILE_MAX, -ENOMEM, or another -errno from reading. On any failure but -ENOENT,
 * *ret_error (unless NULL) gets a message naming the file and the problem (NULL if even that
 * could not be allocated); free() it. */
int state_load(const char *dir, cJSON **ret, char **ret_error);
