#!/usr/bin/env bash
# Run the test suite against SQLite and the PostgreSQL server at 127.0.0.1:5432.
#
# SEQR_TEST_POSTGRES_URL names the server; the PostgreSQL tests fail (never skip) when it is set
# and unreachable. Unset it to run only the SQLite tests on a machine without a server.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SEQR_VENV:-$root/.venv}"
# The native kernel tests fail instead of skipping when no C compiler can build them.
export SEQR_REQUIRE_NATIVE="${SEQR_REQUIRE_NATIVE-1}"
export SEQR_TEST_POSTGRES_URL="${SEQR_TEST_POSTGRES_URL-postgresql+psycopg://postgres@127.0.0.1:5432/test}"

if [[ -n "$SEQR_TEST_POSTGRES_URL" ]] && ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    # Our machines install PostgreSQL from Debian's packages; start the cluster if it has stopped.
    if command -v pg_ctlcluster >/dev/null && [[ -d /etc/postgresql ]]; then
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start || true
    fi
fi

cd "$root"
exec "$venv/bin/python" -m pytest "$@"
