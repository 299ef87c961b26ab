"""The agent's one settings object.

Loaded from a YAML file (``safe_load`` only), then overridden by ``UNIT_P2P_*`` environment
variables, then by command-line flags; validated up front so a bad value fails at start with one
clear line (file, key, problem) and exit code 2, never a traceback at some later point.

Every value given by any source is checked, even one a later source overrides: a broken file
must not start working only because today's command line happens to hide its mistake.

The field list below is the single source of truth: the loader, the ``--flags``, the
``UNIT_P2P_*`` names, ``--print-config`` and the table in ``docs/settings.md`` are all derived
from it (``python -m unit_p2p.settings docs/settings.md`` regenerates that table).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import difflib
import ipaddress
import math
import os
import re
import sys
import textwrap
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from unit_p2p.errors import SettingsError

DEFAULT_CONFIG_FILE = Path("/etc/unit-p2p/agent.yaml")
DEFAULT_API = "unix:/run/unit-p2p/api.sock"
DEFAULT_UNIT = "unix:/var/run/control.unit.sock"
DEFAULT_STATE_DIR = Path("/var/lib/unit-p2p")
# Loopback only by default: nothing listens beyond loopback unless configured.
DEFAULT_LISTEN = "/ip4/127.0.0.1/tcp/9461"

ENV_PREFIX = "UNIT_P2P_"
#: names the config file; not a setting itself
CONFIG_ENV = "UNIT_P2P_CONFIG"
TRUST_MODES = ("allowlist", "any")
#: what the agent does when Unit holds something other than its head for reasons other than an apply
DRIFT_ACTIONS = ("repair", "report")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
# A settings file is a few hundred bytes; anything this big is the wrong file.
MAX_CONFIG_FILE_BYTES = 1024 * 1024
# Values in a settings file once YAML aliases are expanded: a few dozen in practice; the cap
# stops a "billion laughs" file (300 bytes, billions of values) before anything walks it.
MAX_EXPANDED_VALUES = 10_000
# An error message quotes what was given, up to this much of it.
_QUOTE_CHARS = 80


def _doc(doc: str, *, flag: str | None = None, metavar: str = "VALUE",
         default_doc: str | None = None) -> dict:
    """A field's documentation, shown by every interface derived from the dataclass."""
    return {"doc": doc, "flag": flag, "metavar": metavar, "default_doc": default_doc}


