/* libFuzzer target for the netns provider's user-data reader (providers/netns/writefiles.c,
 * what cloud-files runs on a user-data before writing anything): any bytes either parse into
 * files that keep its promises (at most WF_MAX_FILES, WF_MAX_CONTENT bytes in all, normalised
 * absolute paths that cannot leave the root, permission bits only), or fail with a message that
 * starts with the file name. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../providers/netns/writefiles.h"
#include "fuzz.h"

#define NAME "user-data"

static void check_path(const char *path) {
        check(path[0] == '/');
        check(path[1] != 0);
        check(strlen(path) <= WF_MAX_PATH);
        check(!strstr(path, "//") && !strstr(path, "/./") && !strstr(path, "/../"));
        size_t n = strlen(path);
        check(path[n - 1] != '/');
        check(!(n >= 2 && strcmp(path + n - 2, "/.") == 0) && !(n >= 3 && strcmp(path + n - 3, "/..") == 0));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct wf_list list = {};
        char *error = NULL;

        int r = wf_parse(NAME, (const char *) data, size, &list, &error);
        if (r == 0) {
                size_t total = 0;
                check(list.n <= WF_MAX_FILES);
                for (size_t i = 0; i < list.n; i++) {
                        check_path(list.files[i].path);
                        check((list.files[i].mode & ~0777u) == 0);
                        check(list.files[i].content);
                        total += list.files[i].len;
                }
                check(total <= WF_MAX_CONTENT);
                check(!error);
                wf_list_done(&list);
        } else {
                check(r == -EINVAL || r == -ENOMEM);
                check(list.n == 0 && !list.files);
                if (r == -EINVAL)
                        check(error && strncmp(error, NAME ":", strlen(NAME ":")) == 0);
                free(error);
        }

        /* base64: whatever decodes re-decodes identically from a re-encoding's length bound. */
        char *out = NULL;
        size_t len = 0;
        if (wf_base64_decode((const char *) data, size, &out, &len) == 0) {
                check(len <= size / 4 * 3 + 3);
                check(out[len] == 0);
                free(out);
        }
        return 0;
}
