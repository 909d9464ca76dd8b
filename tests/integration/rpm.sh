#!/usr/bin/env bash
# The RPM packages as packaging/build-rpm builds them: serve holds the daemons, units, sysusers.d
# and tmpfiles.d entries, config and example apps; serve-devel what a deployment compiles
# against; and the scriptlets, run here with systemctl/systemd-tmpfiles/chown stubbed out, make
# the tokens once, enable units on install, stop them on removal and restart the daemons (not
# the socket) on upgrade.
. "$(dirname "$0")/lib.sh"

# ./runtests builds and tests the packages once, in its main `make check`; the sanitizer and
# distcheck passes of the same tree set SERVE_TEST_PACKAGES=0 (the packages do not change).
[ "${SERVE_TEST_PACKAGES:-1}" = 0 ] && { echo "1..0 # SKIP packages are tested in the main make check"; exit 77; }

command -v rpmbuild >/dev/null || { echo "1..0 # SKIP rpmbuild is not installed (Debian: apt-get install rpm)"; exit 77; }

out=$("$top_srcdir/packaging/build-rpm" "$WORK/rpms" 2>"$WORK/build-rpm.err")
st=$?
check "packaging/build-rpm succeeds" "$st" 0
[ "$st" -ne 0 ] && { sed 's/^/#   /' "$WORK/build-rpm.err"; finish; exit; }
main=$(echo "$out" | grep '/serve-[0-9][^/]*\.rpm$')
devel=$(echo "$out" | grep '/serve-devel-[0-9][^/]*\.rpm$')
check "it prints the serve and serve-devel packages it made" "$(echo "$out" | wc -l) $([ -f "$main" ] && [ -f "$devel" ] && echo both)" "2 both"

files=$(rpm -qlp "$main")
libdir=$(rpm --eval %_libdir)
dfiles=$(rpm -qlp "$devel")
has() { echo "$1" | grep -qx -- "$2" && echo yes || echo no; }
for f in /usr/bin/serve /usr/bin/serve-head /usr/bin/serve-worker /usr/libexec/serve/serve-replica \
        $libdir/serve/apps/echo.so $libdir/serve/apps/slow.so "$libdir/libserve.so.0.*" \
        /usr/lib/systemd/system/serve-head.service /usr/lib/systemd/system/serve-worker.service \
        /usr/lib/systemd/system/serve-worker.socket /usr/lib/systemd/system/serve.target \
        /usr/lib/sysusers.d/serve.conf /usr/lib/tmpfiles.d/serve.conf \
        /etc/serve/apps.yaml /etc/serve/cluster.yaml /etc/serve/worker.yaml /etc/serve/join-token /etc/serve/api-token; do
        check "serve contains $f" "$(has "$files" "$f")" yes
done
for f in /usr/include/serve.h $libdir/libserve.so $libdir/pkgconfig/serve.pc; do
        check "serve-devel contains $f" "$(has "$dfiles" "$f")" yes
        check "serve does not contain $f" "$(has "$files" "$f")" no
done
check "no libtool .la files are packaged" "$(echo "$files$dfiles" | grep -c '\.la$')" 0
check_contains "serve-devel requires the same serve" "$(rpm -qpR "$devel")" "serve$(rpm --eval %{?_isa}) = $(rpm -qp --qf '%{VERSION}-%{RELEASE}' "$main")"

check "the configuration files are %config" "$(rpm -qpc "$main" | grep '\.yaml$' | tr '\n' ' ')" \
        "/etc/serve/apps.yaml /etc/serve/cluster.yaml /etc/serve/worker.yaml "
check "they are noreplace: local edits survive upgrades" \
        "$(rpm -qp --qf '[%{FILENAMES} %{FILEFLAGS:fflags}\n]' "$main" | grep -c '^/etc/serve/.*\.yaml c*n')" 3
check "the tokens are ghosts owned by serve, mode 0600" \
        "$(rpm -qp --qf '[%{FILENAMES} %{FILEFLAGS:fflags} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILEMODES:perms}\n]' "$main" |
           grep -- '-token ' | grep -c 'g.* serve:serve -rw-------')" 2