@dataclass(frozen=True)
class Settings:
    mesh: str = field(default="default", metadata=_doc(
        "mesh name: agents only sync with agents of the same mesh (gossip topic, DHT key, "
        "signatures); 1-64 of letters, digits, '.', '_', '-'", metavar="NAME"))
    listen: tuple[str, ...] = field(default=(DEFAULT_LISTEN,), metadata=_doc(
        "libp2p listen multiaddrs, TCP only: /ip4/ADDR/tcp/PORT or /ip6/ADDR/tcp/PORT "
        "(port 0 picks a free port)", metavar="MULTIADDR"))
    unit: str = field(default=DEFAULT_UNIT, metadata=_doc(
        "NGINX Unit control API: unix:/path or http://127.0.0.1:PORT (loopback only: "
        "Unit's control API has no authentication)", metavar="ADDRESS"))
    unit_timeout: float = field(default=10.0, metadata=_doc(
        "seconds for one call to Unit's control API (at most 3600)", metavar="SECONDS"))
    api: str = field(default=DEFAULT_API, metadata=_doc(
        "the agent's local API: unix:/path", metavar="ADDRESS"))
    api_group: str | None = field(default=None, metadata=_doc(
        "group that may use the API socket (mode 0660); null keeps the process's group",
        metavar="GROUP"))
    api_tcp: str | None = field(default=None, metadata=_doc(
        "optional loopback TCP listener for the API, 127.0.0.1:PORT or [::1]:PORT; "
        "requires api_token_file", metavar="HOST:PORT"))
    api_token_file: Path | None = field(default=None, metadata=_doc(
        "file holding the bearer token for api_tcp: at least 16 printable characters, mode "
        "0600 or 0640 (refused when other users can read it)", metavar="FILE"))
    state_dir: Path = field(default=DEFAULT_STATE_DIR, metadata=_doc(
        "where the head, the last keep_configs configs and (by default) the identity key live",
        metavar="DIR"))
    key: Path | None = field(default=None, metadata=_doc(
        "Ed25519 identity key file (created with mode 0600 on first start)",
        metavar="FILE", default_doc="<state_dir>/identity.key"))
    bootstrap: tuple[str, ...] = field(default=(), metadata=_doc(
        "multiaddrs ending in /p2p/<peer id>, dialled at start and redialled with backoff, "
        "e.g. /ip4/10.0.0.2/tcp/9461/p2p/12D3KooW...", metavar="MULTIADDR"))
    mdns: bool = field(default=True, metadata=_doc("LAN discovery by mDNS"))
    dht: bool = field(default=True, metadata=_doc(
        "Kademlia DHT rendezvous on a key derived from the mesh name"))
    trust: str = field(default="allowlist", metadata=_doc(
        "allowlist (only trusted_peers may connect) or any (demos only; warned at start)",
        metavar="MODE"))
    trusted_peers: tuple[str, ...] = field(default=(), metadata=_doc(
        "peer IDs allowed to connect, announce, serve and report (see `unit-p2p id`); "
        "must not be empty with trust: allowlist", flag="--trusted-peer", metavar="PEER_ID"))
    exclusions: tuple[str, ...] = field(default=(), metadata=_doc(
        "JSON pointers (RFC 6901) kept host-local on apply and left out of the digest, "
        "e.g. /listeners", flag="--exclude", metavar="POINTER"))
    keep_configs: int = field(default=10, metadata=_doc(
        "how many applied configs to keep on disk (1-10000)", metavar="N"))
    max_config_bytes: int = field(default=8 * 1024 * 1024, metadata=_doc(
        "largest config document accepted (bytes of canonical JSON, at most 1 GiB); API "
        "request bodies may be twice this", metavar="BYTES"))
    on_drift: str = field(default="repair", metadata=_doc(
        "when Unit's config (minus exclusions) differs from the head for reasons other than an "
        "apply (a Unit restarted from a stale state, reinstalled empty, edited by hand): repair "
        "re-applies the head; report leaves Unit alone and reports the host as drifted",
        metavar="ACTION"))
    max_removed_share: float = field(default=0.5, metadata=_doc(
        "a publish that removes more than this share of the head's listeners, routes or "
        "applications is refused unless forced (0.01 to 1; 1 refuses only a blank config)",
        metavar="SHARE"))
    health_url: str | None = field(default=None, metadata=_doc(
        "health gate: after an apply, GET this local URL served through Unit (http:// or "
        "https://, loopback), e.g. http://127.0.0.1:8080/healthz; the host reports the revision "
        "applied only when the gate passes (staged rollouts wait for it); null: no gate",
        metavar="URL"))
    health_status: str = field(default="2xx", metadata=_doc(
        "health gate: the expected status, a class (2xx, 3xx) or an exact code (204)",
        metavar="STATUS"))
    health_timeout: float = field(default=5.0, metadata=_doc(
        "health gate: seconds for one try (at most 300)", metavar="SECONDS"))
    health_attempts: int = field(default=3, metadata=_doc(
        "health gate: tries in a row that must all pass (1-100)", metavar="N"))
    health_interval: float = field(default=1.0, metadata=_doc(
        "health gate: seconds between tries (at most 300)", metavar="SECONDS"))
    announce_interval: float = field(default=10.0, metadata=_doc(
        "seconds between anti-entropy rounds (heads exchanged with one peer not known at our "
        "head, or a random one; a peer found behind is sent our head); 0.1 to 86400",
        metavar="SECONDS"))
    log_level: str = field(default="info", metadata=_doc(
        "debug, info, warning or error", metavar="LEVEL"))
    log_format: str = field(default="text", metadata=_doc(
        "text (journald-friendly key=value) or json (one object per line)", metavar="FORMAT"))

    @property
    def key_file(self) -> Path:
        return self.key if self.key is not None else self.state_dir / "identity.key"

    @property
    def accepts_any_peer(self) -> bool:
        """True with ``trust: any``: the agent must warn loudly at start."""
        return self.trust == "any"

    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes)


SETTING_NAMES = tuple(f.name for f in dataclasses.fields(Settings))


# --- what each field is ------------------------------------------------------------------------

_HINTS = typing.get_type_hints(Settings)
_KINDS = {
    str: "str", str | None: "optstr", Path: "path", Path | None: "optpath",
    tuple[str, ...]: "list", bool: "bool", int: "int", float: "float",
}
_EXPECTED = {
    "str": "a string", "optstr": "a string or null", "path": "a path (string)",
    "optpath": "a path (string) or null", "list": "a list of strings", "bool": "true or false",
    "int": "an integer", "float": "a number",
}


def _kind(name: str) -> str:
    return _KINDS[_HINTS[name]]


def env_name(name: str) -> str:
    """The environment variable that sets the setting ``name``."""
    return ENV_PREFIX + name.upper()


def flag_name(name: str) -> str:
    """The command-line flag that sets the setting ``name`` (``--no-`` form aside)."""
    f = _FIELDS[name]
    return f.metadata["flag"] or "--" + name.replace("_", "-")


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


