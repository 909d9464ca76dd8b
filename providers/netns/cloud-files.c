/* cloud-files USER_DATA ROOT: writes the write_files of a #cloud-config user-data under ROOT,
 * as cloud-init would write them on a fresh machine whose / is ROOT. The netns provider's
 * create uses it to build a node's configuration (worker.yaml, the join token) without running
 * cloud-init. Every entry is checked first (see writefiles.h), so a refused user-data writes
 * nothing; files are created through directory fds with O_NOFOLLOW, so nothing lands outside
 * ROOT. Never prints a file's content: the user-data holds a join token.
 * Exit status: 0 written, 1 refused or failed (stderr says why), 2 usage. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/yamltree.h"
#include "writefiles.h"

/* Opens (creating with mode 0755 as needed) the directory `dir` below dirfd, one component at
 * a time without following symlinks. Returns an fd or -errno. */
static int open_dirs(int dirfd, char *dir) {
        _cleanup_close_ int fd = dup(dirfd);
        if (fd < 0)
                return -errno;
        for (char *save = NULL, *c = strtok_r(dir, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
                if (mkdirat(fd, c, 0755) < 0 && errno != EEXIST)
                        return -errno;
                int next = openat(fd, c, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if (next < 0)
                        return -errno;
                close(fd);
                fd = next;
        }
        return TAKE_FD(fd);
}

/* Writes one file below rootfd. Returns 0 or -errno. */
static int write_one(int rootfd, const struct wf_file *f) {
        _cleanup_free_ char *dir = strdup(f->path);
        if (!dir)
                return -ENOMEM;
        char *slash = strrchr(dir, '/');
        const char *base = f->path + (slash - dir) + 1;
        *slash = 0;

        _cleanup_close_ int dfd = open_dirs(rootfd, dir);
        if (dfd < 0)
                return dfd;
        _cleanup_close_ int fd = openat(dfd, base, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC |
                                                   (f->append ? O_APPEND : O_TRUNC), f->mode);
        if (fd < 0)
                return -errno;
        /* The mode asked for, whatever the umask or an earlier entry for the same path said. */
        if (fchmod(fd, f->mode) < 0)
                return -errno;
        for (size_t off = 0; off < f->len;) {
                ssize_t k = write(fd, f->content + off, f->len - off);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0)
                        return -errno;
                off += (size_t) k;
        }
        if (close(TAKE_FD(fd)) < 0)
                return -errno;
        return 0;
}

int main(int argc, char **argv) {
        _cleanup_free_ char *text = NULL, *error = NULL;
        size_t len;
        struct wf_list list = {};
        _cleanup_close_ int rootfd = -1;
        int r, status = 1;

        if (argc != 3 || argv[1][0] == '-') {
                fprintf(stderr, "usage: cloud-files USER_DATA ROOT\n"
                                "Writes the write_files of a #cloud-config USER_DATA under the directory ROOT.\n");
                return 2;
        }
        const char *user_data = argv[1], *root = argv[2];

        r = yt_read_file(user_data, WF_MAX_USER_DATA, &text, &len, &error);
        if (r < 0) {
                fprintf(stderr, "cloud-files: %s\n", error ?: strerror(-r));
                return 1;
        }
        r = wf_parse(user_data, text, len, &list, &error);
        if (r < 0) {
                fprintf(stderr, "cloud-files: %s\n", r == -EINVAL && error ? error : strerror(-r));
                return 1;
        }

        if (mkdir(root, 0755) < 0 && errno != EEXIST) {
                fprintf(stderr, "cloud-files: cannot make %s: %m\n", root);
                goto out;
        }
        rootfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (rootfd < 0) {
                fprintf(stderr, "cloud-files: cannot open %s: %m\n", root);
                goto out;
        }
        for (size_t i = 0; i < list.n; i++) {
                r = write_one(rootfd, &list.files[i]);
                if (r < 0) {
                        fprintf(stderr, "cloud-files: %s:%d: cannot write %s under %s: %s\n", user_data,
                                list.files[i].line, list.files[i].path, root, strerror(-r));
                        goto out;
                }
        }
        status = 0;
out:
        wf_list_done(&list);
        return status;
}
