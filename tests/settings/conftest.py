"""Fixtures shared by the settings, identity and logging tests."""

from __future__ import annotations

import pytest
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID


def new_peer_id() -> str:
    return ID.from_pubkey(create_new_key_pair().public_key).to_base58()


@pytest.fixture
def peer() -> str:
    """A real Ed25519 peer ID."""
    return new_peer_id()
