"""Whole-configuration validation with Unit's error sentences.

Unit validates the complete resulting configuration after every write (``nxt_conf_validate``):
the members of each object are visited in the order they were sent, each is type-checked and then
checked by its own validator, and the first failure is reported as the ``detail`` of a 400
"Invalid configuration." response. This module follows the same walk for the parts of the schema
the emulator models:

* the root must be an object and may only hold ``settings``, ``listeners``, ``routes``,
  ``applications``, ``upstreams`` and ``access_log``;
* listener names must be valid addresses; listener objects may only hold ``pass``,
  ``application``, ``tls``, ``client_ip``, ``forwarded`` and ``backlog``;
* every ``pass`` must point to an existing ``routes`` array, ``routes/<name>``,
  ``applications/<name>[/<target>]`` or ``upstreams/<name>`` (values with ``$`` variables are
  accepted, as Unit resolves them per request);
* route steps may only hold ``match`` and ``action``; an action needs exactly one of ``pass``,
  ``return``, ``share`` and ``proxy`` plus only the options that go with it; ``return`` must be an
  integer in 0-999;
* applications need a ``type`` naming an installed language module; ``processes`` is checked;
* ``tls`` needs ``certificate``: a name or a non-empty array of names, each of an uploaded
  bundle; ``conf_commands`` values are strings; ``session`` holds ``cache_size`` (>= 0),
  ``timeout`` (> 0) and ``tickets`` (a boolean or base64 keys of 48 or 80 bytes);
* upstreams need ``servers``.

Deliberately *not* checked (accepted as sent, so the emulator never refuses a configuration
real Unit would take): the contents of ``match``, ``settings``, ``access_log``, ``client_ip``,
``forwarded``, language-specific application options, isolation, and upstream server options.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from unit_p2p.unit.emulator.jsonparse import is_integer_value, type_name
from unit_p2p.unit.emulator.listeners import parse_listener

__all__ = ["DEFAULT_MODULES", "ConfigInvalid", "ValidationContext", "validate"]

NULL, BOOLEAN, INTEGER, FRACTIONAL, STRING, ARRAY, OBJECT = (1 << n for n in range(7))
NUMBER = INTEGER | FRACTIONAL
_TYPE_NAMES = [
    "a null",
    "a boolean",
    "an integer number",
    "a fractional number",
    "a string",
    "an array",
    "an object",
]

#: The language modules the emulator reports by default: a Python 3.11 module like the recorded
#: Unit 1.35.0 had (with the library path of Debian's package).
DEFAULT_MODULES: dict[str, dict[str, str]] = {
    "python": {"version": "3.11.2", "lib": "/usr/lib/unit/modules/python3.unit.so"},
}


class ConfigInvalid(ValueError):
    """The configuration is invalid; ``str(err)`` is Unit's ``detail`` sentence."""


@dataclass
class ValidationContext:
    conf: dict
    modules: dict[str, dict[str, str]] = field(default_factory=lambda: dict(DEFAULT_MODULES))
    certificates: Iterable[str] = ()
    #: names of the uploaded JS modules; None when the emulated Unit is built without njs
    js_modules: Iterable[str] | None = None


Validator = Callable[[ValidationContext, object], None]
Table = dict[str, tuple[int, Validator | None]]


def _mask_of(value: object) -> int:
    if value is None:
        return NULL
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int | float):
        return INTEGER if is_integer_value(value) else FRACTIONAL
    if isinstance(value, str):
        return STRING
    if isinstance(value, list):
        return ARRAY
    return OBJECT


def _expected(mask: int) -> str:
    names = [_TYPE_NAMES[t] for t in range(7) if mask & (1 << t)]
    if len(names) == 1:
        return names[0]
    serial = len(names) > 2
    out = "either "
    for i, name in enumerate(names):
        out += name
        left = len(names) - i - 1
        if left == 0:
            break
        if left > 1 or serial:
            out += ","
        if left == 1:
            out += " or"
        out += " "
    return out


def _check_type(name: str | None, value: object, mask: int) -> None:
    if _mask_of(value) & mask:
        return
    if name is None:
        raise ConfigInvalid(
            f"The configuration must be {_expected(mask)}, but not {type_name(value)}."
        )
    raise ConfigInvalid(
        f'The "{name}" value must be {_expected(mask)}, but not {type_name(value)}.'
    )