class _Invalid(ValueError):
    """A value is wrong; ``index`` names the list item when it is one item that is wrong."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'" + r'|"(?:[^"\\]|\\.)*"')


def _bounded(message: str) -> str:
    """``message`` with every quoted value in it cut to ``_QUOTE_CHARS``, and itself to a few
    lines' worth: a 900 KB value must not come back as a 900 KB error line."""
    def cut(m: re.Match) -> str:
        q = m.group(0)
        return q if len(q) <= _QUOTE_CHARS else q[:_QUOTE_CHARS - 2] + "…" + q[0]
    message = _QUOTED.sub(cut, message)
    return message if len(message) <= 400 else message[:399] + "…"


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    for t, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
                    (list, "list"), (tuple, "list"), (dict, "mapping"), (bytes, "binary"),
                    (datetime.date, "date")):
        if isinstance(value, t):
            return name
    return type(value).__name__


def _wrong_type(kind: str, value: object) -> _Invalid:
    got = _type_name(value)
    if isinstance(value, datetime.date):
        value = value.isoformat()
    shown = "" if value is None or isinstance(value, dict | list) else f" {value!r}"
    hint = ""
    if kind in ("str", "optstr", "path", "optpath") and isinstance(value, int | float | str):
        hint = f' (quote it: "{value}")'
    if kind == "list" and isinstance(value, str):
        hint = f' (write a list: ["{value}"])'
    return _Invalid(f"expected {_EXPECTED[kind]}, got {got}{shown}{hint}")


# --- turning a raw value into the field's type ---------------------------------------------------

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def _parse_text(kind: str, text: str) -> object:
    """An environment variable's (or a flag's) text, as the field's type."""
    t = text.strip()
    if kind in ("str", "path"):
        return t
    if kind in ("optstr", "optpath"):
        return t or None
    if kind == "list":
        return [item.strip() for item in t.split(",") if item.strip()]
    if kind == "bool":
        if t.lower() in _TRUE:
            return True
        if t.lower() in _FALSE:
            return False
        raise _Invalid(f"expected true/false/1/0/yes/no, got {text!r}")
    if kind == "int":
        if not re.fullmatch(r"[+-]?[0-9]+", t):
            raise _Invalid(f"expected an integer, got {text!r}")
        return int(t)
    try:
        return float(t)
    except ValueError:
        raise _Invalid(f"expected a number, got {text!r}") from None


