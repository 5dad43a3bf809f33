#!/usr/bin/env bash
# ansible-test bootstraps pip into its helper virtualenvs with a get-pip script that it downloads from a
# host outside the package registries. Where that download is impossible (as on our CI), put a stand-in at
# the cache path ansible-test looks at first: it installs pip with ensurepip, then the pinned pip from the index.
# Where the download works, nothing is done and ansible-test behaves normally.
set -euo pipefail
venv=${1:?usage: $0 VENV}
reqs=$("$venv/bin/python" -c 'import ansible_test, os; print(os.path.dirname(ansible_test.__file__))')/_internal/python_requirements.py
pip_version=$(sed -n "s/^ *pip='\([0-9.]*\)',.*/\1/p" "$reqs" | head -n 1)
[ -n "$pip_version" ] || { echo "cannot find the pip version ansible-test pins in $reqs" >&2; exit 1; }
cache=$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py
[ -f "$cache" ] && exit 0

url="https://ci-files.testing.ansible.com/ansible-test/get-pip-$pip_version.py"
mkdir -p "$(dirname "$cache")"
if "$venv/bin/python" - "$url" "$cache.download" <<'PY' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=15) as r, open(sys.argv[2], "wb") as f:
    f.write(r.read())
PY
then
  mv "$cache.download" "$cache"
  exit 0
fi
rm -f "$cache.download"
echo "ansible-test's pip bootstrap script cannot be downloaded here; using an ensurepip stand-in at $cache" >&2
cat > "$cache" <<'PY'
# Stand-in for get-pip.py (see scripts/ansible-test-offline-pip.sh): ensurepip, then the pip version asked for.
import subprocess
import sys

subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"])
wanted = [a for a in sys.argv[1:] if a.startswith(("pip==", "setuptools==", "wheel=="))]
if wanted:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", *wanted])
PY
