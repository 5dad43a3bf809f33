# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ssh options of the modules that pull files from another host, defined once (documented in doc_fragments/ssh_source.py)."""

from __future__ import annotations

from typing import Mapping


def ssh_argument_spec() -> dict:
    """A fresh argument spec of the ssh options; O(source_host) stays each module's own (its meaning differs)."""
    return {
        "source_user": {"type": "str"},
        "source_port": {"type": "int"},
        "ssh_key": {"type": "path", "no_log": False},
        "ssh_options": {"type": "list", "elements": "str", "default": []},
    }


def ssh_settings(params: Mapping) -> tuple:
    """(host, user, port, key, options) from a module's params, as copy_engine.Source takes them after the path."""
    return (params["source_host"], params["source_user"], params["source_port"], params["ssh_key"], tuple(params["ssh_options"]))
