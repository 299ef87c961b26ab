"""canonical_json writes with the C encoder where that provably gives RFC 8785's bytes; both
paths must agree on every JSON value, including those that take the slow path."""

from __future__ import annotations

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from unit_p2p.errors import BadDocument
from unit_p2p.sync.revision import canonical_json

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=6)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 53) + 1, 2 ** 53 - 1),
              st.floats(allow_nan=False, allow_infinity=False), text),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(text, inner, max_size=4)),
    max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_both_paths_write_exactly_rfc_8785(value):
    assert canonical_json(value) == rfc8785.dumps(value)


@pytest.mark.parametrize("value", [{"s": "\ud800"}, {"n": [2 ** 53]}, {"\ud800": 1}])
def test_what_rfc_8785_cannot_represent_is_refused_on_either_path(value):
    with pytest.raises(BadDocument, match="not_canonical"):
        canonical_json(value)
