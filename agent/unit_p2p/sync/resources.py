"""Named resources a revision carries besides Unit's config: certificate bundles and JS modules.

A revision with resources is an envelope (sync/revision.py) holding the config and a manifest per
kind: ``certificates`` {NAME: {digest, size, subject, issuer, not_before, not_after,
fingerprint}} and ``js_modules`` {NAME: {digest, size}}. The bytes themselves are blobs,
content-addressed by the sha256 of their bytes (store.py keeps them, fetch.py pulls them), so the
origin's signature over the envelope's digest covers every bundle and module.

The config names a certificate by its NAME (``listeners.*.tls.certificate``); in Unit it is
uploaded as ``NAME.<first 12 hex of its digest>``, because Unit cannot overwrite a bundle: a
rotation uploads the new one beside the old, switches the config and deletes the old one. A JS
module keeps its NAME in Unit (expressions import it by that name).
"""

from __future__ import annotations

import copy
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from unit_p2p.errors import BadDocument

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
#: a resource NAME: what Unit takes as a path segment, and short enough for ``NAME.<12 hex>``
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
_ISO_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
#: the largest resource a manifest may announce (each is capped by max_config_bytes as well)
MAX_RESOURCE_BYTES = 1 << 30
#: hex digits of a bundle's digest in its Unit-side name
UNIT_NAME_HEX = 12

CERTIFICATES = "certificates"
JS_MODULES = "js_modules"
KINDS = (CERTIFICATES, JS_MODULES)

_CERT_FIELDS = {"digest", "size", "subject", "issuer", "not_before", "not_after", "fingerprint"}
_MODULE_FIELDS = {"digest", "size"}


def _bad(kind: str, name: str, why: str) -> BadDocument:
    return BadDocument("bad_document", f"{kind} {str(name)[:70]!r}: {why}")


def _check_entries(kind: str, value: Any, fields: set[str]) -> None:
    if not isinstance(value, dict) or not value:
        raise BadDocument("bad_document", f"{kind} must be a non-empty object")
    for name, entry in value.items():
        if not NAME_RE.fullmatch(name):
            raise _bad(kind, name, "a name is 1-64 of A-Z a-z 0-9 . _ - (not starting with . -)")
        if not isinstance(entry, dict) or set(entry) != fields:
            raise _bad(kind, name, f"an entry has exactly {sorted(fields)}")
        if not isinstance(entry["digest"], str) or not DIGEST_RE.match(entry["digest"]):
            raise _bad(kind, name, "digest is not sha256:<64 hex>")
        size = entry["size"]
        if type(size) is not int or not 0 < size <= MAX_RESOURCE_BYTES:
            raise _bad(kind, name, f"size must be an integer in [1, {MAX_RESOURCE_BYTES}]")


def check_certificates(value: Any) -> None:
    """The ``certificates`` member of an envelope. Raises BadDocument."""
    _check_entries(CERTIFICATES, value, _CERT_FIELDS)
    for name, entry in value.items():
        for key in ("subject", "issuer"):
            if not isinstance(entry[key], str) or len(entry[key]) > 1024:
                raise _bad(CERTIFICATES, name, f"{key} must be a string of at most 1024 chars")
        for key in ("not_before", "not_after"):
            if not isinstance(entry[key], str) or not _ISO_RE.fullmatch(entry[key]):
                raise _bad(CERTIFICATES, name, f"{key} must be YYYY-MM-DDTHH:MM:SSZ")
        if not isinstance(entry["fingerprint"], str) or not DIGEST_RE.match(
                entry["fingerprint"]):
            raise _bad(CERTIFICATES, name, "fingerprint is not sha256:<64 hex>")


def check_js_modules(value: Any) -> None:
    """The ``js_modules`` member of an envelope. Raises BadDocument."""
    _check_entries(JS_MODULES, value, _MODULE_FIELDS)


# --- the config's references ------------------------------------------------------------------


def unit_certificate_name(name: str, digest: str) -> str:
    """The name a bundle has in Unit: content-derived, so a new bundle never collides."""
    return f"{name}.{digest[7:7 + UNIT_NAME_HEX]}"


