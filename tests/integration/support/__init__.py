"""Helpers the integration test files share: playbook runs, waits, copies, faults, role variables, restore checks."""
