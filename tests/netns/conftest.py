from __future__ import annotations

import functools

import pytest

from tests.netns.hosts import NetnsUnavailable, Network, probe_privilege, sweep_stale


@functools.cache
def _skip_reason() -> str | None:
    """Checked once per session; also clears namespaces left by a run that was killed."""
    try:
        probe_privilege()
    except NetnsUnavailable as exc:
        return str(exc)
    sweep_stale()
    return None


@pytest.fixture
def make_network():
    """``make_network([0, 0, 1])`` builds hosts on segments; everything is removed at teardown,
    whatever the test did."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    made: list[Network] = []

    def make(segments: list[int]) -> Network:
        net = Network(segments)
        made.append(net)
        return net.create()

    try:
        yield make
    finally:
        for net in made:
            net.destroy()
