#!/bin/sh
# The serve Python package's unit tests (tests/python/test_serve.py) under Debian's python3,
# the interpreter the bridge embeds. 77 (skip) only when it is missing.
PY=${SERVE_TEST_PYTHON:-/usr/bin/python3}
[ -x "$PY" ] || { echo "SKIP: $PY not found"; exit 77; }
here=$(cd "$(dirname "$0")" && pwd)
exec "$PY" "$here/test_serve.py"
