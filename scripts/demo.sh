#!/usr/bin/env bash
# make demo: a sandbox primary + streaming standby with the machine's PostgreSQL, and the demo playbook on them.
# KEEP=1 leaves the sandbox running afterwards.
set -euo pipefail
venv=${1:?venv}
dir=${2:?sandbox dir}
collections=${3:?installed collections path}
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

sandbox() { "$venv/bin/python" -m tests.integration.harness.sandbox "$@"; }

# A sandbox left over by an earlier KEEP=1 run (or an interrupted one) is stopped first.
[ -f "$dir/state.json" ] && sandbox down --dir "$dir"
if [ "${KEEP:-0}" != 1 ]; then
  trap 'sandbox down --dir "$dir"' EXIT
fi
sandbox up --dir "$dir" --mode local --major 15

ANSIBLE_COLLECTIONS_PATH="$collections" \
ANSIBLE_RETRY_FILES_ENABLED=false \
ANSIBLE_STDOUT_CALLBACK=default \
ANSIBLE_CALLBACK_RESULT_FORMAT=yaml \
  "$venv/bin/ansible-playbook" -i "$dir/inventory.yml" playbooks/sandbox_facts.yml
