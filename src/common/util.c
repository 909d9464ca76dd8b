#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/stat.h>

#include "macros.h"
#include "util.h"

uint64_t now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * NSEC_PER_SEC + (uint64_t)ts.tv_nsec;
}

int error_setv(int r, char **ret_error, const char *fmt, va_list ap) {
        if (ret_error) {
                char *m = NULL;
                if (vasprintf(&m, fmt, ap) < 0)
                        m = NULL;
                *ret_error = m;
        }
        return r;
}

int error_set(int r, char **ret_error, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        r = error_setv(r, ret_error, fmt, ap);
        va_end(ap);
        return r;
}

int fd_nonblock(int fd, bool nonblock) {
        int fl = fcntl(fd, F_GETFL);
        if (fl < 0)
                return -errno;
        fl = nonblock ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK);
        return fcntl(fd, F_SETFL, fl) < 0 ? -errno : 0;
}

int read_fd(int fd, size_t max, char **ret, size_t *ret_len) {
        _cleanup_free_ char *data = NULL;
        struct stat st;
        size_t len = 0;

        if (fstat(fd, &st) < 0)
                return -errno;
        if ((uint64_t)st.st_size > max)
                return -EFBIG;
        size_t cap = max + 1 < (size_t)st.st_size + 4096 ? max + 1 : (size_t)st.st_size + 4096;
        data = malloc(cap);
        if (!data)
                return -ENOMEM;
        for (;;) {
                if (len + 1 >= cap) { /* the file grew since fstat() */
                        if (cap > max)
                                return -EFBIG;
                        size_t ncap = MIN(cap * 2, max + 1);
                        char *n = realloc(data, ncap);
                        if (!n)
                                return -ENOMEM;
                        data = n;
                        cap = ncap;
                }
                ssize_t k = read(fd, data + len, cap - 1 - len);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (k == 0)
                        break;
                len += (size_t)k;
        }
        data[len] = 0;
        *ret = TAKE_PTR(data);
        if (ret_len)
                *ret_len = len;
        return 0;
}

int read_file(const char *path, size_t max, char **ret, size_t *ret_len) {
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);

        if (fd < 0)
                return -errno;
        return read_fd(fd, max, ret, ret_len);
}

int write_all(int fd, const void *data, size_t len) {
        const char *p = data;

        while (len > 0) {
                ssize_t k = write(fd, p, len);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (k == 0)
                        return -EIO;
                p += k;
                len -= (size_t)k;
        }
        return 0;
}

int fsync_dir(const char *dir) {
        _cleanup_close_ int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        return fsync(fd) < 0 ? -errno : 0;
}

int buf_reserve(struct buf *b, size_t extra, size_t limit) {
        if (extra > limit || b->len > limit - extra)
                return -ENOBUFS;
        if (b->len + extra <= b->cap)
                return 0;
        size_t ncap = b->cap ? b->cap : 256;
        while (ncap < b->len + extra)
                ncap *= 2;
        if (ncap > limit)
                ncap = limit;
        char *n = realloc(b->data, ncap);
        if (!n)
                return -ENOMEM;
        b->data = n;
        b->cap = ncap;
        return 0;
}

int buf_append(struct buf *b, const void *data, size_t len, size_t limit) {
        int r = buf_reserve(b, len, limit);
        if (r < 0)
                return r;
        if (len)
                memcpy(b->data + b->len, data, len);
        b->len += len;
        return 0;
}

int buf_printf(struct buf *b, size_t limit, const char *fmt, ...) {
        va_list ap;
        int n, r;

        va_start(ap, fmt);
        n = vsnprintf(NULL, 0, fmt, ap);
        va_end(ap);
        if (n < 0)
                return -EINVAL;
        r = buf_reserve(b, (size_t)n + 1, limit);
        if (r < 0)
                return r;
        va_start(ap, fmt);
        vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
        va_end(ap);
        b->len += (size_t)n;
        return 0;
}

void buf_consume(struct buf *b, size_t n) {
        if (n >= b->len) {
                b->len = 0;
                return;
        }
        memmove(b->data, b->data + n, b->len - n);
        b->len -= n;
}

void buf_free(struct buf *b) {
        free(b->data);
        b->data = NULL;
        b->len = b->cap = 0;
}

char *path_relative_to_file(const char *file, const char *path) {
        const char *slash = strrchr(file, '/');
        char *r;

        if (path[0] == '/' || !slash)
                return strdup(path);
        if (asprintf(&r, "%.*s/%s", (int)(slash - file), file, path) < 0)
                return NULL;
        return r;
}


void strv_free(char **v, size_t n) {
        for (size_t i = 0; v && i < n; i++)
                free(v[i]);
        free(v);
}

void hex_encode(const void *data, size_t n, char *out) {
        static const char digits[] = "0123456789abcdef";
        const unsigned char *p = data;

        for (size_t i = 0; i < n; i++) {
                out[2 * i] = digits[p[i] >> 4];
                out[2 * i + 1] = digits[p[i] & 15];
        }
        out[2 * n] = '\0';
}