def _coerce(kind: str, value: object) -> object:
    """A typed value (from YAML or from code), checked against the field's type."""
    if kind in ("optstr", "optpath") and value is None:
        return None
    if kind in ("str", "optstr"):
        if not isinstance(value, str):
            raise _wrong_type(kind, value)
        return value
    if kind in ("path", "optpath"):
        if isinstance(value, Path):
            value = str(value)
        if not isinstance(value, str):
            raise _wrong_type(kind, value)
        if not value.strip():
            raise _Invalid("must not be empty")
        return Path(value)
    if kind == "list":
        if not isinstance(value, list | tuple):
            raise _wrong_type(kind, value)
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise _Invalid(f"expected a string, got {_type_name(item)} {item!r}", index=i)
        return tuple(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise _wrong_type(kind, value)
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong_type(kind, value)
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong_type(kind, value)
    if not math.isfinite(value):
        raise _Invalid(f"expected a finite number, got {value!r}")
    return float(value)


# --- what each field may hold -------------------------------------------------------------------

#: a mesh name; every wire message carries one and is checked against it too (sync/wire/fields.py)
MESH_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_GROUP_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\$?")
_HOST_PROTOCOLS = ("ip4", "ip6")
_DIAL_HOST_PROTOCOLS = ("ip4", "ip6", "dns", "dns4", "dns6")


def _multiaddr_parts(text: str) -> list[tuple[str, str | None]]:
    from multiaddr import Multiaddr
    from multiaddr.exceptions import Error as MultiaddrError

    if not text.startswith("/"):
        raise _Invalid(f"{text!r} is not a multiaddr (it must start with /, e.g. {DEFAULT_LISTEN})")
    try:
        ma = Multiaddr(text)
        return [(p.name, ma.value_for_protocol(p.code)) for p in ma.protocols()]
    except (MultiaddrError, ValueError, TypeError) as err:
        # the library's message repeats the address two or three times; keep the cause
        cause = getattr(err, "message", None) or str(err)
        raise _Invalid(f"bad multiaddr {text!r}: {_one_line(cause)}") from None


def _canonical(parts: list[tuple[str, str | None]]) -> str:
    return "".join(f"/{name}/{value}" for name, value in parts)


def _port(value: str | None, text: str, *, allow_zero: bool) -> None:
    if value is None or not value.isdigit() or not (0 if allow_zero else 1) <= int(value) < 65536:
        raise _Invalid(f"bad TCP port in {text!r}")


def check_listen_addr(text: str) -> str:
    parts = _multiaddr_parts(text)
    names = [name for name, _ in parts]
    if len(parts) != 2 or names[0] not in _HOST_PROTOCOLS or names[1] != "tcp":
        raise _Invalid(
            f"{text!r} is not a TCP listen address: expected /ip4/ADDR/tcp/PORT or "
            "/ip6/ADDR/tcp/PORT"
        )
    _port(parts[1][1], text, allow_zero=True)
    return _canonical(parts)


def check_bootstrap_addr(text: str) -> str:
    parts = _multiaddr_parts(text)
    names = [name for name, _ in parts]
    if (len(parts) != 3 or names[0] not in _DIAL_HOST_PROTOCOLS or names[1] != "tcp"
            or names[2] != "p2p"):
        raise _Invalid(
            f"{text!r} is not a bootstrap address: expected /ip4|ip6|dns4|dns6|dns/HOST/tcp/PORT"
            "/p2p/<peer id>"
        )
    _port(parts[1][1], text, allow_zero=False)
    check_peer_id(parts[2][1] or "")
    return _canonical(parts)


def check_peer_id(text: str) -> str:
    """A peer ID in its canonical base58 form (``12D3KooW...`` for Ed25519)."""
    import multihash
    from libp2p.peer.id import ID

    bad = _Invalid(
        f"{text!r} is not a peer ID (expected base58 like 12D3KooW..., as printed by "
        "`unit-p2p id`)"
    )
    try:
        pid = ID.from_base58(text)
        decoded = multihash.decode(pid.to_bytes())
    except Exception:
        raise bad from None
    if not text or pid.to_base58() != text:
        raise bad
    if decoded.code == 0x00:
        if pid.extract_public_key() is None:
            raise bad
    elif decoded.code != 0x12 or len(decoded.digest) != 32:
        raise bad
    return text


def check_json_pointer(text: str) -> str:
    """RFC 6901: "" or "/" followed by tokens where "~" is only ever "~0" or "~1"."""
    if text == "":
        raise _Invalid('"" points at the whole config; exclude parts of it, e.g. /listeners')
    if not text.startswith("/"):
        raise _Invalid(f"{text!r} is not a JSON pointer: it must start with /, e.g. /listeners")
    if re.search(r"~(?![01])", text):
        raise _Invalid(f"{text!r} is not a JSON pointer: ~ must be written ~0 and / inside a "
                       "key ~1")
    return text


# sockaddr_un.sun_path holds 108 bytes with the terminating NUL
_MAX_SOCKET_PATH = 107


def _unix_path(text: str, what: str) -> str:
    path = text[len("unix:"):]
    if not path.startswith("/"):
        raise _Invalid(f"{text!r}: {what} socket path must be absolute, e.g. unix:/run/x.sock")
    if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
        raise _Invalid(f"{text!r}: a socket path is at most {_MAX_SOCKET_PATH} bytes long")
    return text


def _loopback_host_port(hostport: str, text: str) -> None:
    m = re.fullmatch(r"(?:\[([0-9A-Fa-f:.]+)\]|([^:\[\]/]+)):([0-9]{1,5})", hostport)
    if not m:
        raise _Invalid(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:8080 or [::1]:8080)")
    host = m.group(1) or m.group(2)
    if host != "localhost":
        try:
            loop = ipaddress.ip_address(host).is_loopback
        except ValueError:
            raise _Invalid(f"{text!r}: {host!r} is not an IP address or localhost") from None
        if not loop:
            raise _Invalid(f"{text!r} is not on loopback (use 127.0.0.1 or [::1])")
    if int(m.group(3)) > 65535:
        raise _Invalid(f"bad TCP port in {text!r}")


def check_unit_addr(text: str) -> str:
    if text.startswith("unix:"):
        return _unix_path(text, "Unit control")
    if text.startswith("http://"):
        hostport = text[len("http://"):].rstrip("/")
        if not hostport or "/" in hostport or "?" in hostport:
            raise _Invalid(f"{text!r}: expected http://127.0.0.1:PORT with no path")
        _loopback_host_port(hostport, text)
        return "http://" + hostport
    raise _Invalid(f"{text!r}: expected unix:/path/to/control.sock or http://127.0.0.1:PORT")


def check_api_addr(text: str) -> str:
    if not text.startswith("unix:"):
        raise _Invalid(f"{text!r}: expected unix:/path/to/api.sock (TCP goes in api_tcp)")
    return _unix_path(text, "API")


def check_api_tcp(text: str) -> str:
    _loopback_host_port(text, text)
    return text


def check_health_url(text: str) -> str:
    """A loopback http(s) URL: the gate checks this host's own Unit, never another host."""
    m = re.fullmatch(r"(https?)://((?:\[[0-9A-Fa-f:.]+\]|[^:/\[\]?#]+):[0-9]{1,5})(/[^\s#]*)?",
                     text)
    if not m:
        raise _Invalid(f"{text!r} is not http(s)://HOST:PORT/PATH (e.g. "
                       "http://127.0.0.1:8080/healthz)")
    _loopback_host_port(m.group(2), text)
    return text


def check_health_status(text: str) -> str:
    if not re.fullmatch(r"[1-5](?:xx|[0-9]{2})", text):
        raise _Invalid(f"{text!r} is not a status class (2xx) or a status code (204)")
    return text


def _enum(choices: tuple[str, ...], *, fold: bool = False) -> Callable[[str], str]:
    def check(text: str) -> str:
        value = text.lower() if fold else text
        if value not in choices:
            raise _Invalid(f"{text!r} is not one of {', '.join(choices)}")
        return value
    return check


def _check_mesh(text: str) -> str:
    if not MESH_NAME_RE.fullmatch(text):
        raise _Invalid(f"{text!r}: a mesh name is 1-64 of letters, digits, '.', '_', '-'")
    return text


def _check_group(text: str) -> str:
    if not _GROUP_RE.fullmatch(text):
        raise _Invalid(f"{text!r} is not a group name or number")
    return text


def _positive(value: float) -> float:
    if value <= 0:
        raise _Invalid(f"must be greater than 0, got {value!r}")
    return value


def _at_most(limit: float, unit: str, *, low: float | None = None) -> Callable[[float], float]:
    """Greater than 0 (or at least ``low``) and at most ``limit``: a timer of 1e10 s overflows
    the clocks below it, and one of a nanosecond spins a core."""
    def check(value: float) -> float:
        _positive(value)
        if low is not None and value < low:
            raise _Invalid(f"must be at least {low:g} {unit}, got {value!r}")
        if value > limit:
            raise _Invalid(f"must be at most {limit:g} {unit}, got {value!r}")
        return value
    return check


#: per field: checks one scalar value (each item, for lists) and returns its canonical form
_CHECKS: dict[str, Callable] = {
    "mesh": _check_mesh,
    "listen": check_listen_addr,
    "unit": check_unit_addr,
    "unit_timeout": _at_most(3600, "seconds"),
    "api": check_api_addr,
    "api_group": _check_group,
    "api_tcp": check_api_tcp,
    "bootstrap": check_bootstrap_addr,
    "trust": _enum(TRUST_MODES),
    "on_drift": _enum(DRIFT_ACTIONS),
    "trusted_peers": check_peer_id,
    "exclusions": check_json_pointer,
    "keep_configs": _at_most(10_000, "configs"),
    "max_config_bytes": _at_most(1024 ** 3, "bytes"),
    "announce_interval": _at_most(86_400, "seconds", low=0.1),
    "max_removed_share": _at_most(1, "(1 is all of them)", low=0.01),
    "health_url": check_health_url,
    "health_status": check_health_status,
    "health_timeout": _at_most(300, "seconds"),
    "health_attempts": _at_most(100, "tries"),
    "health_interval": _at_most(300, "seconds"),
    "log_level": _enum(LOG_LEVELS, fold=True),
    "log_format": _enum(LOG_FORMATS),
}
_NON_EMPTY_LISTS = ("listen",)


# --- where a value came from --------------------------------------------------------------------


@dataclass(frozen=True)
class _Given:
    """One value for one setting, and where to point the user when it is wrong."""

    name: str
    value: object
    source: str  # file path, "environment", "command line", "settings"
    key: str  # the key as the user wrote it: listen, UNIT_P2P_LISTEN, --listen
    text: bool  # the value is text to parse (environment, flags)
    base_dir: Path  # relative paths are relative to this
    line: int | None = None  # line of the key in the file
    item_lines: tuple[int, ...] = ()

    def error(self, message: str, index: int | None = None) -> SettingsError:
        key, source = self.key, self.source
        line = self.line
        if index is not None and not self.text:
            key = f"{self.key}[{index}]"
            if index < len(self.item_lines):
                line = self.item_lines[index]
        if line is not None:
            source = f"{source}:{line}"
        return SettingsError(_bounded(_one_line(message)), source=source, key=_bounded(key))


def _normalize(given: _Given) -> object:
    """The given value in the field's type and canonical form, or SettingsError."""
    kind = _kind(given.name)
    check = _CHECKS.get(given.name)
    try:
        value = given.value
        if given.text and isinstance(value, str):
            value = _parse_text(kind, value)
        elif given.text and kind == "list" and isinstance(value, list | tuple):
            value = [v.strip() if isinstance(v, str) else v for v in value]
        value = _coerce(kind, value)
        if kind in ("path", "optpath") and value is not None and not value.is_absolute():
            value = given.base_dir / value
        if check is None or value is None:
            return value
        if kind != "list":
            return check(value)
        items: list[str] = []
        for i, item in enumerate(value):
            try:
                canonical = check(item)
            except _Invalid as err:
                raise _Invalid(str(err), index=i) from None
            if canonical not in items:
                items.append(canonical)
        if given.name in _NON_EMPTY_LISTS and not items:
            raise _Invalid("needs at least one address")
        return tuple(items)
    except _Invalid as err:
        raise given.error(str(err), err.index) from None


def _unknown(key: str, known: Iterable[str], noun: str = "key") -> str:
    folded = {k.lower(): k for k in known}
    guess = key.replace("-", "_").lower()
    match = [guess] if guess in folded else difflib.get_close_matches(guess, folded, n=1)
    if match:
        return f"unknown {noun} (did you mean {folded[match[0]]!r}?)"
    return f"unknown {noun} (known: {', '.join(folded.values())})"


# --- the three sources --------------------------------------------------------------------------


def _read_config_file(path: Path, named_by: str | None) -> list[_Given]:
    source = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_FILE_BYTES + 1)
    except FileNotFoundError:
        how = f" (named by {named_by})" if named_by else ""
        raise SettingsError(f"config file not found{how}", source=source) from None
    except IsADirectoryError:
        raise SettingsError("cannot read config file: it is a directory", source=source) from None
    except PermissionError:
        raise SettingsError(
            f"cannot read config file: permission denied (running as uid {os.geteuid()})",
            source=source,
        ) from None
    except OSError as err:
        raise SettingsError(f"cannot read config file: {err.strerror}", source=source) from None
    if len(raw) > MAX_CONFIG_FILE_BYTES:
        raise SettingsError(f"config file is larger than {MAX_CONFIG_FILE_BYTES} bytes; is this "
                            "the right file?", source=source)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SettingsError(f"config file is not UTF-8 text (bad byte at offset {err.start})",
                            source=source) from None
    try:
        # compose builds nodes only (no objects): it gives line numbers and lets duplicate keys,
        # which safe_load would silently collapse to the last one, be refused
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is not None and _too_many_values(root):
            raise SettingsError(
                f"more than {MAX_EXPANDED_VALUES} values (each use of a YAML alias *name "
                "counted); a settings file needs a few dozen", source=source)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = err.problem or err.context or "invalid YAML"
        raise SettingsError(f"YAML syntax error{where}: {_one_line(what)}", source=source) \
            from None
    except yaml.YAMLError as err:
        raise SettingsError(f"YAML syntax error: {_one_line(err)}", source=source) from None
    if data is None:
        return []
    if not isinstance(data, dict):
        raise SettingsError(f"expected a mapping of settings (key: value) at the top level, got "
                            f"{_type_name(data)}", source=f"{source}:1")
    lines: dict[object, tuple[int, tuple[int, ...]]] = {}
    for key_node, value_node in root.value:
        if not isinstance(key_node, yaml.ScalarNode):
            continue  # a complex key: refused below as not a setting name
        line = key_node.start_mark.line + 1
        if key_node.value in lines:
            raise SettingsError(f"duplicate key (also on line {lines[key_node.value][0]})",
                                source=f"{source}:{line}", key=str(key_node.value))
        items = ()
        if isinstance(value_node, yaml.SequenceNode):
            items = tuple(n.start_mark.line + 1 for n in value_node.value)
        lines[key_node.value] = (line, items)
    given = []
    for key, value in data.items():
        line, items = lines.get(str(key), (None, ()))
        at = f"{source}:{line}" if line else source
        if not isinstance(key, str):
            raise SettingsError(_bounded(f"keys are setting names, got {_type_name(key)} "
                                         f"{key!r}"), source=at)
        if key not in _FIELDS:
            raise SettingsError(_unknown(key, SETTING_NAMES), source=at, key=_bounded(key))
        given.append(_Given(key, value, source, key, text=False, base_dir=path.parent.absolute(),
                            line=line, item_lines=items))
    return given


