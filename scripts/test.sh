#!/usr/bin/env bash
# Install mistral-sandbox with its test extras into ./.venv and run the whole test suite.
# Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}

# The seccomp step (required by default) loads the system libseccomp.
if ! ldconfig -p 2>/dev/null | grep -q 'libseccomp\.so\.2'; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libseccomp2
    else
        echo "scripts/test.sh: libseccomp2 is missing; install it (Debian: apt-get install libseccomp2)" >&2
        exit 1
    fi
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
log=$(mktemp)
if ! .venv/bin/python -m pip install --quiet -e '.[test]' >"$log" 2>&1; then
    cat "$log"; rm -f "$log"; exit 1
fi
rm -f "$log"

# As root, actions run under unprivileged sandbox uids, which must be able to read the
# Python installation to import modules the zygote did not preload. Grant traversal
# (o+x, not listing) on any directory above the interpreter's library that lacks it.
if [ "$(id -u)" = 0 ]; then
    .venv/bin/python - <<'PY'
import os, sys, sysconfig
for top in {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"], os.getcwd()}:
    parts = os.path.realpath(top).split(os.sep)
    for i in range(2, len(parts) + 1):
        d = os.sep.join(parts[:i])
        mode = os.stat(d).st_mode
        if not mode & 0o001:
            print("scripts/test.sh: granting o+x on %s so sandbox uids can traverse it" % d)
            os.chmod(d, mode | 0o001)
PY
fi

exec .venv/bin/python -m pytest "$@"
