/* import_path resolution, shared by serve-replica --describe and the replica itself. */

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "macros.h"
#include "module.h"
#include "util.h"

#ifndef PKGLIBDIR
#define PKGLIBDIR "/usr/local/lib/serve"
#endif


static bool symbol_valid(const char *s) {
        if (!*s || (*s >= '0' && *s <= '9'))
                return false;
        for (; *s; s++)
                if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
                      (*s >= '0' && *s <= '9') || *s == '_'))
                        return false;
        return true;
}

static char *mfree(char *p) {
        free(p);
        return NULL;
}

static bool is_regular_file(const char *path) {
        struct stat st;
        return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Joins dir and name; a relative dir is taken from the current directory (realpath later). */
static char *path_join(const char *dir, const char *name) {
        char *p = NULL;
        size_t n = strlen(dir);
        if (asprintf(&p, "%s%s%s", dir, n > 0 && dir[n - 1] == '/' ? "" : "/", name) < 0)
                return NULL;
        return p;
}

/* Appends ", DIR" (or "DIR" first) to the list of searched directories. */
static int searched_add(char **list, const char *dir) {
        char *n = NULL;
        if (asprintf(&n, "%s%s%s", *list ? *list : "", *list ? ", " : "", dir) < 0)
                return -ENOMEM;
        free(*list);
        *list = n;
        return 0;
}

/* Where `name` (a file name) is first found along the search path, or NULL: working_dir, each
 * directory of $SERVE_APP_PATH, PKGLIBDIR/apps. When `searched` is not NULL, the directories
 * are appended to it. Returns 0 (and *ret, malloc'd or NULL) or -ENOMEM. */
static int search_path(const char *name, const char *working_dir, char **searched, char **ret) {
        const char *env = getenv("SERVE_APP_PATH");
        _cleanup_free_ char *env_copy = env ? strdup(env) : NULL;
        char *found = NULL;
        int r;

        *ret = NULL;
        if (env && !env_copy)
                return -ENOMEM;
        /* Every directory, in order (the list of them is wanted for messages). */
        const char *dirs[258];
        size_t n = 0;
        if (working_dir)
                dirs[n++] = working_dir;
        for (char *save = NULL, *d = env_copy ? strtok_r(env_copy, ":", &save) : NULL; d && n < ELEMENTSOF(dirs) - 1;
             d = strtok_r(NULL, ":", &save))
                dirs[n++] = d;
        dirs[n++] = PKGLIBDIR "/apps";
        for (size_t i = 0; i < n; i++) {
                if (searched && (r = searched_add(searched, dirs[i])) < 0) {
                        free(found);
                        return r;
                }
                if (found)
                        continue;
                found = path_join(dirs[i], name);
                if (!found)
                        return -ENOMEM;
                if (!is_regular_file(found))
                        found = mfree(found);
        }
        *ret = found;
        return 0;
}

static bool has_suffix(const char *s, const char *suffix) {
        size_t n = strlen(s), k = strlen(suffix);
        return n > k && streq(s + n - k, suffix);
}

/* MODULE without '/': MODULE.so or MODULE.py (or MODULE itself when it ends in one of them)
 * along the search path. Both found (anywhere) is an error: which one was meant is unclear. */
static int module_search(const char *module, const char *working_dir, char **ret, char **ret_error) {
        _cleanup_free_ char *so_name = NULL, *py_name = NULL, *so = NULL, *py = NULL, *searched = NULL;
        bool explicit_ext = has_suffix(module, ".so") || has_suffix(module, ".py");
        int r;

        if (explicit_ext) {
                r = search_path(module, working_dir, &searched, &so);
                if (r < 0)
                        return r;
                if (!so)
                        return error_set(-ENOENT, ret_error, "module '%s' not found in: %s", module, searched);
                *ret = TAKE_PTR(so);
                return 0;
        }
        if (asprintf(&so_name, "%s.so", module) < 0 || asprintf(&py_name, "%s.py", module) < 0)
                return -ENOMEM;
        if ((r = search_path(so_name, working_dir, &searched, &so)) < 0 ||
            (r = search_path(py_name, working_dir, NULL, &py)) < 0)
                return r;
        if (so && py)
                return error_set(-EINVAL, ret_error,
                                 "module '%s' is ambiguous: both %s and %s match; rename one, or name the file in import_path",
                                 module, so, py);
        if (!so && !py)
                return error_set(-ENOENT, ret_error, "module '%s' (%s or %s) not found in: %s", module, so_name, py_name,
                                 searched);
        *ret = so ? TAKE_PTR(so) : TAKE_PTR(py);
        return 0;
}

int module_resolve(const char *import_path, const char *working_dir, char **ret_path,
                   char **ret_symbol, char **ret_error) {
        _cleanup_free_ char *module = NULL, *symbol = NULL, *file = NULL, *searched = NULL,
                            *found = NULL;
        const char *colon;
        int r;

        if (!import_path || !ret_path || !ret_symbol)
                return -EINVAL;
        /* The last ':' splits: a path may contain ':' but a C symbol never does. */
        colon = strrchr(import_path, ':');
        if (!colon || colon == import_path || !colon[1])
                return error_set(-EINVAL, ret_error,
                            "invalid import_path '%s': expected MODULE:SYMBOL (e.g. echo.so:app)",
                            import_path);
        module = strndup(import_path, (size_t) (colon - import_path));
        symbol = strdup(colon + 1);
        if (!module || !symbol)
                return -ENOMEM;
        if (!symbol_valid(symbol))
                return error_set(-EINVAL, ret_error,
                            "invalid import_path '%s': '%s' is not a C identifier", import_path,
                            symbol);

        if (strchr(module, '/')) {
                if (module[0] == '/' || !working_dir)
                        file = strdup(module);
                else
                        file = path_join(working_dir, module);
                if (!file)
                        return -ENOMEM;
                if (!is_regular_file(file))
                        return error_set(-ENOENT, ret_error,
                                    "module '%s' not found: %s is missing or not a regular file",
                                    module, file);
                found = TAKE_PTR(file);
        } else {
                r = module_search(module, working_dir, &found, ret_error);
                if (r < 0)
                        return r;
        }

        char *abs = realpath(found, NULL);
        if (!abs)
                return error_set(negative_errno(), ret_error, "module '%s': %s: %m", module, found);
        *ret_path = abs;
        *ret_symbol = TAKE_PTR(symbol);
        return 0;
}
