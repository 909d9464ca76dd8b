/* state.json: written through a temp file + rename so readers and crashes only ever see a whole
 * file; fsync before the rename orders data before the name, fsync of the directory makes the
 * rename itself survive power loss. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/macros.h"
#include "common/util.h"
#include "head/state.h"

/* Writes the temp file and renames it into place; the caller removes the temp file on failure. */
static int save_via(const char *tmp, int fd, const char *path, const char *dir, const char *text, size_t len) {
        int r;

        /* mkostemp() already creates 0600 minus umask; make it exactly 0600 whatever the umask. */
        if (fchmod(fd, 0600) < 0)
                return -errno;
        r = write_all(fd, text, len);
        if (r < 0)
                return r;
        if (fsync(fd) < 0)
                return -errno;
        if (rename(tmp, path) < 0)
                return -errno;
        return fsync_dir(dir);
}

int state_save(const char *dir, const cJSON *state) {
        _cleanup_free_ char *text = NULL, *tmp = NULL, *path = NULL;
        _cleanup_close_ int fd = -1;
        size_t len;
        int r;

        if (!dir || !state)
                return -EINVAL;
        text = cJSON_Print(state);
        if (!text)
                return -ENOMEM;
        len = strlen(text);
        if (len + 1 > STATE_FILE_MAX)
                return -EFBIG;
        text[len++] = '\n'; /* replaces the NUL: `text` is written by length from here on */

        if (asprintf(&tmp, "%s/." STATE_FILE_NAME ".XXXXXX", dir) < 0) {
                tmp = NULL;
                return -ENOMEM;
        }
        if (asprintf(&path, "%s/" STATE_FILE_NAME, dir) < 0) {
                path = NULL;
                return -ENOMEM;
        }
        fd = mkostemp(tmp, O_CLOEXEC);
        if (fd < 0)
                return -errno;
        r = save_via(tmp, fd, path, dir, text, len);
        /* After a successful rename the temp name is gone; before it, remove our partial file. */
        if (r < 0)
                (void) unlink(tmp);
        if (close(TAKE_FD(fd)) < 0 && r == 0)
                r = -errno;
        return r;
}

int state_load(const char *dir, cJSON **ret, char **ret_error) {
        _cleanup_free_ char *path = NULL, *text = NULL;
        const char *end = NULL;
        size_t len;
        int r;

        if (!dir || !ret)
                return -EINVAL;
        if (asprintf(&path, "%s/" STATE_FILE_NAME, dir) < 0) {
                path = NULL;
                return -ENOMEM;
        }
        r = read_file(path, STATE_FILE_MAX, &text, &len);
        if (r == -ENOENT)
                return r;
        if (r == -EFBIG)
                return error_set(r, ret_error, "%s: state file is larger than the %u MiB limit", path,
                                 STATE_FILE_MAX / (1024 * 1024));
        if (r < 0)
                return error_set(r, ret_error, "%s: cannot read state file: %s", path, strerror(-r));
        if (len == 0)
                return error_set(-EINVAL, ret_error, "%s: state file is empty (corrupt)", path);

        cJSON *j = cJSON_ParseWithLengthOpts(text, len, &end, false);
        if (!j) {
                size_t at = end && end >= text && end <= text + len ? (size_t)(end - text) : len;
                return error_set(-EINVAL, ret_error, "%s: state file is corrupt: invalid JSON at byte %zu of %zu", path,
                                 at, len);
        }
        /* Trailing garbage means a torn or foreign file, not ours. */
        while (end && end < text + len && (*end == ' ' || *end == '\n' || *end == '\t' || *end == '\r'))
                end++;
        if (end && end < text + len) {
                size_t at = (size_t)(end - text);
                cJSON_Delete(j);
                return error_set(-EINVAL, ret_error, "%s: state file is corrupt: unexpected data after the JSON at byte %zu",
                                 path, at);
        }
        *ret = j;
        return 0;
}
