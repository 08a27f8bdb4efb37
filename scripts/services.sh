#!/usr/bin/env bash
# Installs what the tests need when it is missing, and starts it on loopback:
#   PostgreSQL  127.0.0.1:5432  user postgres, trust auth
#   MariaDB     127.0.0.1:3306  user root, empty password
#   a Python venv with the test tools (scripts/requirements-test.txt)
# Idempotent: running it again with everything up changes nothing.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
venv="${TRIBUTARY_VENV:-$HOME/.cache/tributary/venv}"

log() { echo "services: $*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  # Package scripts must not try to start services through an init system that is not
  # running here; this script starts them itself.
  local policy=/usr/sbin/policy-rc.d created=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod +x "$policy"
    created=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  if [ "$created" -eq 1 ]; then as_root rm -f "$policy"; fi
}

wait_for() {
  local what="$1"; shift
  for _ in $(seq 1 60); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  log "$what did not come up in 30 s"
  return 1
}

start_postgres() {
  if ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
    log "installing PostgreSQL"
    apt_install postgresql
  fi
  local version
  version="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
  if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -qx "$version main"; then
    log "creating PostgreSQL cluster $version/main"
    as_root pg_createcluster "$version" main >/dev/null
  fi
  local hba="/etc/postgresql/$version/main/pg_hba.conf"
  if ! as_root grep -Eq '^host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
    log "trusting loopback connections in $hba"
    as_root sed -i -E 's/^(host[[:space:]]+all[[:space:]]+all[[:space:]]+(127\.0\.0\.1\/32|::1\/128)[[:space:]]+)[a-z0-9-]+/\1trust/' "$hba"
    if ! as_root grep -Eq '^host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
      printf 'host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n' | as_root tee -a "$hba" >/dev/null
    fi
    if as_root pg_ctlcluster --skip-systemctl-redirect "$version" main status >/dev/null 2>&1; then
      as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload
    fi
  fi
  if ! as_root pg_ctlcluster --skip-systemctl-redirect "$version" main status >/dev/null 2>&1; then
    log "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
  fi
  wait_for PostgreSQL pg_isready -q -h 127.0.0.1 -p 5432
  psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null
  # Extensions the tests use, created once: creating them per test would race.
  psql -h 127.0.0.1 -U postgres -d postgres -Atqc \
    "CREATE EXTENSION IF NOT EXISTS citext; CREATE EXTENSION IF NOT EXISTS postgres_fdw;" >/dev/null
  # One role that must give its password, for the tests of authentication failures; its
  # rule goes before the trust rules (pg_hba.conf is first match).
  psql -h 127.0.0.1 -U postgres -d postgres -Atqc "
    DO \$\$ BEGIN
      IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tributary_auth') THEN
        CREATE ROLE tributary_auth LOGIN PASSWORD 'tributary-test-password';
      END IF;
    END \$\$;" >/dev/null
  if ! as_root grep -q '^host all tributary_auth 127.0.0.1/32 scram-sha-256' "$hba"; then
    as_root sed -i '0,/^host[[:space:]]/s//host all tributary_auth 127.0.0.1\/32 scram-sha-256\nhost /' "$hba"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload
  fi
  log "PostgreSQL $version is up on 127.0.0.1:5432"
}

start_mariadb() {
  if [ ! -x /usr/sbin/mariadbd ]; then
    log "installing MariaDB"
    apt_install mariadb-server mariadb-client
  fi
  as_root mkdir -p /run/mysqld
  as_root chown mysql:mysql /run/mysqld
  # Without name resolution a TCP client from 127.0.0.1 is 'root'@'127.0.0.1' (the user
  # made below), not Debian's socket-only 'root'@'localhost'.
  local conf=/etc/mysql/mariadb.conf.d/99-tributary.cnf
  if [ ! -f "$conf" ]; then
    printf '[mysqld]\nskip-name-resolve\nbind-address = 127.0.0.1\nport = 3306\n' | as_root tee "$conf" >/dev/null
  fi
  if as_root mysqladmin ping --silent >/dev/null 2>&1 \
    && [ "$(as_root mysql -uroot -N -B -e 'SELECT @@skip_name_resolve')" != "1" ]; then
    log "restarting MariaDB to apply $conf"
    as_root mysqladmin shutdown
    for _ in $(seq 1 60); do as_root mysqladmin ping --silent >/dev/null 2>&1 || break; sleep 0.5; done
  fi
  if ! as_root mysqladmin ping --silent >/dev/null 2>&1; then
    log "starting MariaDB"
    as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
  fi
  wait_for MariaDB as_root mysqladmin ping --silent
  # Debian's root@localhost uses unix-socket auth; tests connect over TCP without a password.
  as_root mysql -uroot -e "
    CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
    GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
    CREATE DATABASE IF NOT EXISTS test;
    FLUSH PRIVILEGES;"
  mysql -h 127.0.0.1 -P 3306 -uroot -e 'SELECT 1' >/dev/null
  log "MariaDB is up on 127.0.0.1:3306"
}

python_tools() {
  local requirements="$here/requirements-test.txt"
  local stamp="$venv/.requirements"
  if [ ! -x "$venv/bin/python" ]; then
    log "creating the Python venv $venv"
    python3 -m venv "$venv"
  fi
  if ! cmp -s "$requirements" "$stamp"; then
    log "installing Python test tools"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$requirements"
    cp "$requirements" "$stamp"
  fi
}

start_postgres
start_mariadb
python_tools