def _too_many_values(root: yaml.Node) -> bool:
    """Counts nodes as the loaded data would hold them (an alias counts again each time)."""
    count, todo = 0, [root]
    while todo:
        node = todo.pop()
        count += 1
        if count > MAX_EXPANDED_VALUES:
            return True
        if isinstance(node, yaml.SequenceNode):
            todo.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                todo += (key, value)
    return False


def _env_near_miss(var: str) -> str | None:
    """The real variable ``var`` was probably meant to be, if it is that close to one."""
    known = {env_name(n): env_name(n) for n in SETTING_NAMES} | {CONFIG_ENV: CONFIG_ENV}
    # the flag's spelling: UNIT_P2P_TRUSTED_PEER for --trusted-peer, UNIT_P2P_EXCLUDE for --exclude
    known |= {ENV_PREFIX + flag_name(n)[2:].upper().replace("-", "_"): env_name(n)
              for n in SETTING_NAMES}
    if var in known:
        return known[var]
    match = difflib.get_close_matches(var, known, n=1, cutoff=_NEAR_MISS)
    return known[match[0]] if match else None


# Other tools use the UNIT_P2P_ prefix for their own variables (UNIT_P2P_MOLECULE_CACHE, ...):
# only names this close to a setting's (UNIT_P2P_LOGLEVEL, UNIT_P2P_MESHH) are taken for typos.
_NEAR_MISS = 0.85


