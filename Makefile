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
export PG_VERSIONS ROLE_MAJORS

.PHONY: demo test deps system-deps venv build lint sanity units integration molecule clean

deps: system-deps venv

system-deps:
	@bash scripts/install-system-deps.sh

venv:
	@bash scripts/bootstrap-venv.sh

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

lint: venv $(LINKED)/ansible_collections/pgbackup/lowlevel
	$(VENV)/bin/ruff check plugins tests scripts $(wildcard bench)
	$(VENV)/bin/ruff format --check plugins tests scripts $(wildcard bench)
	ANSIBLE_COLLECTIONS_PATH=$(LINKED) PATH="$(VENV)/bin:$$PATH" $(VENV)/bin/ansible-lint --offline --profile production
	PATH="$(VENV)/bin:$$PATH" $(PY) scripts/gen_module_docs.py --check
	$(PY) scripts/draw_sequence.py --check
	$(PY) scripts/check_role_args.py

sanity: venv
	bash scripts/sanity.sh

units: venv
	$(VENV)/bin/pytest -q tests/unit

integration: deps
	$(VENV)/bin/pytest -q --durations=25 tests/integration

# One scenario per role in extensions/molecule; each makes its own PostgreSQL servers (SCENARIOS="..." for some).
molecule: deps
	bash scripts/molecule.sh

clean:
	rm -rf $(BUILD) .pytest_cache .ruff_cache .hypothesis
