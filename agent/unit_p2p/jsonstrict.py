"""Strict JSON for what users hand the agent (API bodies, ``publish --config-file``).

Python's ``json`` module accepts things a Unit config must never hold, and each has bitten:
duplicate keys (merged silently, last one wins: ``{"dry_run": true, "dry_run": false}`` was a real
publish), ``NaN``/``Infinity`` (not JSON; Unit refuses them), lone surrogates such as ``"\\ud800"``
(they cannot be encoded as UTF-8 later) and nesting deep enough to exhaust the recursion limit
in the encoder. All of them are refused here with one short sentence that never echoes the input.
"""

from __future__ import annotations

import json
import re
import reprlib
from typing import Any

__all__ = ["MAX_DEPTH", "StrictJSONError", "clip", "loads", "unique_keys"]

#: objects and arrays nested deeper than this are refused (a Unit config needs about ten levels)
MAX_DEPTH = 64

_SURROGATE = re.compile("[\ud800-\udfff]")


class StrictJSONError(ValueError):
    """The text is not JSON or holds something refused; ``str()`` is one short sentence."""


_SHORT = reprlib.Repr()  # keyword arguments only from Python 3.12
_SHORT.maxlevel = 3
_SHORT.maxtuple = _SHORT.maxlist = _SHORT.maxdict = _SHORT.maxset = 4
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 60


def clip(value: object, limit: int = 60) -> str:
    """``repr(value)`` for a message, at most about ``limit`` characters, however big the value
    (a long line, or a YAML alias bomb that expands to billions of items)."""
    text = repr(value[: limit + 1]) if isinstance(value, str) else _SHORT.repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """``object_pairs_hook`` that refuses an object with the same key twice."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise StrictJSONError(f"duplicate key {clip(key)}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise StrictJSONError(f"{name} is not JSON")


def loads(data: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse RFC 8259 JSON strictly; raises ``StrictJSONError``."""
    try:
        value = json.loads(data, object_pairs_hook=unique_keys, parse_constant=_no_constant)
    except StrictJSONError:
        raise
    except json.JSONDecodeError as exc:
        raise StrictJSONError(f"{exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except UnicodeDecodeError as exc:
        raise StrictJSONError(f"not UTF-8 text (bad byte at offset {exc.start})") from None
    except RecursionError:
        raise StrictJSONError(f"nested deeper than {max_depth} levels") from None
    except ValueError as exc:  # e.g. an integer of more digits than int() accepts
        raise StrictJSONError(str(exc)[:200]) from None
    _check_tree(value, max_depth)
    return value


def _check_tree(value: Any, max_depth: int) -> None:
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise StrictJSONError("a string holds a lone surrogate (\\ud800-\\udfff), which "
                                      "is not valid Unicode text")
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                raise StrictJSONError(f"nested deeper than {max_depth} levels")
            children = item.items() if isinstance(item, dict) else ((None, v) for v in item)
            for key, child in children:
                if key is not None:
                    stack.append((key, depth))
                stack.append((child, depth + 1))
