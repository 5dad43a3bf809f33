"""Runs a module's main() in-process with given arguments and returns its JSON result: the one harness of the
modules' unit tests, on every ansible-core `make test` runs (patch_module_args from 2.19 on, _ANSIBLE_ARGS before)."""

from __future__ import annotations

import contextlib
import json

import pytest
from ansible.module_utils import basic

try:
    from ansible.module_utils.testing import patch_module_args
except ImportError:  # ansible-core before 2.19

    @contextlib.contextmanager
    def patch_module_args(args: dict):
        saved = basic._ANSIBLE_ARGS
        basic._ANSIBLE_ARGS = json.dumps({"ANSIBLE_MODULE_ARGS": args}).encode()
        try:
            yield
        finally:
            basic._ANSIBLE_ARGS = saved


class _Exit(Exception):
    pass


def run_main(main, monkeypatch, capsys, args: dict) -> dict:
    def leave(code):
        raise _Exit(code)

    monkeypatch.setattr("sys.exit", leave)
    with patch_module_args(args), pytest.raises(_Exit):
        main()
    return json.loads(capsys.readouterr().out)
