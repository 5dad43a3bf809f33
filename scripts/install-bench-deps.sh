#!/usr/bin/env bash
# The peers `make bench` (bench/run_bench.py) times against: pgBackRest and Barman, Debian 12's packages
# (bookworm: pgbackrest 2.45, barman 3.4). Run as root; idempotent, apt-get only for what is missing.
# Never enables or starts a service: the bench runs Barman's and pgBackRest's commands itself.
# A package that fails to install is not fatal: the bench reports that peer as "not available: <why>".
set -uo pipefail

if [ "$(id -u)" != 0 ]; then
  echo "install-bench-deps.sh: run as root" >&2
  exit 1
fi

# The benchmarks' Python tools (py-spy for bench/copy_profile.py) go into the project's .venv, made by `make deps`.
here=$(cd "$(dirname "$0")/.." && pwd)
if [ -x "$here/.venv/bin/python" ]; then
  "$here/.venv/bin/python" -m pip install -q --disable-pip-version-check -r "$here/bench/requirements.txt" \
    || echo "install-bench-deps.sh: could not install bench/requirements.txt; bench/copy_profile.py needs it" >&2
fi

declare -A want=(
  [/usr/bin/pgbackrest]=pgbackrest
  [/usr/bin/barman]=barman
  [/usr/bin/time]=time   # peak RSS of our processes (/usr/bin/time -v)
)
missing=()
for path in "${!want[@]}"; do
  [ -e "$path" ] || missing+=("${want[$path]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then   # 101 = "action not allowed": no service starts from a package script
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod 0755 "$policy"
  own_policy=1
fi
# shellcheck disable=SC2317  # run by the EXIT trap below
cleanup() { if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT
echo "install-bench-deps.sh: installing ${missing[*]}"
apt-get update -qq || echo "install-bench-deps.sh: apt-get update failed" >&2
for pkg in "${missing[@]}"; do   # one by one: a peer that cannot be had must not keep the others out
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" \
    || echo "install-bench-deps.sh: could not install $pkg; the bench reports it as not available" >&2
done
# barman's package creates a cron job and a barman user; the bench uses neither (it runs barman with its own config).
if command -v systemctl >/dev/null 2>&1; then
  systemctl disable --quiet barman.service 2>/dev/null || true
fi
exit 0