def _object(table: Table, *, lenient: bool = False, required: tuple[str, ...] = ()) -> Validator:
    """Members in the order sent: unknown ones are refused unless ``lenient``; the ``required``
    ones are looked for first (``nxt_conf_vldt_object``)."""

    def check(ctx: ValidationContext, value: object) -> None:
        for name in required:
            if name not in value:  # type: ignore[operator]
                raise ConfigInvalid(f'Required parameter "{name}" is missing.')
        for name, member in value.items():  # type: ignore[union-attr]
            spec = table.get(name)
            if spec is None:
                if lenient:
                    continue
                raise ConfigInvalid(f'Unknown parameter "{name}".')
            mask, validator = spec
            _check_type(name, member, mask)
            if validator is not None:
                validator(ctx, member)

    return check


def _each_member(validator: Callable[[ValidationContext, str, object], None]) -> Validator:
    def check(ctx: ValidationContext, value: object) -> None:
        for name, member in value.items():  # type: ignore[union-attr]
            validator(ctx, name, member)

    return check


# ------------------------------------------------------------------------- pass & actions


def _pass(ctx: ValidationContext, value: object) -> None:
    text: str = value  # type: ignore[assignment]
    if "$" in text:
        return
    segments = text.split("/")
    if len(segments) > 3 or any(s == "" for s in segments):
        raise ConfigInvalid(f'Request "pass" value "{text}" is invalid.')
    invalid = ConfigInvalid(f'Request "pass" points to invalid location "{text}".')
    conf = ctx.conf
    head = segments[0]
    if head == "routes":
        routes = conf.get("routes")
        if len(segments) == 1:
            if not isinstance(routes, list):
                raise invalid
            return
        if len(segments) != 2 or not isinstance(routes, dict) or segments[1] not in routes:
            raise invalid
        return
    if head == "applications":
        apps = conf.get("applications")
        if len(segments) < 2 or not isinstance(apps, dict) or segments[1] not in apps:
            raise invalid
        if len(segments) == 3:
            app = apps[segments[1]]
            targets = app.get("targets") if isinstance(app, dict) else None
            if not isinstance(targets, dict) or segments[2] not in targets:
                raise invalid
        return
    if head == "upstreams":
        ups = conf.get("upstreams")
        if len(segments) != 2 or not isinstance(ups, dict) or segments[1] not in ups:
            raise invalid
        return
    raise invalid


def _return(ctx: ValidationContext, value: object) -> None:
    if not 0 <= value <= 999:  # type: ignore[operator]
        raise ConfigInvalid('The "return" value is out of allowed HTTP status code range 0-999.')


def _proxy(ctx: ValidationContext, value: object) -> None:
    text: str = value  # type: ignore[assignment]
    if text.startswith("http://") and parse_listener(text[7:]) is not None:
        return
    raise ConfigInvalid(f'The "proxy" address is invalid "{text}"')


_ACTION_COMMON: Table = {
    "rewrite": (STRING, None),
    "response_headers": (OBJECT, None),
}


def _action(ctx: ValidationContext, value: object) -> None:
    present = [k for k in ("pass", "return", "share", "proxy") if k in value]  # type: ignore[operator]
    if len(present) > 1:
        raise ConfigInvalid(
            'The "action" object must have just one of "pass", "return", "share", or "proxy" '
            "options set."
        )
    if not present:
        raise ConfigInvalid(
            'The "action" object must have either "pass", "return", "share", or "proxy" option set.'
        )
    _object(_ACTION_TABLES[present[0]])(ctx, value)


_ACTION_TABLES: dict[str, Table] = {
    "pass": {"pass": (STRING, _pass), **_ACTION_COMMON},
    "return": {"return": (INTEGER, _return), "location": (STRING, None), **_ACTION_COMMON},
    "share": {
        "share": (STRING | ARRAY, None),
        "index": (STRING, None),
        "fallback": (OBJECT, _action),
        "types": (STRING | ARRAY, None),
        "chroot": (STRING, None),
        "follow_symlinks": (BOOLEAN, None),
        "traverse_mounts": (BOOLEAN, None),
        **_ACTION_COMMON,
    },
    "proxy": {"proxy": (STRING, _proxy), **_ACTION_COMMON},
}


