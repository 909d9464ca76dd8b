/* Finds the shared object or Python module named by an application's import_path ("MODULE:SYMBOL"). */
#pragma once

/* MODULE containing '/' is a path (a relative one is taken from working_dir when given, else
 * the current directory). Otherwise MODULE.so and MODULE.py (a shared object or a Python
 * module; MODULE itself when it ends in .so or .py) are searched in working_dir, then each
 * directory of $SERVE_APP_PATH (colon-separated), then PKGLIBDIR/apps; a name that matches both
 * a .so and a .py (anywhere along the search) is -EINVAL naming both files.
 * Whether SYMBOL exists is only known after dlopen (the replica checks it).
 *
 * Returns 0 with *ret_path (absolute, symlinks resolved) and *ret_symbol (both malloc'd), or
 * -EINVAL (bad syntax), -ENOENT (not found: the message names the module and every directory
 * searched), -ENOMEM; on failure *ret_error (if ret_error is non-NULL) gets a malloc'd message. */
int module_resolve(const char *import_path, const char *working_dir, char **ret_path,
                   char **ret_symbol, char **ret_error);
