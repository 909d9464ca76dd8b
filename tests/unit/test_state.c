/* The head's state file: what is saved comes back, a damaged file is reported by name instead
 * of being mistaken for "no state", and a save leaves exactly one private file behind. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "head/state.h"
#include "tap.h"

static char dir[] = "/tmp/test-state-XXXXXX";

static void write_state(const char *text, size_t len) {
        char path[256];
        snprintf(path, sizeof(path), "%s/state.json", dir);
        FILE *f = fopen(path, "we");
        if (!f || fwrite(text, 1, len, f) != len || fclose(f) != 0) {
                ok(false, "write %s", path);
                exit(1);
        }
}

/* True when the state dir holds nothing but state.json; names anything else. */
static bool only_state_json(void) {
        DIR *d = opendir(dir);
        struct dirent *e;
        bool good = true;
        while ((e = readdir(d))) {
                if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0 || strcmp(e->d_name, "state.json") == 0)
                        continue;
                printf("#   left behind: %s\n", e->d_name);
                good = false;
        }
        closedir(d);
        return good;
}

static void test_roundtrip(void) {
        cJSON *s = cJSON_CreateObject(), *got = NULL;
        char *error = NULL;
        cJSON_AddStringToObject(s, "config", "applications:\n  - name: echo\n    import_path: \"libecho.so:app\"\n");
        cJSON_AddStringToObject(s, "config_source", "PUT /api/serve/applications/");
        cJSON_AddNumberToObject(s, "epoch", 17);
        cJSON *pl = cJSON_AddObjectToObject(s, "placement");
        cJSON *echo = cJSON_AddArrayToObject(pl, "echo/Echo");
        cJSON *slot = cJSON_CreateObject();
        cJSON_AddStringToObject(slot, "node", "worker-1");
        cJSON_AddNumberToObject(slot, "count", 2);
        cJSON_AddItemToArray(echo, slot);

        is_int(state_save(dir, s), 0, "save succeeds");
        int r = state_load(dir, &got, &error);
        is_int(r, 0, "load succeeds");
        ok(got && cJSON_Compare(s, got, true), "loaded state equals the saved state");
        cJSON_Delete(got);
        got = NULL;

        char path[256];
        struct stat st;
        snprintf(path, sizeof(path), "%s/state.json", dir);
        umask(0);
        cJSON_ReplaceItemInObject(s, "epoch", cJSON_CreateNumber(18));
        is_int(state_save(dir, s), 0, "saving again (umask 0) succeeds");
        umask(022);
        ok(stat(path, &st) == 0 && (st.st_mode & 07777) == 0600, "state.json has mode 0600 (got %o)",
           (unsigned)(st.st_mode & 07777));
        ok(only_state_json(), "no temp file is left behind");
        is_int(state_load(dir, &got, NULL), 0, "load after overwrite succeeds");
        ok(got && cJSON_GetObjectItem(got, "epoch") && cJSON_GetObjectItem(got, "epoch")->valuedouble == 18,
           "the second save replaced the first");
        cJSON_Delete(got);
        cJSON_Delete(s);
}

static void test_absent(void) {
        char empty[] = "/tmp/test-state-empty-XXXXXX";
        cJSON *got = NULL;
        char *error = NULL;
        ok(mkdtemp(empty) != NULL, "make an empty dir");
        is_int(state_load(empty, &got, &error), -ENOENT, "no state.json -> -ENOENT");
        ok(got == NULL && error == NULL, "nothing returned for a first start");
        rmdir(empty);

        cJSON *s = cJSON_CreateObject();
        is_int(state_save("/tmp/test-state-no-such-dir/x", s), -ENOENT, "saving into a missing directory -> -ENOENT");
        cJSON_Delete(s);
}

static void corrupt(const char *text, size_t len, int want, const char *want_msg, const char *what) {
        cJSON *got = NULL;
        char *error = NULL;
        char expect[512];
        write_state(text, len);
        snprintf(expect, sizeof(expect), "%s/state.json: %s", dir, want_msg);
        is_int(state_load(dir, &got, &error), want, "%s is rejected", what);
        if (!ok(error && strcmp(error, expect) == 0, "%s: message names the file: %s", what, want_msg))
                printf("#   got: %s\n", error ? error : "(null)");
        ok(got == NULL, "%s: nothing returned", what);
        free(error);
}

static void test_corrupt(void) {
        /* cJSON points at the start of the unterminated string. */
        corrupt("{\"epoch\": 3, \"config\": \"app", 27, -EINVAL, "state file is corrupt: invalid JSON at byte 24 of 27",
                "a truncated file");
        corrupt("", 0, -EINVAL, "state file is empty (corrupt)", "an empty file");
        corrupt("{\"epoch\": 3}\n{}", 15, -EINVAL, "state file is corrupt: unexpected data after the JSON at byte 13",
                "two JSON values");
        corrupt("{\"epoch\": 3}\0garbage", 20, -EINVAL,
                "state file is corrupt: unexpected data after the JSON at byte 12", "a NUL inside");

        /* Over the limit: a sparse file is enough, the size check comes before reading. */
        char path[256];
        snprintf(path, sizeof(path), "%s/state.json", dir);
        int fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC);
        ok(fd >= 0 && ftruncate(fd, (off_t)STATE_FILE_MAX + 1) == 0 && close(fd) == 0, "make a 64 MiB + 1 file");
        cJSON *got = NULL;
        char *error = NULL;
        char expect[512];
        snprintf(expect, sizeof(expect), "%s/state.json: state file is larger than the 64 MiB limit", dir);
        is_int(state_load(dir, &got, &error), -EFBIG, "an oversized file -> -EFBIG");
        if (!ok(error && strcmp(error, expect) == 0, "oversized: message names the file and the limit"))
                printf("#   got: %s\n", error ? error : "(null)");
        free(error);
}

static void test_too_big_to_save(void) {
        cJSON *good = cJSON_CreateObject(), *got = NULL;
        cJSON_AddNumberToObject(good, "epoch", 1);
        is_int(state_save(dir, good), 0, "save a small state");

        char *big = malloc(STATE_FILE_MAX);
        memset(big, 'x', STATE_FILE_MAX - 1);
        big[STATE_FILE_MAX - 1] = '\0';
        cJSON *s = cJSON_CreateObject();
        cJSON_AddStringToObject(s, "config", big);
        free(big);
        is_int(state_save(dir, s), -EFBIG, "a state over 64 MiB is refused with -EFBIG");
        ok(only_state_json(), "the refused save left no temp file");
        is_int(state_load(dir, &got, NULL), 0, "the previous state still loads");
        ok(got && cJSON_Compare(good, got, true), "and is unchanged");
        cJSON_Delete(got);
        cJSON_Delete(s);
        cJSON_Delete(good);
}

int main(void) {
        if (!mkdtemp(dir)) {
                perror("mkdtemp");
                return 1;
        }
        test_roundtrip();
        test_absent();
        test_corrupt();
        test_too_big_to_save();

        char path[256];
        snprintf(path, sizeof(path), "%s/state.json", dir);
        unlink(path);
        rmdir(dir);
        return tap_done();
}