# ---------------------------------------------------------------------------- routes


_ROUTE_STEP: Table = {
    "match": (OBJECT, None),
    "action": (OBJECT, _action),
}


def _route_step(ctx: ValidationContext, value: object) -> None:
    if not isinstance(value, dict):
        raise ConfigInvalid('The "routes" array must contain only object values.')
    _object(_ROUTE_STEP)(ctx, value)


def _route_list(ctx: ValidationContext, value: object) -> None:
    for step in value:  # type: ignore[attr-defined]
        _route_step(ctx, step)


def _routes(ctx: ValidationContext, value: object) -> None:
    if isinstance(value, list):
        _route_list(ctx, value)
        return
    for name, member in value.items():  # type: ignore[attr-defined]
        _check_type(name, member, ARRAY)
        _route_list(ctx, member)


# ------------------------------------------------------------------------- listeners


def _certificate_names(ctx: ValidationContext, value: object) -> None:
    # nxt_conf_vldt_certificate
    if isinstance(value, list) and not value:
        raise ConfigInvalid('The "certificate" array must contain at least one element.')
    known = ctx.certificates
    for name in value if isinstance(value, list) else [value]:
        if not isinstance(name, str):
            raise ConfigInvalid('The "certificate" array must contain only string values.')
        if name not in known:
            raise ConfigInvalid(f'Certificate "{name}" is not found.')


def _ticket_keys(ctx: ValidationContext, value: object) -> None:
    # nxt_conf_vldt_ticket_key: true/false, or base64 keys of 48 or 80 bytes.
    if isinstance(value, bool):
        return
    for key in value if isinstance(value, list) else [value]:
        if not isinstance(key, str):
            raise ConfigInvalid('The "key" array must contain only string values.')
        try:
            size = len(base64.b64decode(key, validate=True))
        except ValueError:
            raise ConfigInvalid(f'Invalid Base64 format for the ticket key "{key}".') from None
        if size not in (48, 80):
            raise ConfigInvalid(
                f'Invalid length {size} of the ticket key "{key}".  Must be 48 or 80 bytes.'
            )


def _at_least(name: str, minimum: int, sentence: str) -> Validator:
    def check(ctx: ValidationContext, value: object) -> None:
        if value < minimum:  # type: ignore[operator]
            raise ConfigInvalid(f'The "{name}" number must {sentence}.')

    return check


def _strings(ctx: ValidationContext, value: object) -> None:
    for name, member in value.items():  # type: ignore[attr-defined]
        _check_type(name, member, STRING)


_TLS: Table = {
    "certificate": (STRING | ARRAY, _certificate_names),
    "conf_commands": (OBJECT, _strings),
    "session": (
        OBJECT,
        _object(
            {
                "cache_size": (INTEGER, _at_least("cache_size", 0, "not be negative")),
                "timeout": (INTEGER, _at_least("timeout", 1, "be greater than zero")),
                "tickets": (STRING | ARRAY | BOOLEAN, _ticket_keys),
            }
        ),
    ),
}


def _app_name(ctx: ValidationContext, value: object) -> None:
    apps = ctx.conf.get("applications")
    if not isinstance(apps, dict) or value not in apps:
        raise ConfigInvalid(
            f'Listening socket is assigned for a non existing application "{value}".'
        )


_LISTENER: Table = {
    "pass": (STRING, _pass),
    "application": (STRING, _app_name),
    "tls": (OBJECT, _object(_TLS, required=("certificate",))),
    "client_ip": (OBJECT, None),
    "forwarded": (OBJECT, None),
    "backlog": (INTEGER, None),
}


def _listener(ctx: ValidationContext, name: str, value: object) -> None:
    if parse_listener(name) is None:
        raise ConfigInvalid(f'The listener address "{name}" is invalid.')
    _check_type(name, value, OBJECT)
    _object(_LISTENER)(ctx, value)


# ---------------------------------------------------------------------- applications


def find_module(modules: dict[str, dict[str, str]], app_type: str) -> str | None:
    """The module serving ``type`` ("python", "python 3", "python 3.11", ...), if installed."""
    lang, _, version = app_type.partition(" ")
    module = modules.get(lang)
    if module is None:
        return None
    have = module.get("version", "")
    if version and not (have == version or have.startswith(version + ".")):
        return None
    return lang