def _from_env(env: Mapping[str, str]) -> list[_Given]:
    by_var = {env_name(n): n for n in SETTING_NAMES}
    given = []
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX) or var == CONFIG_ENV:
            continue
        if var not in by_var:
            meant = _env_near_miss(var)
            if meant is not None:
                raise SettingsError(f"unknown variable (did you mean {meant!r}?)",
                                    source="environment", key=var)
            continue
        given.append(_Given(by_var[var], env[var], "environment", var, text=True,
                            base_dir=Path.cwd()))
    return given


def _from_flags(flags: Mapping[str, object]) -> list[_Given]:
    given = []
    for name, value in flags.items():
        if name not in _FIELDS:
            raise SettingsError(_unknown(name, SETTING_NAMES), source="command line", key=name)
        if value is None:
            continue
        given.append(_Given(name, value, "command line", flag_name(name), text=True,
                            base_dir=Path.cwd()))
    return given


def _config_file(config_file: Path | None, env: Mapping[str, str],
                 default_config_file: Path) -> tuple[Path | None, str | None]:
    if config_file is not None:
        return Path(config_file), "--config"
    if env.get(CONFIG_ENV, "").strip():
        return Path(env[CONFIG_ENV].strip()), CONFIG_ENV
    # the default file is optional, but a dangling symlink there is a mistake worth reporting
    if os.path.lexists(default_config_file):
        return default_config_file, None
    return None, None