def _names(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    return [v for v in items if isinstance(v, str)]


def certificate_refs(config: Any) -> set[str]:
    """The certificate names ``listeners.*.tls.certificate`` refers to (a string or an array)."""
    out: set[str] = set()
    listeners = config.get("listeners") if isinstance(config, dict) else None
    if isinstance(listeners, dict):
        for listener in listeners.values():
            tls = listener.get("tls") if isinstance(listener, dict) else None
            if isinstance(tls, dict) and "certificate" in tls:
                out.update(_names(tls["certificate"]))
    return out


def js_module_refs(config: Any) -> set[str]:
    """The module names ``settings.js_module`` imports (a string or an array)."""
    settings = config.get("settings") if isinstance(config, dict) else None
    if isinstance(settings, dict) and "js_module" in settings:
        return set(_names(settings["js_module"]))
    return set()


def without_js_modules(config: Any, names: set[str]) -> Any:
    """``config`` with ``names`` left out of ``settings.js_module``."""
    used = js_module_refs(config)
    if not used & names:
        return config
    settings = dict(config["settings"])
    value = settings["js_module"]
    rest = [n for n in (value if isinstance(value, list) else [value]) if n not in names]
    if rest:
        settings["js_module"] = rest if isinstance(value, list) else rest[0]
    else:
        del settings["js_module"]
    out = dict(config)
    if settings:
        out["settings"] = settings
    else:
        del out["settings"]
    return out


def rename_certificates(config: Any, mapping: dict[str, str]) -> Any:
    """A copy of ``config`` whose certificate references are renamed by ``mapping`` (names not
    in it are left as they are); ``config`` itself when nothing is renamed."""
    if not mapping or not certificate_refs(config) & set(mapping):
        return config
    out = copy.deepcopy(config)
    for listener in out["listeners"].values():
        tls = listener.get("tls") if isinstance(listener, dict) else None
        if not isinstance(tls, dict) or "certificate" not in tls:
            continue
        value = tls["certificate"]
        if isinstance(value, list):
            tls["certificate"] = [mapping.get(v, v) if isinstance(v, str) else v for v in value]
        elif isinstance(value, str):
            tls["certificate"] = mapping.get(value, value)
    return out


def to_unit_names(certificates: dict) -> dict[str, str]:
    """NAME -> Unit-side name for a manifest's certificates."""
    return {name: unit_certificate_name(name, e["digest"]) for name, e in certificates.items()}


def from_unit_names(certificates: dict) -> dict[str, str]:
    """Unit-side name -> NAME for a manifest's certificates."""
    return {unit: name for name, unit in to_unit_names(certificates).items()}


def certificate_views(certificates: dict) -> list[dict]:
    """What status, history, a publish's answer and a diff show of certificates: public parts
    only (the bundle's digest is not shown either: it is a hash of the private key's bytes)."""
    return [{"name": name, "subject": e["subject"], "issuer": e["issuer"],
             "not_before": e["not_before"], "not_after": e["not_after"],
             "fingerprint": e["fingerprint"]}
            for name, e in sorted(certificates.items())]


def js_module_views(modules: dict) -> list[dict]:
    return [{"name": name, "digest": e["digest"], "size": e["size"]}
            for name, e in sorted(modules.items())]


def expiry_timestamp(not_after: str) -> float:
    """Unix seconds of a manifest's ``not_after``."""
    from unit_p2p.certificates import parse_iso_utc

    return parse_iso_utc(not_after)


# --- publishing: resources given as text, checked before anything leaves the host -------------


@dataclass
class Given:
    """Resources given to a publish: manifest entries and their bytes by digest."""

    certificates: dict[str, dict] = field(default_factory=dict)
    js_modules: dict[str, dict] = field(default_factory=dict)
    #: digest -> (bytes, secret)
    blobs: dict[str, tuple[bytes, bool]] = field(default_factory=dict)


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _check_name(kind: str, name: Any) -> None:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise BadDocument("bad_name", f"{kind} name {str(name)[:70]!r}: a name is 1-64 of "
                          "A-Z a-z 0-9 . _ - and does not start with . or -")


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def given(certificates: dict | None, js_modules: dict | None, max_bytes: int) -> Given:
    """Check resources given to a publish (NAME -> text): each bundle is a PEM chain with the
    leaf's private key, not expired; each module is UTF-8 text (Unit compiles it when the
    publisher applies it). Blocking (parses certificates). Raises BadDocument (bad_name,
    bad_certificate, bad_js_module) or PublishRefused (too_large); no message ever quotes a
    bundle."""
    from unit_p2p.certificates import BadBundle, parse_bundle

    out = Given()
    for name, text in (certificates or {}).items():
        _check_name("certificate", name)
        data = _as_bytes(text)
        _check_size("certificate", name, data, max_bytes)
        try:
            info = parse_bundle(data)
        except BadBundle as exc:
            raise BadDocument("bad_certificate", f"certificate {name}: {exc}") from None
        digest = _sha256(data)
        out.certificates[name] = {"digest": digest, "size": len(data), **info.public()}
        out.blobs[digest] = (data, True)
    for name, text in (js_modules or {}).items():
        _check_name("JS module", name)
        data = _as_bytes(text)
        _check_size("JS module", name, data, max_bytes)
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            raise BadDocument("bad_js_module", f"JS module {name}: not UTF-8 text") from None
        digest = _sha256(data)
        out.js_modules[name] = {"digest": digest, "size": len(data)}
        out.blobs[digest] = (data, False)
    return out


def _check_size(kind: str, name: str, data: bytes, max_bytes: int) -> None:
    from unit_p2p.errors import PublishRefused

    if not data:
        raise BadDocument(f"bad_{kind.lower().replace(' ', '_')}", f"{kind} {name} is empty")
    if len(data) > max_bytes:
        raise PublishRefused("too_large", f"{kind} {name} is {len(data)} bytes; "
                             f"max_config_bytes is {max_bytes} here, and peers refuse more")


def carried(kind: str, given_entries: dict, head_entries: dict, refs: set[str]) -> dict:
    """What a new revision carries of one kind: the given resources, and the head's that the
    config still refers to and were not given anew."""
    out = dict(given_entries)
    for name in refs:
        if name not in out and name in head_entries:
            out[name] = head_entries[name]
    return out
