"""What one shared config changes against another, in the terms an operator reads a Unit config:
listeners, routes, applications and upstreams added, removed or changed.

Two uses: the one-line summary of each revision in the history, and the publish guards that
refuse a blank config or one that removes most of what the head serves.

Items are the keys of ``listeners``, ``applications`` and ``upstreams``. ``routes`` is either one
array of steps (each step an item, compared by position: inserting a step at the top shows as
every later step changed, which is what Unit will do with it) or an object of named arrays (each
name an item).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from unit_p2p.errors import PublishRefused

#: the sections compared, in the order they are shown
SECTIONS = ("listeners", "routes", "applications", "upstreams")
#: the sections the shrink guard protects (upstreams follow the applications and routes)
GUARDED = ("listeners", "routes", "applications")
#: names shown per section in a message; the rest are counted
_SHOWN = 5


def items(config: Any, section: str) -> dict[str, Any]:
    """The items of one section as name -> value (route steps are named by their index)."""
    value = config.get(section) if isinstance(config, dict) else None
    if isinstance(value, dict):
        return value
    if isinstance(value, list):
        return {str(i): step for i, step in enumerate(value)}
    return {}


@dataclass
class SectionChange:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    before: int = 0

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def to_json(self) -> dict:
        return {"added": self.added, "removed": self.removed, "changed": self.changed}


def compare(old: Any, new: Any) -> dict[str, SectionChange]:
    """Per section, which items ``new`` adds, removes and changes against ``old``."""
    out = {}
    for section in SECTIONS:
        a, b = items(old, section), items(new, section)
        out[section] = SectionChange(
            added=[k for k in b if k not in a],
            removed=[k for k in a if k not in b],
            changed=[k for k in a if k in b and a[k] != b[k]],
            before=len(a),
        )
    return out


def summary(old: Any, new: Any) -> str:
    """One line: ``routes +2 -1 ~3, applications ~1`` (added, removed, changed), or what else
    changed when none of the sections did."""
    if old is None:
        counts = [f"{s} {n}" for s in SECTIONS if (n := len(items(new, s)))]
        return "first known: " + (", ".join(counts) if counts else "empty")
    parts = []
    for section, change in compare(old, new).items():
        signs = [f"{sign}{len(names)}" for sign, names in
                 (("+", change.added), ("-", change.removed), ("~", change.changed)) if names]
        if signs:
            parts.append(f"{section} {' '.join(signs)}")
    if parts:
        return ", ".join(parts)
    if old == new:
        return "same config"
    others = sorted(k for k in set(old) | set(new)
                    if k not in SECTIONS and old.get(k) != new.get(k))
    return "changed: " + ", ".join(others) if others else "changed"


def is_blank(config: Any) -> bool:
    """No listener, route or application: a Unit holding this serves nothing."""
    return not any(items(config, s) for s in GUARDED)


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def check_publish(head_config: Any, new: Any, max_removed_share: float) -> None:
    """Raise PublishRefused when publishing ``new`` over ``head_config`` looks like an accident:
    ``blank`` (it serves nothing) or ``shrink`` (it removes more than ``max_removed_share`` of the
    head's listeners, routes or applications). The message names what would be removed."""
    if is_blank(new):
        had = ", ".join(f"{len(items(head_config, s))} {s}" for s in GUARDED
                        if items(head_config, s)) if head_config is not None else ""
        raise PublishRefused(
            "blank_config", "the config has no listeners, routes or applications"
            + (f"; it would remove all of the head's {had}" if had else "")
            + " (force to publish it on purpose)")
    if head_config is None:
        return
    too_many = []
    for section, change in compare(head_config, new).items():
        if section not in GUARDED or not change.before:
            continue
        if len(change.removed) / change.before > max_removed_share:
            too_many.append(f"{len(change.removed)} of {change.before} {section} "
                            f"({_names(change.removed)})")
    if too_many:
        raise PublishRefused(
            "shrink", "the config would remove " + "; ".join(too_many)
            + f", more than the max_removed_share of {max_removed_share:.0%}"
            " (force to publish it on purpose)")
