#!/usr/bin/env bash
# The suite twice, at the same time: everything on SQLite, and every database test again on PostgreSQL
# (Redis-backed tests run in both, each on its own Redis database). Each run's output goes to a log that is
# printed when both have finished; the exit status is non-zero if either failed.
# Usage: scripts/run-tests.sh [pytest args...]   (after `eval "$(scripts/test-services.sh)"`)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
logs=$(mktemp -d)
redis=${PORTAL_TEST_REDIS_URL:-redis://127.0.0.1:6379/15}
db=${redis##*/}
other_redis="${redis%/*}/$(( db > 0 ? db - 1 : 1 ))"

PORTAL_TEST_ENGINE=sqlite "$PY" -m pytest "$@" >"$logs/sqlite.log" 2>&1 &
sqlite_pid=$!
PORTAL_TEST_ENGINE=postgres PORTAL_TEST_REDIS_URL=$other_redis "$PY" -m pytest -m db "$@" >"$logs/postgres.log" 2>&1 &
postgres_pid=$!

wait "$sqlite_pid"; sqlite_status=$?
wait "$postgres_pid"; postgres_status=$?
echo "=== SQLite (every test) ==="
cat "$logs/sqlite.log"
echo "=== PostgreSQL (every database test; Redis $other_redis) ==="
cat "$logs/postgres.log"
rm -rf "$logs"
echo "SQLite run: exit $sqlite_status; PostgreSQL run: exit $postgres_status"
exit $(( sqlite_status || postgres_status ))
