/* Time, file descriptor and string helpers shared by the daemons. */
#pragma once

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define NSEC_PER_SEC 1000000000ull
#define NSEC_PER_MSEC 1000000ull

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t now_ns(void);
static inline uint64_t sec_to_ns(double s) { return s <= 0 ? 0 : (uint64_t)(s * 1e9); }

/* Sets O_NONBLOCK. Returns 0 or -errno. */
int fd_nonblock(int fd, bool nonblock);

/* Stores a malloc'd formatted message in *ret_error (unless ret_error is NULL) and returns r,
 * so a parser can write `return error_set(-EINVAL, ret_error, "...", ...);`. */
int error_set(int r, char **ret_error, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int error_setv(int r, char **ret_error, const char *fmt, va_list ap) __attribute__((format(printf, 3, 0)));

/* Reads a whole file (at most max bytes, NUL-terminated). Returns 0, -EFBIG, or -errno. */
int read_file(const char *path, size_t max, char **ret, size_t *ret_len);
/* The same from an open file (read to its end). */
int read_fd(int fd, size_t max, char **ret, size_t *ret_len);
/* Writes all of data (retrying short writes and EINTR). Returns 0 or -errno (-EIO for 0). */
int write_all(int fd, const void *data, size_t len);
/* fsync()s a directory: a rename in it is on disk. Returns 0 or -errno. */
int fsync_dir(const char *dir);
/* n bytes as 2n lowercase hex digits and a NUL into out (2n + 1 bytes). */
void hex_encode(const void *data, size_t n, char *out);

/* `path` if absolute, else `path` relative to the directory holding `file` (config files name
 * other files relative to themselves). Returns a malloc'd string or NULL. */
char *path_relative_to_file(const char *file, const char *path);

/* Frees n strings of v and v itself. */
void strv_free(char **v, size_t n);

/* Growable byte buffer with a hard cap. */
struct buf {
        char *data;
        size_t len, cap;
};
/* Ensures room for `extra` more bytes, never growing past `limit` total. Returns 0, -ENOBUFS
 * (over limit) or -ENOMEM. */
int buf_reserve(struct buf *b, size_t extra, size_t limit);
int buf_append(struct buf *b, const void *data, size_t len, size_t limit);
int buf_printf(struct buf *b, size_t limit, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Drops the first n bytes. */
void buf_consume(struct buf *b, size_t n);
void buf_free(struct buf *b);

/* Intrusive doubly linked list. */
struct list {
        struct list *prev, *next;
};
static inline void list_init(struct list *l) { l->prev = l->next = l; }
static inline bool list_empty(const struct list *l) { return l->next == l; }
static inline void list_add_tail(struct list *head, struct list *n) {
        n->prev = head->prev;
        n->next = head;
        head->prev->next = n;
        head->prev = n;
}
static inline void list_del(struct list *n) {
        n->prev->next = n->next;
        n->next->prev = n->prev;
        n->prev = n->next = n;
}
#define list_entry(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))
#define list_first(head, type, member) list_entry((head)->next, type, member)
#define list_for_each_safe(pos, tmp, head) \
        for ((pos) = (head)->next, (tmp) = (pos)->next; (pos) != (head); (pos) = (tmp), (tmp) = (pos)->next)
