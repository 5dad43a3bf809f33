#!/usr/bin/env bash
# make demo: a sandbox primary + streaming standby with the machine's PostgreSQL 15 and, while pgbench writes on the
# primary, playbooks/demo.yml with the installed collection: a coordinated backup of the standby into <dir>/backup
# (verified, restore-tested) and a new replica cloned from the standby into <dir>/clone; then a summary.
# KEEP=1 leaves the sandbox (and the clone) running afterwards; the next run takes a leftover sandbox down first.
set -euo pipefail
venv=${1:?venv}
dir=${2:?sandbox dir}
collections=${3:?installed collections path}
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

sandbox() { "$venv/bin/python" -m tests.integration.harness.sandbox "$@"; }
began=$(date +%s)

# A sandbox left over by an earlier KEEP=1 run (or an interrupted one) is stopped first, with what it made.
if [ -f "$dir/state.json" ]; then sandbox down --dir "$dir"; fi
rm -f "$dir/summary.json" "$dir/pgbench.json"
if [ "${KEEP:-0}" != 1 ]; then
  trap 'sandbox down --dir "$dir"' EXIT
fi
sandbox up --dir "$dir" --mode local --major 15

# pgbench over the primary's unix socket (trust there, so no password anywhere); -T bounds it if this script dies.
sandbox load --dir "$dir" --seconds 300 --clients 2

play=0
ANSIBLE_COLLECTIONS_PATH="$collections" \
ANSIBLE_RETRY_FILES_ENABLED=false \
ANSIBLE_STDOUT_CALLBACK=default \
ANSIBLE_CALLBACK_RESULT_FORMAT=yaml \
ANSIBLE_DISPLAY_SKIPPED_HOSTS=false \
ANSIBLE_PIPELINING=True \
  "$venv/bin/ansible-playbook" -i "$dir/inventory.yml" playbooks/demo.yml -e "demo_summary_file=$dir/summary.json" || play=$?

sandbox load --dir "$dir" --stop --output "$dir/pgbench.json" >/dev/null
if [ "$play" != 0 ]; then
  echo "demo: playbooks/demo.yml failed (exit $play); its output above names the task and the cause" >&2
  exit "$play"
fi
"$venv/bin/python" scripts/demo_summary.py --dir "$dir" --elapsed "$(($(date +%s) - began))"
