# The two commands a newcomer needs (both set everything up on a fresh Debian 12 machine, as root):
#   make demo   - on a local sandbox (primary + streaming standby) with pgbench writing: a coordinated standby backup and a replica clone, then a summary
#   make test   - every check: ruff, ansible-lint, ansible-test sanity, unit, integration and molecule tests
SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
BUILD := $(CURDIR)/build
DEMO_DIR := $(BUILD)/demo
COLLECTIONS := $(BUILD)/installed
VERSION := $(shell sed -n 's/^version: *//p' galaxy.yml)
TARBALL := $(BUILD)/pgbackup-lowlevel-$(VERSION).tar.gz
# PG_VERSIONS="13 18" narrows the integration tests to some majors (default: 13 to 18).
# Two pytest-xdist workers for the integration tests; --dist loadgroup gives each worker whole groups (a major's local
# tests, the same major's namespace-host tests, the tests without a major: tests/integration/conftest.py), so each
# group's clusters are made once; the conftest hands out the oldest and newest majors' groups first (hence
# --no-loadscope-reorder). Three workers were tried: on 2 cores (load 6-10) three module tests of middle majors failed
# under the load (a standby's backend gone mid-start, a keeper gone, a restore test's standby not up in time).
# INTEGRATION_WORKERS=0 runs them in one process.
INTEGRATION_WORKERS ?= 2
# More pytest options for the integration run, e.g. INTEGRATION_ARGS=--junitxml=/tmp/integration.xml for per-test times.
INTEGRATION_ARGS ?=
export PG_VERSIONS ROLE_MAJORS INTEGRATION_WORKERS

.PHONY: demo test deps system-deps venv core-venvs build lint sanity units integration molecule clean bench bench-snapshot

deps: system-deps venv

system-deps:
	@bash scripts/install-system-deps.sh

venv:
	@bash scripts/bootstrap-venv.sh

# The oldest and newest ansible-core meta/runtime.yml admits (tests/ansible-core/): sanity and units run on both.
core-venvs: venv
	@bash scripts/bootstrap-core-venvs.sh

build: venv
	@mkdir -p $(BUILD)
	$(VENV)/bin/ansible-galaxy collection build --force --output-path $(BUILD) .
	ANSIBLE_COLLECTIONS_PATH=$(COLLECTIONS) $(VENV)/bin/ansible-galaxy collection install --force -p $(COLLECTIONS) $(TARBALL)

demo: deps build
	@bash scripts/demo.sh "$(VENV)" "$(DEMO_DIR)" "$(COLLECTIONS)"

test: deps
	$(MAKE) lint sanity units integration molecule

# This checkout seen as ansible_collections/pgbackup/lowlevel (the same link tests/conftest.py makes), so that
# ansible-lint and ansible-doc resolve pgbackup.lowlevel.* and group/pgbackup.lowlevel.postgres.
LINKED := $(BUILD)/collections
$(LINKED)/ansible_collections/pgbackup/lowlevel:
	@mkdir -p $(dir $@) && ln -sfn $(CURDIR) $@

# lint builds the tarball first: galaxy-importer checks it as Galaxy would (in build/: it writes importer_result.json into
# its working directory), ansible-builder makes the EE's context from it.
EE_CONTEXT := $(BUILD)/ee-context
lint: venv build $(LINKED)/ansible_collections/pgbackup/lowlevel
	$(VENV)/bin/ruff check plugins tests scripts $(wildcard bench)
	$(VENV)/bin/ruff format --check plugins tests scripts $(wildcard bench)
	ANSIBLE_COLLECTIONS_PATH=$(LINKED) PATH="$(VENV)/bin:$$PATH" $(VENV)/bin/ansible-lint --offline --profile production
	PATH="$(VENV)/bin:$$PATH" $(PY) scripts/gen_module_docs.py --check
	$(PY) scripts/check_role_args.py
	$(PY) scripts/gen_role_readmes.py --check
	@! tar tzf $(TARBALL) | grep -E '^playbooks/(demo|sandbox_facts)\.yml$$|^meta/execution-environment\.yml$$' \
	  || { echo "$(TARBALL) ships the files above: list them in galaxy.yml build_ignore" >&2; exit 1; }
	@test "$$(grep -c 'pgbackup-lowlevel-$(VERSION)\.tar\.gz' meta/execution-environment.yml)" = 2 \
	  || { echo "meta/execution-environment.yml must name pgbackup-lowlevel-$(VERSION).tar.gz (galaxy.yml's version) twice" >&2; exit 1; }
	cd $(BUILD) && GALAXY_IMPORTER_CONFIG=$(CURDIR)/tests/galaxy-importer.cfg PATH="$(VENV)/bin:$$PATH" $(PY) -m galaxy_importer.main $(TARBALL) \
	  > $(BUILD)/galaxy-importer.log 2>&1 || { cat $(BUILD)/galaxy-importer.log; exit 1; }
	@! grep -E '^(WARNING|ERROR)' $(BUILD)/galaxy-importer.log || { echo "galaxy-importer: see $(BUILD)/galaxy-importer.log" >&2; exit 1; }
	rm -rf $(EE_CONTEXT)
	$(VENV)/bin/ansible-builder create -f meta/execution-environment.yml -c $(EE_CONTEXT)
	@grep -q 'collections/pgbackup-lowlevel-$(VERSION)\.tar\.gz' $(EE_CONTEXT)/_build/requirements.yml \
	  && test -f $(EE_CONTEXT)/_build/collections/pgbackup-lowlevel-$(VERSION).tar.gz \
	  || { echo "$(EE_CONTEXT) does not install $(TARBALL)" >&2; exit 1; }

sanity: core-venvs
	VENV=$(VENV)/core-oldest bash scripts/sanity.sh
	VENV=$(VENV)/core-newest bash scripts/sanity.sh

# On the ansible-core the integration tests use (requirements-dev.txt), then on the oldest and newest supported.
# Two workers each (pytest-xdist, in every venv's requirements): the suite is CPU-bound and one process leaves a core idle.
units: core-venvs
	$(VENV)/bin/pytest -q -n 2 tests/unit
	$(VENV)/core-oldest/bin/pytest -q -n 2 -p no:cacheprovider tests/unit
	$(VENV)/core-newest/bin/pytest -q -n 2 -p no:cacheprovider tests/unit

integration: deps
	$(VENV)/bin/pytest -q --durations=25 $(if $(filter 0,$(INTEGRATION_WORKERS)),,-n $(INTEGRATION_WORKERS) --dist loadgroup --no-loadscope-reorder) $(INTEGRATION_ARGS) tests/integration

# One scenario per role in extensions/molecule; each makes its own PostgreSQL servers (SCENARIOS="..." for some).
molecule: deps
	bash scripts/molecule.sh

# The playbooks against cp -a + sync, pg_basebackup, pgBackRest and Barman (bench/README.md); writes bench/RESULTS.md.
# Knobs from the environment or the command line: SCALE (50), REPS (3), LOAD (0, 1, both), METHODS, SCALE_FIXED (1).
bench: deps build
	@bash scripts/install-bench-deps.sh
	$(PY) bench/run_bench.py

# Seconds in backup mode of a snapshot backup at two scales, against the copy method and pg_basebackup (bench/README.md).
bench-snapshot: deps build
	$(PY) bench/snapshot_bench.py

clean:
	rm -rf $(BUILD) .pytest_cache .ruff_cache .hypothesis