def _build(given: list[_Given], fallback_source: str, cross_check: bool = True) -> Settings:
    values: dict[str, object] = {}
    origin: dict[str, _Given] = {}
    for g in given:
        values[g.name] = _normalize(g)
        origin[g.name] = g
    settings = Settings(**values)
    if cross_check:
        _cross_check(settings, origin, fallback_source)
    return settings


def _cross_check(s: Settings, origin: Mapping[str, _Given], fallback_source: str) -> None:
    def error(problems: dict[str, str]) -> SettingsError:
        """Points at the first of the settings involved that was given, in ``problems`` order;
        each name's message reads right after that name."""
        for name, message in problems.items():
            if name in origin:
                return origin[name].error(message)
        name, message = next(iter(problems.items()))
        return SettingsError(message, source=fallback_source, key=name)

    if s.api_tcp is not None and s.api_token_file is None:
        raise error({"api_tcp": "requires api_token_file (a file holding the bearer token)"})
    if s.trust == "allowlist" and not s.trusted_peers:
        fix = ("add the peer IDs of the other agents to trusted_peers (`unit-p2p id --key FILE` "
               "prints one), or set trust: any (demos only)")
        raise error({
            "trusted_peers": f"is empty while trust is allowlist, so no peer could connect: {fix}",
            "trust": f"allowlist needs trusted_peers, which is empty: {fix}",
        })


# --- public API ---------------------------------------------------------------------------------


def load_settings(
    config_file: Path | None,
    env: Mapping[str, str],
    flags: Mapping[str, object],
    *,
    default_config_file: Path = DEFAULT_CONFIG_FILE,
    cross_check: bool = True,
) -> Settings:
    """The effective settings: defaults < config file < ``UNIT_P2P_*`` in ``env`` < ``flags``.

    ``config_file`` (or ``UNIT_P2P_CONFIG``) names a file that must exist; otherwise
    ``default_config_file`` is read when it exists. ``flags`` maps setting names to values given
    on the command line (absent or None: not given); text values are parsed like environment
    variables. Relative paths are relative to the config file's directory (file) or to the
    current directory (environment, flags). Raises ``SettingsError`` with one line.
    ``cross_check=False`` skips the rules between settings (each value is still checked).
    """
    path, named_by = _config_file(config_file, env, default_config_file)
    given = _read_config_file(path, named_by) if path is not None else []
    given += _from_env(env)
    given += _from_flags(flags)
    return _build(given, str(path) if path is not None else "settings", cross_check)


def check_settings(settings: Settings) -> Settings:
    """Validates a ``Settings`` built in code (as ``load_settings`` would); returns it normalized.

    Relative paths become absolute against the current directory.
    """
    given = [
        _Given(name, getattr(settings, name), "settings", name, text=False, base_dir=Path.cwd())
        for name in SETTING_NAMES
    ]
    return _build(given, "settings")


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None, *,
                       cross_check: bool = True) -> Settings:
    """``load_settings`` for a namespace parsed with ``add_agent_arguments``."""
    return load_settings(getattr(args, "config", None), os.environ if env is None else env,
                         flags_from_args(args), cross_check=cross_check)


