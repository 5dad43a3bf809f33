# Copyright: contributors to pgbackup.lowlevel
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ssh options of every module that pulls files from another host (O(source_host) is each module's own)."""

from __future__ import annotations


class ModuleDocFragment:
    # Defined in code by ssh_argument_spec() in plugins/module_utils/ssh_source.py; keep both in step.
    DOCUMENTATION = r"""
options:
  source_user:
    description: ssh user on O(source_host).
    type: str
  source_port:
    description: ssh port of O(source_host).
    type: int
  ssh_key:
    description: Private key file for ssh.
    type: path
  ssh_options:
    description:
      - Extra ssh arguments, one list element per argument (for example V(-o), V(StrictHostKeyChecking=no)).
      - Where this host's CPU has AES instructions, ssh is given C(-c) with C(aes128-gcm@openssh.com) first and OpenSSH's
        other modern defaults after it (C(chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-ctr,aes256-ctr)) unless these options choose ciphers
        (V(-c) or V(Ciphers=)); a C(Ciphers) line in an ssh config file is overridden by it.
    type: list
    elements: str
    default: []
"""
