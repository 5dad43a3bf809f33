#!/usr/bin/env bash
# Runs `ansible-test sanity` on a copy of the collection placed where ansible-test wants it:
# <somewhere>/ansible_collections/pgbackup/lowlevel. Only files git knows (tracked or not ignored) are copied.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV:-$here/.venv}
# Its Python: the venv's own (3.11 for the main and oldest ansible-core, 3.13 for the newest).
python_version=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
dest=$here/build/sanity/$(basename "$venv")/ansible_collections/pgbackup/lowlevel

"$here/scripts/ansible-test-offline-pip.sh" "$venv"

rm -rf "$dest"
mkdir -p "$dest"
(cd "$here" && git ls-files -z -co --exclude-standard | tar --null -T - -cf -) | tar -xf - -C "$dest"

cd "$dest"
# The copy lives inside our checkout, where it is git-ignored; ansible-test asks git for the file list,
# so the copy gets a repository of its own.
git init -q . && git add -A
# --venv: ansible-test makes one virtualenv per sanity test with the exact tool versions it pins.
exec "$venv/bin/ansible-test" sanity --venv --python "$python_version" --color no "$@"