# The payload: units point at the packaged binaries; %pre makes the user sysusers.d describes.
mkdir -p "$WORK/root"
(cd "$WORK/root" && rpm2archive - <"$main" | tar -xzf -)
check_contains "serve-head.service runs /usr/bin/serve-head" "$(cat "$WORK/root/usr/lib/systemd/system/serve-head.service")" \
        "ExecStart=/usr/bin/serve-head "
user_line=$(grep -v '^#' "$WORK/root/usr/lib/sysusers.d/serve.conf")
check_contains "%pre creates the user of the shipped sysusers.d file" "$(rpm -qp --qf '%{PREIN}' "$main")" "'$user_line'"
check_contains "%pre falls back to useradd" "$(rpm -qp --qf '%{PREIN}' "$main")" "useradd -r -g serve"

# The scriptlets, run against $WORK/etc with stubs that record what they were asked to do.
mkdir -p "$WORK/stubs" "$WORK/etc/serve"
for c in systemctl systemd-tmpfiles chown; do
        printf '#!/bin/sh\necho "%s $*" >>"%s"\n' "$c" "$WORK/calls" >"$WORK/stubs/$c"
        chmod +x "$WORK/stubs/$c"
done
scriptlet() { # scriptlet TAG ARG: runs the package's scriptlet TAG with $1=ARG; prints the calls
        rpm -qp --qf "%{$1}" "$main" | sed "s|/etc/serve/|$WORK/etc/serve/|g" >"$WORK/$1.sh"
        : >"$WORK/calls"
        PATH=$WORK/stubs:$PATH sh "$WORK/$1.sh" "$2" >"$WORK/$1.out" 2>&1 || echo "exit $?"
        cat "$WORK/calls"
}
calls=$(scriptlet POSTIN 1)
j=$(cat "$WORK/etc/serve/join-token" 2>/dev/null) a=$(cat "$WORK/etc/serve/api-token" 2>/dev/null)
check "install: the join token is 64 random hex digits" "$(echo "$j" | grep -cx '[0-9a-f]\{64\}')" 1
check "install: the API token is 64 random hex digits" "$(echo "$a" | grep -cx '[0-9a-f]\{64\}')" 1
check "install: the two tokens differ" "$([ "$j" != "$a" ] && echo yes)" yes
check "install: the tokens are mode 0600" "$(stat -c %a "$WORK/etc/serve/join-token" "$WORK/etc/serve/api-token" | tr '\n' ' ')" "600 600 "
check "install: the tokens are given to serve" "$(echo "$calls" | grep -c '^chown serve:serve .*-token')" 2
check_contains "install: /var/lib/serve is created" "$calls" "systemd-tmpfiles --create /usr/lib/tmpfiles.d/serve.conf"
check_contains "install: the units are enabled as the presets say" "$calls" \
        "systemctl --no-reload preset serve-head.service serve-worker.service serve-worker.socket serve.target"
calls=$(scriptlet POSTIN 2)
check "upgrade: the tokens stay as they were" "$(cat "$WORK/etc/serve/join-token" "$WORK/etc/serve/api-token")" "$j"$'\n'"$a"
check "upgrade: the presets are not applied again" "$(echo "$calls" | grep -c preset)" 0

calls=$(scriptlet POSTUN 1)
check_contains "upgrade: the daemons restart" "$calls" "systemctl try-restart serve-head.service serve-worker.service"
check "upgrade: the socket is not restarted (port 8000 stays open)" "$(echo "$calls" | grep try-restart | grep -c socket)" 0
check "removal: nothing is restarted" "$(scriptlet POSTUN 0 | grep -c try-restart)" 0
check_contains "removal: the units are stopped and disabled" "$(scriptlet PREUN 0)" \
        "systemctl --no-reload disable --now serve-head.service serve-worker.service serve-worker.socket serve.target"
check "upgrade: nothing is stopped before the new files are in" "$(scriptlet PREUN 1 | grep -c disable)" 0
finish