def _processes(ctx: ValidationContext, value: object) -> None:
    if not isinstance(value, dict):
        if value < 1:  # type: ignore[operator]
            raise ConfigInvalid('The "processes" number must be equal to or greater than 1.')
        if value > 2**31 - 1:  # type: ignore[operator]
            raise ConfigInvalid(f'The "processes" number must not exceed {2**31 - 1}.')
        return
    _object({"spare": (INTEGER, None), "max": (INTEGER, None), "idle_timeout": (INTEGER, None)})(
        ctx, value
    )
    spare, maximum = value.get("spare", 0), value.get("max", 1)
    if spare < 0:
        raise ConfigInvalid('The "spare" number must not be negative.')
    if maximum < 1:
        raise ConfigInvalid('The "max" number must be equal to or greater than 1.')
    if maximum < spare:
        raise ConfigInvalid('The "spare" number must be less than or equal to "max".')


_APP_COMMON: Table = {
    "type": (STRING, None),
    "processes": (INTEGER | OBJECT, _processes),
    "limits": (OBJECT, None),
    "user": (STRING, None),
    "group": (STRING, None),
    "working_directory": (STRING, None),
    "environment": (OBJECT, None),
    "isolation": (OBJECT, None),
    "stdout": (STRING, None),
    "stderr": (STRING, None),
}


def _application(ctx: ValidationContext, name: str, value: object) -> None:
    _check_type(name, value, OBJECT)
    app_type = value.get("type")  # type: ignore[union-attr]
    if app_type is None:
        raise ConfigInvalid('Application must have the "type" property set.')
    _check_type("type", app_type, STRING)
    if find_module(ctx.modules, app_type) is None:
        raise ConfigInvalid(
            f'The module to run "{app_type}" is not found among the available application modules.'
        )
    # Language-specific options are accepted as sent (see the module docstring).
    _object(_APP_COMMON, lenient=True)(ctx, value)


def _upstream(ctx: ValidationContext, name: str, value: object) -> None:
    _check_type(name, value, OBJECT)
    _object({"servers": (OBJECT, None)})(ctx, value)
    if "servers" not in value:  # type: ignore[operator]
        raise ConfigInvalid(f'The "{name}" upstream must contain "servers" object value.')


def _js_module(ctx: ValidationContext, value: object) -> None:
    # nxt_conf_vldt_js_module: a name or an array of names of uploaded modules (with njs).
    if ctx.js_modules is None:
        return
    known = set(ctx.js_modules)
    for name in value if isinstance(value, list) else [value]:
        if not isinstance(name, str):
            raise ConfigInvalid('The "js_module" array must contain only string values.')
        if name not in known:
            raise ConfigInvalid(f'JS module "{name}" is not found.')


# Of "settings" only js_module is checked; the other members are accepted as sent.
_SETTINGS = _object({"js_module": (STRING | ARRAY, _js_module)}, lenient=True)

_ROOT: Table = {
    "settings": (OBJECT, _SETTINGS),
    "listeners": (OBJECT, _each_member(_listener)),
    "routes": (ARRAY | OBJECT, _routes),
    "applications": (OBJECT, _each_member(_application)),
    "upstreams": (OBJECT, _each_member(_upstream)),
    "access_log": (STRING | OBJECT, None),
}


def validate(
    conf: object,
    *,
    modules: dict[str, dict[str, str]] | None = None,
    certificates: Iterable[str] = (),
    js_modules: Iterable[str] | None = None,
) -> None:
    """Raise :class:`ConfigInvalid` with Unit's detail if ``conf`` is not a valid config.

    ``js_modules`` None models a Unit built without njs (``settings.js_module`` unchecked)."""
    _check_type(None, conf, OBJECT)
    ctx = ValidationContext(
        conf=conf,  # type: ignore[arg-type]
        modules=dict(DEFAULT_MODULES) if modules is None else modules,
        certificates=set(certificates),
        js_modules=None if js_modules is None else list(js_modules),
    )
    _object(_ROOT)(ctx, conf)


def listener_names(conf: object) -> list[str]:
    if isinstance(conf, dict) and isinstance(conf.get("listeners"), dict):
        return list(conf["listeners"])
    return []
