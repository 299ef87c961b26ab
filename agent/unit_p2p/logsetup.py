"""Logging for the agent: stdlib ``logging``, one record per line, context as key=value.

Context goes in ``extra``: ``log.info("applied", extra={"revision": "7@12D3...", "ms": 41})``.

- ``text``: ``2026-11-22T03:28:24.123Z INFO unit_p2p.sync: applied revision=7@12D3... ms=41``.
  When stderr is journald's stream (systemd sets ``JOURNAL_STREAM`` to its device:inode), the
  timestamp is left out, since journald stamps every line itself, and each line starts with a
  ``<N>`` syslog priority, which journald turns into the entry's priority.
- ``json``: one object per line: ``ts``, ``level``, ``logger``, ``msg``, the extras, ``exc``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import TextIO

from unit_p2p.errors import SettingsError
from unit_p2p.settings import LOG_FORMATS, LOG_LEVELS

LEVELS = {name: logging.getLevelName(name.upper()) for name in LOG_LEVELS}
# chatty at info; their warnings still come through
_QUIET_BELOW_DEBUG = ("libp2p", "multiaddr", "zeroconf", "async_service")
_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                    logging.CRITICAL: 2}
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName",
}


def extras(record: logging.LogRecord) -> dict[str, object]:
    """The fields a logging call passed in ``extra``."""
    return {k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS and
            not k.startswith("_")}


def _utc(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + \
        f".{int(created * 1000) % 1000:03d}Z"


def _text_value(value: object) -> str:
    text = str(value)
    if not text or any(c.isspace() or c in '"=\\' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


class TextFormatter(logging.Formatter):
    def __init__(self, journald: bool):
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        line = f"{record.levelname} {record.name}: {record.getMessage()}"
        for key, value in extras(record).items():
            line += f" {key}={_text_value(value)}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if not self.journald:
            return f"{_utc(record.created)} {line}"
        # journald makes every line its own entry: give each the record's priority
        prefix = f"<{_SYSLOG_PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + part for part in line.split("\n"))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, object] = {
            "ts": _utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in extras(record).items():
            obj.setdefault(key, value)
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=False, default=str)


def stream_is_journal(stream: TextIO, env: Mapping[str, str]) -> bool:
    """True when ``stream`` is the journald stream systemd named in ``JOURNAL_STREAM``."""
    try:
        dev, ino = (int(part) for part in env.get("JOURNAL_STREAM", "").split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def configure_logging(level: str, fmt: str, *, stream: TextIO | None = None,
                      env: Mapping[str, str] | None = None) -> logging.Handler:
    """Sends every record at ``level`` and above to ``stream`` (stderr), formatted as ``fmt``.

    Calling it again replaces the handler it installed before.
    """
    if level.lower() not in LEVELS:
        raise SettingsError(f"{level!r} is not one of {', '.join(LEVELS)}", key="log_level")
    if fmt not in LOG_FORMATS:
        raise SettingsError(f"{fmt!r} is not one of {', '.join(LOG_FORMATS)}", key="log_format")
    stream = sys.stderr if stream is None else stream
    env = os.environ if env is None else env
    handler = logging.StreamHandler(stream)
    handler.set_name("unit-p2p")
    handler.setFormatter(JsonFormatter() if fmt == "json"
                         else TextFormatter(journald=stream_is_journal(stream, env)))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "unit-p2p"]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    numeric = LEVELS[level.lower()]
    # Our own loggers follow log_level; libraries (py-libp2p, multiaddr, zeroconf) log every
    # byte they parse at DEBUG, so they stay at WARNING or above whatever log_level says.
    root.setLevel(max(numeric, logging.WARNING))
    logging.getLogger("unit_p2p").setLevel(numeric)
    for name in _QUIET_BELOW_DEBUG:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    # py-libp2p reports routine events (a peer closing a DHT stream, a failed redial that our
    # own bootstrap loop retries) at WARNING/ERROR; ours say what matters, once.
    logging.getLogger("libp2p").setLevel(logging.WARNING if numeric == logging.DEBUG
                                         else logging.CRITICAL)
    return handler
