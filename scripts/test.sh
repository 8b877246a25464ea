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
# The integration tests run a real RabbitMQ (the test session starts and stops it).
if ! command -v rabbitmq-server >/dev/null && ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
        # (Debian's package may start a broker of its own; the tests start theirs on 127.0.0.1)
        bash scripts/rabbitmq.sh stop >/dev/null 2>&1 || true
    else
        echo "scripts/test.sh: RabbitMQ is missing; install it (Debian: apt-get install rabbitmq-server)" >&2
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

exec .venv/bin/python -m pytest "$@"
