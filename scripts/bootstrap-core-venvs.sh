#!/usr/bin/env bash
# Makes .venv/core-oldest and .venv/core-newest: the oldest and newest ansible-core the collection supports
# (meta/runtime.yml), for `make sanity` and `make units` (tests/ansible-core/*.txt pin them).
# - oldest: ansible-core 2.16 on Python 3.11 (its controller takes 3.10-3.12);
# - newest: ansible-core 2.21, which needs Python 3.12 or newer. Debian 12 has only 3.11, so the first that runs of:
#   NEWEST_PYTHON, python3.14/3.13/3.12 on PATH, a pyenv-built one, else Debian 13's python3.13 package unpacked
#   under build/ (see debian_python below; NEWEST_PYTHON=debian takes it whatever else there is).
# Each venv is made again only when its requirements file changed (a stamp holds its hash).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

runs_at_least() {  # PYTHON MINOR: the interpreter runs and is 3.MINOR or newer
  "$1" -c "import sys, ssl, sqlite3; sys.exit(0 if sys.version_info >= (3, $2) else 1)" >/dev/null 2>&1
}

# Debian 13's python3.13 and the libraries it needs, unpacked under build/debian-python (nothing is installed into
# the system): its own apt lists and cache, and the interpreter's ELF loader and library path set to the unpacked
# glibc with patchelf, since Debian 12's glibc is older than the one it was built against.
debian_python() {
  local root=$here/build/debian-python apt=$here/build/debian-python-apt
  if ! runs_at_least "$root/usr/bin/python3.13" 12; then
    command -v patchelf >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq patchelf; }
    rm -rf "$root" "$apt" && mkdir -p "$root" "$apt/lists/partial" "$apt/cache/archives/partial"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" > "$apt/sources.list"
    local opts=(-o APT::Sandbox::User=root -o "Dir::Etc::sourcelist=$apt/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$apt/lists"
      -o "Dir::Cache=$apt/cache" -o Dir::State::status=/dev/null)
    apt-get "${opts[@]}" update -qq
    local packages
    packages=$(apt-cache "${opts[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
      --no-replaces --no-enhances python3.13 python3.13-venv | grep -E '^[a-z0-9]' | sort -u |
      grep -vxE 'debconf|cdebconf|libdebian-installer4|libnewt0.52|libslang2|libtextwrap1|libselinux1|libpcre2-8-0|tzdata|ca-certificates|openssl')
    # shellcheck disable=SC2086 # one word per package
    (cd "$apt/cache/archives" && apt-get "${opts[@]}" download $packages >/dev/null)
    for deb in "$apt"/cache/archives/*.deb; do dpkg-deb -x "$deb" "$root"; done
    patchelf --set-interpreter "$root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" --force-rpath \
      --set-rpath "$root/usr/lib/x86_64-linux-gnu" "$root/usr/bin/python3.13"
  fi
  echo "$root/usr/bin/python3.13"
}

newest_python() {
  local candidate pyenv=${PYENV_ROOT:-$HOME/.pyenv}/versions
  [ "${NEWEST_PYTHON:-}" = debian ] && { debian_python; return; }
  for candidate in "${NEWEST_PYTHON:-}" python3.14 python3.13 python3.12 "$pyenv"/3.14*/bin/python3 "$pyenv"/3.13*/bin/python3 \
      "$pyenv"/3.12*/bin/python3; do
    [ -n "$candidate" ] && runs_at_least "$candidate" 12 && { command -v "$candidate"; return; }
  done
  debian_python
}

make_venv() {  # NAME PYTHON
  local venv=$here/.venv/core-$1 requirements=$here/tests/ansible-core/$1.txt want
  want=$(sha256sum "$requirements" | cut -d' ' -f1)
  # (its interpreter may be gone: `make clean` removes build/debian-python)
  "$venv/bin/python" -c '' 2>/dev/null && [ -x "$venv/bin/ansible" ] &&
    [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" = "$want" ] && return
  rm -rf "$venv"
  # --without-pip, then pip from the interpreter's own wheel where ensurepip would take a foreign one (Debian's
  # python3.13 looks for its wheels in the system's /usr/share/python-wheels, which holds Debian 12's).
  "$2" -m venv --without-pip "$venv"
  local wheels
  wheels=("$(dirname "$(dirname "$(readlink -f "$2")")")"/share/python-wheels/pip-*.whl)
  if [ -f "${wheels[0]}" ]; then
    "$venv/bin/python" "${wheels[0]}/pip" install -q --disable-pip-version-check --no-index "${wheels[0]}"
  else
    "$venv/bin/python" -m ensurepip >/dev/null
  fi
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements"
  echo "$want" > "$venv/.requirements.sha256"
}

oldest=${OLDEST_PYTHON:-$here/.venv/bin/python}
runs_at_least "$oldest" 11 || { echo "the oldest ansible-core's Python ($oldest) is not Python 3.11+" >&2; exit 1; }
make_venv oldest "$(readlink -f "$oldest")"
make_venv newest "$(newest_python)"
