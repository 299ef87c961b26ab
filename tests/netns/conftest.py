from __future__ import annotations

import pytest

from tests.netns.hosts import NetnsUnavailable, Network, probe_privilege, sweep_stale

_privilege: list[str | None] = []


def _skip_reason() -> str | None:
    if not _privilege:
        try:
            probe_privilege()
            sweep_stale()
            _privilege.append(None)
        except NetnsUnavailable as exc:
            _privilege.append(str(exc))
    return _privilege[0]


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
