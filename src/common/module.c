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
                size_t n = strlen(module);
                bool has_so = n > 3 && streq(module + n - 3, ".so");
                const char *env = getenv("SERVE_APP_PATH");
                _cleanup_free_ char *env_copy = env ? strdup(env) : NULL;

                if (asprintf(&file, "%s%s", module, has_so ? "" : ".so") < 0) {
                        file = NULL;
                        return -ENOMEM;
                }
                if (env && !env_copy)
                        return -ENOMEM;

                if (working_dir) {
                        found = path_join(working_dir, file);
                        if (!found)
                                return -ENOMEM;
                        if (!is_regular_file(found)) {
                                found = mfree(found);
                                if ((r = searched_add(&searched, working_dir)) < 0)
                                        return r;
                        }
                }
                for (char *save = NULL, *d = env_copy ? strtok_r(env_copy, ":", &save) : NULL;
                     !found && d; d = strtok_r(NULL, ":", &save)) {
                        found = path_join(d, file);
                        if (!found)
                                return -ENOMEM;
                        if (!is_regular_file(found)) {
                                found = mfree(found);
                                if ((r = searched_add(&searched, d)) < 0)
                                        return r;
                        }
                }
                if (!found) {
                        found = path_join(PKGLIBDIR "/apps", file);
                        if (!found)
                                return -ENOMEM;
                        if (!is_regular_file(found)) {
                                found = mfree(found);
                                if ((r = searched_add(&searched, PKGLIBDIR "/apps")) < 0)
                                        return r;
                                return error_set(-ENOENT, ret_error, "module '%s' (%s) not found in: %s",
                                            module, file, searched);
                        }
                }
        }

        char *abs = realpath(found, NULL);
        if (!abs)
                return error_set(negative_errno(), ret_error, "module '%s': %s: %m", module, found);
        *ret_path = abs;
        *ret_symbol = TAKE_PTR(symbol);
        return 0;
}
