#!/usr/bin/env bash
# Make sure PostgreSQL, Redis and Chromium are there for `make test`; start or install what is missing.
# Prints `export ...` lines for the caller to eval (the URLs the tests should use). Progress goes to stderr.
set -euo pipefail

PG_URL=${PORTAL_TEST_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/portal_test}
REDIS_URL=${PORTAL_TEST_REDIS_URL:-redis://127.0.0.1:6379/15}

say() { echo "test-services: $*" >&2; }
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
is_root() { [ "$(id -u)" = 0 ]; }
apt_install() {
  if is_root && command -v apt-get >/dev/null; then
    say "installing $* with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
  else
    say "cannot install $*: run as root on Debian/Ubuntu, or set PORTAL_TEST_DATABASE_URL / PORTAL_TEST_REDIS_URL"
    exit 1
  fi
}

# --- PostgreSQL ----------------------------------------------------------------------------------------
pg_host=$(python3 -c "import sys,urllib.parse as u;p=u.urlsplit(sys.argv[1]);print(p.hostname or '127.0.0.1', p.port or 5432)" "$PG_URL")
read -r host port <<<"$pg_host"
if ! port_open "$host" "$port"; then
  if [ -z "${PORTAL_TEST_DATABASE_URL:-}" ] && command -v pg_ctlcluster >/dev/null && ls /etc/postgresql/*/main >/dev/null 2>&1; then
    say "starting the local PostgreSQL cluster"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start >&2 || true
  fi
fi
if ! port_open "$host" "$port"; then
  # A throwaway cluster with trust auth on its own port, owned by the postgres user when we are root.
  ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1 || apt_install postgresql
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  dir=/tmp/portal-test-pg
  port=54329
  run=()
  if is_root; then run=(runuser -u postgres --); fi
  if [ ! -f "$dir/PG_VERSION" ]; then
    mkdir -p "$dir" && { is_root && chown postgres "$dir" || true; }
    "${run[@]}" "$bin/initdb" -D "$dir" -U postgres --auth=trust >/dev/null
  fi
  if ! port_open 127.0.0.1 "$port"; then
    say "starting a throwaway PostgreSQL on 127.0.0.1:$port"
    "${run[@]}" "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w \
      -o "-p $port -c listen_addresses=127.0.0.1 -k $dir" start >&2
  fi
  PG_URL="postgresql://postgres@127.0.0.1:$port/portal_test"
fi

# --- Redis ---------------------------------------------------------------------------------------------
r_host=$(python3 -c "import sys,urllib.parse as u;p=u.urlsplit(sys.argv[1]);print(p.hostname or '127.0.0.1', p.port or 6379)" "$REDIS_URL")
read -r host port <<<"$r_host"
if ! port_open "$host" "$port"; then
  command -v redis-server >/dev/null || apt_install redis-server
  say "starting redis-server on 127.0.0.1:$port"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
    --dir /tmp --logfile /tmp/portal-test-redis.log >&2
  for _ in $(seq 50); do port_open "$host" "$port" && break; sleep 0.1; done
fi

# --- Chromium for the browser tests (Debian's package; Playwright downloads no browser) ------------------
CHROMIUM=${PORTAL_TEST_CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
if [ -z "$CHROMIUM" ]; then
  apt_install chromium
  CHROMIUM=$(command -v chromium)
fi

# --- xmlsec1 for the SSO tests' independent SAML IdP (pysaml2 signs with it; the portal itself does not) ---
command -v xmlsec1 >/dev/null || apt_install xmlsec1

echo "export PORTAL_TEST_CHROMIUM='$CHROMIUM'"
echo "export PORTAL_TEST_DATABASE_URL='$PG_URL'"
echo "export PORTAL_TEST_REDIS_URL='$REDIS_URL'"
