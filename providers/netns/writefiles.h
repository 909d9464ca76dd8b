/* The write_files of a #cloud-config user-data, parsed and checked but not written: what the
 * netns provider's cloud-files program writes under a node's root. Pure (nothing here logs or
 * touches the file system), so a fuzz target can drive it. Messages name the file, line and
 * column and never quote a file's content (the user-data holds a join token). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* Limits on what one user-data may ask for. */
#define WF_MAX_FILES 64
#define WF_MAX_CONTENT (1u << 20)     /* all files' decoded content together */
#define WF_MAX_USER_DATA (4u << 20)   /* the user-data file itself (base64 inflates content) */
#define WF_MAX_PATH 4095
#define WF_MAX_COMPONENT 255

struct wf_file {
        char *path;     /* absolute, without empty, "." or ".." components, never "/" */
        char *content;  /* decoded; may hold NULs */
        size_t len;
        mode_t mode;    /* permission bits only (no setuid, setgid or sticky) */
        bool append;
        int line;       /* where the entry starts in the user-data */
};

struct wf_list {
        struct wf_file *files;
        size_t n;
};

void wf_list_done(struct wf_list *l);

/* Parses the user-data `text` (len bytes; `name` is the file name for messages): the first
 * line must be "#cloud-config"; every key but write_files is ignored. Each write_files entry
 * takes path, content, permissions (an octal string, default 0644), encoding (text/plain, b64 or
 * base64; gzip is refused), append, and owner and defer (accepted, ignored). Returns 0 and *ret
 * (free with wf_list_done()), -EINVAL with "NAME:LINE:COLUMN: what is wrong" in *ret_error
 * (malloc'd), or -ENOMEM. */
int wf_parse(const char *name, const char *text, size_t len, struct wf_list *ret, char **ret_error);

/* Decodes standard base64 (padding optional, whitespace ignored). Returns 0, *ret (malloc'd,
 * NUL-terminated) and *ret_len, -EINVAL for anything else in the input, or -ENOMEM. */
int wf_base64_decode(const char *in, size_t len, char **ret, size_t *ret_len);
