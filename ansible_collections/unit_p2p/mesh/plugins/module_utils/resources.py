# -*- coding: utf-8 -*-
# Copyright: unit-p2p contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Named resources of a revision (certificate bundles, JS modules) for this collection's modules:
reading the C(certificates) / C(js_modules) options on the managed host, and the public summary
of a certificate the agent reports (never key bytes: only whitelisted fields pass)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import calendar
import time
from datetime import datetime, timezone

# What a task result or a diff may show of a certificate. Anything else the agent might send
# (it should not send key bytes, but a result is logged and kept) is dropped here.
CERTIFICATE_FIELDS = ("name", "subject", "issuer", "not_before", "not_after", "fingerprint")
JS_MODULE_FIELDS = ("name", "digest", "size")


class ResourceError(ValueError):
    """A C(certificates) / C(js_modules) option cannot be used; str() is the task's message.

    Messages name the option and the resource NAME, never the content. Paths are left out as
    well: the certificates option is no_log, so Ansible would mask them in the message anyway."""


def _read(option, name, path):
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise ResourceError("%s.%s: the file in path does not exist on the managed host"
                            % (option, name))
    except IsADirectoryError:
        raise ResourceError("%s.%s: path is a directory, not a file" % (option, name))
    except PermissionError:
        raise ResourceError("%s.%s: the file in path is not readable by the task's user "
                            "(become root or a user that may read it)" % (option, name))
    except OSError as exc:
        raise ResourceError("%s.%s: the file in path cannot be read: %s"
                            % (option, name, exc.strerror or exc.__class__.__name__))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ResourceError("%s.%s: the file in path is not UTF-8 text (a PEM bundle or a JS "
                            "source is expected)" % (option, name))


def read_resources(option, spec):
    """``{NAME: {"path": ...} | {"content": ...}}`` -> ``{NAME: text}``; raises ResourceError."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise ResourceError("%s must be a dict of NAME: {path: FILE} or NAME: {content: TEXT}"
                            % option)
    texts = {}
    for name in sorted(spec):
        entry = spec[name]
        if not isinstance(name, str) or not name:
            raise ResourceError("%s: every NAME must be a non-empty string" % option)
        if not isinstance(entry, dict):
            raise ResourceError("%s.%s must be a dict with path or content" % (option, name))
        unknown = sorted(set(entry) - set(("path", "content")))
        if unknown:
            raise ResourceError("%s.%s: unsupported keys %s (only path or content)"
                                % (option, name, ", ".join(unknown)))
        given = [key for key in ("path", "content") if entry.get(key) is not None]
        if len(given) != 1:
            raise ResourceError("%s.%s: give exactly one of path or content (parameters are "
                                "mutually exclusive: path|content)" % (option, name))
        value = entry[given[0]]
        if not isinstance(value, str):
            raise ResourceError("%s.%s.%s must be a string" % (option, name, given[0]))
        text = _read(option, name, value) if given[0] == "path" else value
        if not text.strip():
            raise ResourceError("%s.%s is empty" % (option, name))
        texts[name] = text
    return texts


def _epoch(not_after):
    """Unix seconds of a certificate's not_after: ISO 8601, Unix seconds, or Unit's own
    C(Jan  1 00:00:00 2027 GMT); None when it is none of these."""
    if isinstance(not_after, bool):
        return None
    if isinstance(not_after, (int, float)):
        return float(not_after)
    if not isinstance(not_after, str):
        return None
    text = not_after.strip()
    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        try:
            return float(calendar.timegm(time.strptime(text, "%b %d %H:%M:%S %Y GMT")))
        except ValueError:
            return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def _summaries(entries, fields):
    if isinstance(entries, dict):  # {NAME: {...}} is accepted as well as a list with names
        entries = [dict(entry, name=name) for name, entry in entries.items()
                   if isinstance(entry, dict)]
    if not isinstance(entries, list):
        return []
    kept = [dict((key, entry[key]) for key in fields if key in entry)
            for entry in entries if isinstance(entry, dict)]
    return sorted(kept, key=lambda entry: str(entry.get("name")))


def certificate_summaries(entries, now=None):
    """The whitelisted fields of the agent's certificate list, by name, each with
    C(expires_in): seconds until not_after (negative once expired) when it can be read."""
    now = time.time() if now is None else now
    summaries = _summaries(entries, CERTIFICATE_FIELDS)
    for summary in summaries:
        expires = _epoch(summary.get("not_after"))
        if expires is not None:
            summary["expires_in"] = int(expires - now)
    return summaries


def js_module_summaries(entries):
    return _summaries(entries, JS_MODULE_FIELDS)


def by_name(summaries):
    """A list of summaries as C({NAME: fields}), the form a diff reads best in."""
    return dict((entry.get("name"), dict((k, v) for k, v in entry.items()
                                         if k not in ("name", "expires_in")))
                for entry in summaries)
