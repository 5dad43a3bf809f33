#!/usr/bin/env bash
# make test: `molecule test` of every scenario in extensions/molecule (one per role; shared setup in
# extensions/molecule/config.yml), one after another so that a failure does not hide the others' results. Exits
# non-zero when any scenario failed. SCENARIOS="replica_clone" runs some only. Needs what `make deps` installs
# (the venv with molecule, Debian's PostgreSQL 15) and root (the sandbox runs the servers as postgres).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV:-$here/.venv}
cd "$here"  # molecule finds the scenarios and config.yml from the collection's root (galaxy.yml)

# This checkout as the collection pgbackup.lowlevel, the link make lint and tests/conftest.py make too.
collections=$here/build/collections
link=$collections/ansible_collections/pgbackup/lowlevel
if [ ! -e "$link" ]; then
  mkdir -p "$(dirname "$link")"
  ln -sfn "$here" "$link"
fi

export PATH="$venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH=$collections
export ANSIBLE_FORCE_COLOR=false PY_COLORS=0 NO_COLOR=1
# create.yml and destroy.yml run before the sandbox's inventory exists and after it is gone: molecule gives them
# only its own inventory (see extensions/molecule/config.yml).
export MOLECULE_ANSIBLE_ARGS_STRICT_MODE=1
# libpq settings of the caller's shell must not steer the checks' psql or the modules.
while read -r name; do unset "$name"; done < <(compgen -e | grep '^PG' || true)

# Whatever happens to this script (a failed step, Ctrl-C), no sandbox server outlives it. molecule's destroy step
# normally removed them already; this catches a molecule that was killed.
sandboxes_down() {
  local state
  for state in "$here"/build/molecule/*/state.json; do
    [ -e "$state" ] || continue
    "$venv/bin/python" -m tests.integration.harness.sandbox down --dir "$(dirname "$state")" || true
  done
}
trap sandboxes_down EXIT

if [ -n "${SCENARIOS:-}" ]; then
  read -r -a scenarios <<<"$SCENARIOS"
else
  scenarios=()
  for file in extensions/molecule/*/molecule.yml; do
    scenarios+=("$(basename "$(dirname "$file")")")
  done
fi

# Each run starts with molecule logging "CRITICAL 'extensions/molecule/default/molecule.yml' glob failed": it looks
# for a scenario named default whose hosts the others would share; there is none (each scenario makes its own).
failed=()
total_start=$SECONDS
for scenario in "${scenarios[@]}"; do
  start=$SECONDS
  if molecule test --scenario-name "$scenario"; then
    echo "molecule: $scenario passed in $((SECONDS - start)) s"
  else
    echo "molecule: $scenario FAILED after $((SECONDS - start)) s (its output is above)" >&2
    failed+=("$scenario")
  fi
done

echo "molecule: ${#scenarios[@]} scenario(s) in $((SECONDS - total_start)) s"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "molecule: failed: ${failed[*]} - rerun one with: SCENARIOS=${failed[0]} bash scripts/molecule.sh" >&2
  exit 1
fi