def add_agent_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting (all default to "not given"), plus --config and --print-config."""
    parser.add_argument(
        "--config", type=Path, metavar="FILE", default=None,
        help=f"settings file (YAML); default {DEFAULT_CONFIG_FILE} if it exists "
             f"[env {CONFIG_ENV}]",
    )
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective settings as YAML and exit")
    group = parser.add_argument_group(
        "settings", "each overrides the config file and its UNIT_P2P_* environment variable; "
        "see docs/settings.md",
    )
    for name in SETTING_NAMES:
        f = _FIELDS[name]
        kind = _kind(name)
        where = f"[env {env_name(name)}; default {_default_text(name)}]"
        help_text = f"{f.metadata['doc']} {where}".replace("%", "%%")
        if kind == "bool":
            group.add_argument(flag_name(name), dest=name, default=None,
                               action=argparse.BooleanOptionalAction, help=help_text)
        elif kind == "list":
            group.add_argument(flag_name(name), dest=name, default=None, action="append",
                               metavar=f.metadata["metavar"],
                               help=f"{help_text} (repeatable; replaces the file's list)")
        else:
            group.add_argument(flag_name(name), dest=name, default=None,
                               metavar=f.metadata["metavar"], help=help_text)


def flags_from_args(args: argparse.Namespace) -> dict[str, object]:
    """The settings given on the command line (only those), for ``load_settings``."""
    return {name: getattr(args, name) for name in SETTING_NAMES
            if getattr(args, name, None) is not None}


def _plain(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def settings_to_yaml(settings: Settings) -> str:
    """The settings as a commented YAML file that loads back to equal settings."""
    out = [
        "# unit-p2p agent: effective settings (defaults < config file < UNIT_P2P_* environment",
        "# < command-line flags). Every key is listed; save as "
        f"{DEFAULT_CONFIG_FILE} or pass --config.",
    ]
    for name in SETTING_NAMES:
        out.append("")
        for line in textwrap.wrap(_FIELDS[name].metadata["doc"], width=96):
            out.append(f"# {line}")
        value = getattr(settings, name)
        if name == "key" and value is None:
            out.append(f"# null: {_FIELDS[name].metadata['default_doc']}")
        dumped = yaml.safe_dump({name: _plain(value)}, default_flow_style=False, sort_keys=False,
                                allow_unicode=True, width=1000)
        out.append(dumped.rstrip("\n"))
    return "\n".join(out) + "\n"


def _default_text(name: str) -> str:
    f = _FIELDS[name]
    if f.metadata["default_doc"]:
        return f.metadata["default_doc"]
    value = f.default
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(value) + "]"
    return str(value)


DOC_BEGIN = "<!-- BEGIN settings table: generated by `python -m unit_p2p.settings FILE` -->"
DOC_END = "<!-- END settings table -->"


def settings_table_markdown() -> str:
    """The table of every setting for docs/settings.md."""
    rows = [
        "| Key | Environment | Flag | Default | Meaning |",
        "|---|---|---|---|---|",
    ]
    for name in SETTING_NAMES:
        f = _FIELDS[name]
        kind = _kind(name)
        flag = f"`{flag_name(name)} {f.metadata['metavar']}`"
        if kind == "bool":
            flag = f"`{flag_name(name)}` / `--no-{flag_name(name)[2:]}`"
        elif kind == "list":
            flag += " (repeatable)"
        env_form = " (comma-separated)" if kind == "list" else ""
        doc = f.metadata["doc"].replace("|", "\\|").replace("<", "&lt;")
        rows.append(f"| `{name}` | `{env_name(name)}`{env_form} | {flag} | "
                    f"`{_default_text(name)}` | {doc} |")
    return "\n".join(rows) + "\n"


def update_settings_doc(path: Path) -> bool:
    """Rewrites the generated table in ``path``; returns True when it changed."""
    text = path.read_text(encoding="utf-8")
    start, end = text.index(DOC_BEGIN) + len(DOC_BEGIN), text.index(DOC_END)
    new = text[:start] + "\n" + settings_table_markdown() + text[end:]
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


def generated_block(text: str) -> str:
    """The generated table as it currently stands in a docs text."""
    start, end = text.index(DOC_BEGIN) + len(DOC_BEGIN), text.index(DOC_END)
    return text[start:end].lstrip("\n")


if __name__ == "__main__":
    for doc in sys.argv[1:]:
        print(f"{doc}: {'updated' if update_settings_doc(Path(doc)) else 'up to date'}")
