#!/usr/bin/env bash
# System packages the integration test bed needs (Debian 12, run as root). Idempotent and quick when all is present:
# apt-get runs only for what is missing, and `apt-get update` at most once.
# It never enables or starts system services: the test bed starts its own sshd and PostgreSQL servers by PID.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  echo "install-system-deps.sh: run as root (the integration tests need root for namespaces and runuser)" >&2
  exit 1
fi

# command or file -> Debian package that provides it
declare -A want=(
  [/usr/sbin/sshd]=openssh-server
  [/usr/bin/ssh]=openssh-client
  [/usr/bin/ssh-keygen]=openssh-client
  [/usr/bin/rsync]=rsync
  [/usr/sbin/ip]=iproute2
  [/usr/sbin/runuser]=util-linux
  [/usr/bin/cmp]=diffutils  # the clusters' archive_command compares a re-archived segment with the archived one
  [/usr/bin/shellcheck]=shellcheck  # ansible-test sanity's shellcheck test (docs/development.md)
  [/usr/lib/postgresql/15/bin/postgres]=postgresql-15
  [/usr/lib/postgresql/15/bin/psql]=postgresql-client-15
  [/usr/lib/postgresql/15/bin/pg_amcheck]=postgresql-client-15
  [/usr/lib/postgresql/15/bin/pg_verifybackup]=postgresql-client-15
  [/usr/sbin/pgbouncer]=pgbouncer  # the connection-pooler tests (session and transaction pooling)
  [/usr/bin/btrfs]=btrfs-progs  # snapshot backups: btrfs filesystems on loop files (tests/integration/test_volume_snapshot.py)
  # Database hosts run Ansible modules with the system Python as the postgres user when the venv's Python
  # is not reachable by that user (e.g. a venv built from a pyenv Python under /root).
  [/usr/lib/python3/dist-packages/psycopg2/__init__.py]=python3-psycopg2
)
missing=()
for path in "${!want[@]}"; do
  [ -e "$path" ] || missing+=("${want[$path]}")
done
command -v npm >/dev/null 2>&1 || missing+=(npm)

if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "install-system-deps.sh: installing ${missing[*]}"
  # policy-rc.d 101 = "action not allowed": package scripts must not start sshd or a PostgreSQL "main" cluster.
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 0755 "$policy"
    own_policy=1
  fi
  # An if, not `[ ... ] && rm`: a machine that already has policy-rc.d (most Debian images) must not end with status 1.
  cleanup() { if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi; }
  trap cleanup EXIT
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  # Installing a service package enables it for the next boot; we only want the binaries. (systemctl disable
  # edits the unit symlinks even when systemd is not running; deb-systemd-helper refuses outside dpkg.)
  if command -v systemctl >/dev/null 2>&1; then
    for pkg in "${missing[@]}"; do
      case $pkg in
        openssh-server) systemctl disable --quiet ssh.service ssh.socket 2>/dev/null || true ;;
        postgresql-15) systemctl disable --quiet postgresql.service 2>/dev/null || true ;;
        pgbouncer) systemctl disable --quiet pgbouncer.service 2>/dev/null || true ;;
      esac
    done
  fi
fi

# The clusters run as the postgres OS user (postgresql-common creates it; make sure on odd machines).
if ! id postgres >/dev/null 2>&1; then
  adduser --system --group --home /var/lib/postgresql --shell /bin/bash postgres
fi
# sshd (UsePAM no) refuses any key login to an account whose password field starts with "!" ("account is locked").
# Debian creates postgres with a bare "!"; "*" still allows no password login but lets key login through.
if [ "$(getent shadow postgres | cut -d: -f2)" = "!" ] || [ "$(getent shadow postgres | cut -d: -f2)" = "!*" ]; then
  usermod -p '*' postgres
fi
# sshd's privilege separation directory (normally created by the ssh service unit, which we do not start).
install -d -m 0755 /run/sshd
