#!/usr/bin/env bash
# Creates .venv with Python 3.11+ and the pinned development requirements.
# Re-installs only when requirements-dev.txt changed since the last install (stamp holds its hash).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV:-$here/.venv}
stamp=$venv/.requirements-dev.sha256
want=$(sha256sum "$here/requirements-dev.txt" | cut -d' ' -f1)

# A second interpreter for the modules with psycopg 3 and no psycopg2 (it sees neither .venv's packages nor Debian's):
# integration tests run the standby_backup role with it, so both drivers are exercised against real servers. It is
# made from the system's python3, which the postgres user can run (a Python under /root is not reachable for it).
psycopg3=$venv/psycopg3
psycopg3_pin=$(grep -o '^psycopg\[binary\]==[0-9.]*' "$here/requirements-dev.txt")
ensure_psycopg3() {
  local base=/usr/bin/python3
  [ -x "$base" ] || base=$venv/bin/python
  if ! "$psycopg3/bin/python" -c 'import psycopg' 2>/dev/null; then
    if ! "$base" -m venv --clear "$psycopg3" 2>/dev/null; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
      "$base" -m venv --clear "$psycopg3"
    fi
    "$psycopg3/bin/python" -m pip install -q --disable-pip-version-check "$psycopg3_pin"
  fi
}

if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  ensure_psycopg3
  exit 0
fi

python=${PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      python=$candidate
      break
    fi
  done
fi
[ -n "$python" ] || { echo "Python 3.11 or newer is needed (found none on PATH); on Debian 12: apt-get install python3" >&2; exit 1; }

if [ ! -x "$venv/bin/python" ]; then
  if ! "$python" -m venv "$venv" 2>/dev/null; then
    # Debian splits venv/ensurepip into python3-venv.
    rm -rf "$venv"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    "$python" -m venv "$venv"
  fi
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$here/requirements-dev.txt"
ensure_psycopg3
echo "$want" > "$stamp"
