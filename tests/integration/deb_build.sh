#!/usr/bin/env bash
# `make deb` the way the README says to run it, in trees as a user has them: configured in place
# (`./configure && make deb`, which used to stop at "source directory already configured") and
# configured in a build directory (`mkdir b && cd b && ../configure && make deb`). Both must
# produce the serve and serve-dev packages and leave the source tree as it was. The trees are
# what a release holds (`make distdir`), so the checkout under test is never configured.
. "$(dirname "$0")/lib.sh"

# ./runtests builds and tests the packages once, in its main `make check`; the sanitizer and
# distcheck passes of the same tree set SERVE_TEST_PACKAGES=0 (the packages do not change).
[ "${SERVE_TEST_PACKAGES:-1}" = 0 ] && { echo "1..0 # SKIP packages are tested in the main make check"; exit 77; }
for t in dpkg-buildpackage dh dpkg-parsechangelog; do
        command -v "$t" >/dev/null || { echo "1..0 # SKIP $t is not installed (apt-get install debhelper dpkg-dev)"; exit 77; }
done

# The makes below are the user's, not part of the `make check` that runs this test.
unset MAKEFLAGS MFLAGS MAKELEVEL SERVE_BUILDDIR
# As lean as it gets: lintian is run where the package itself is tested (systemd.sh), the
# package build runs no tests (debian/rules), and compiling uses every CPU.
export BUILD_DEB_LINTIAN=0 DEB_BUILD_OPTIONS="parallel=$(nproc)"

# fresh_tree DIR: the source tree a release tarball unpacks to.
fresh_tree() {
        make -s -C "$top_builddir" distdir distdir="$1" >"$WORK/distdir.log" 2>&1 ||
                { sed 's/^/#   /' "$WORK/distdir.log" | tail -n 20; return 1; }
}

# debs DIR: the packages `make deb` left in DIR.
debs() { for p in serve serve-dev; do compgen -G "$1/${p}_*.deb" >/dev/null && printf '%s ' "$p"; done; }

fresh_tree "$WORK/inplace"
check "a fresh source tree" "$?" 0
(cd "$WORK/inplace" && ./configure --quiet && make deb) >"$WORK/inplace.log" 2>&1
st=$?
check "./configure && make deb succeeds" "$st" 0
[ "$st" -ne 0 ] && tail -n 20 "$WORK/inplace.log" | sed 's/^/#   /'
check "it leaves serve and serve-dev .debs in the tree" "$(debs "$WORK/inplace")" "serve serve-dev "
check "and no tarball or dist directory behind" "$(cd "$WORK/inplace" && ls -d serve-*.tar.gz serve-[0-9]*/ 2>/dev/null)" ""

fresh_tree "$WORK/vpath"
mkdir "$WORK/vpath/b"
(cd "$WORK/vpath/b" && ../configure --quiet && make deb) >"$WORK/vpath.log" 2>&1
st=$?
check "mkdir b && cd b && ../configure && make deb succeeds" "$st" 0
[ "$st" -ne 0 ] && tail -n 20 "$WORK/vpath.log" | sed 's/^/#   /'
check "it leaves serve and serve-dev .debs in the build directory" "$(debs "$WORK/vpath/b")" "serve serve-dev "
check "the source tree stays unconfigured" "$(ls "$WORK/vpath/config.status" "$WORK/vpath/Makefile" 2>/dev/null)" ""
finish
