"""Fixtures of the Ansible tests; the collection is importable as
``ansible_collections.unit_p2p.mesh`` from the checkout."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# the checkout for ansible_collections.*, this directory for ansible_helpers (whatever pytest's
# import mode)
for _path in (REPO, Path(__file__).resolve().parent):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from ansible_helpers import VENV_BIN, Fleet  # noqa: E402


@pytest.fixture
def ansible_env(tmp_path) -> dict[str, str]:
    """The environment ansible runs with: this checkout's ansible.cfg, this venv's python for
    local connections, one parseable line per task result."""
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-local"),
        ANSIBLE_REMOTE_TEMP=str(tmp_path / "ansible-remote"),
        # ad hoc: "host | STATUS => {json}" (ansible-core has no json callback of its own)
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_STDOUT_CALLBACK="ansible.builtin.minimal",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


@pytest.fixture
def agent_fleet(tmp_path):
    fleet = Fleet(tmp_path / "fleet")
    try:
        yield fleet
    finally:
        fleet.stop()
