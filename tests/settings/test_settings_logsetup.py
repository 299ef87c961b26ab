"""Logging: key=value text (journald-aware) and one JSON object per line."""

from __future__ import annotations

import io
import json
import logging
import os
import re

import pytest

from unit_p2p.errors import SettingsError
from unit_p2p.logsetup import configure_logging, stream_is_journal

log = logging.getLogger("unit_p2p.test")


@pytest.fixture(autouse=True)
def restore_loggers():
    """configure_logging changes process-wide state other tests' caplog depends on."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    names = ["", "unit_p2p", "libp2p", "multiaddr", "zeroconf", "async_service"]
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_text_has_timestamp_level_and_key_values():
    out = io.StringIO()
    configure_logging("info", "text", stream=out, env={})
    log.info("applied %s", "rev", extra={"revision": "7@12D3", "ms": 41, "why": 'a "b" c'})
    log.debug("not shown")
    line = out.getvalue()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO unit_p2p\.test: applied rev "
                        r'revision=7@12D3 ms=41 why="a \\"b\\" c"\n', line), line


def test_text_under_journald_has_priority_and_no_timestamp(tmp_path):
    with open(tmp_path / "journal", "w") as journal, open(tmp_path / "other", "w") as other:
        st = os.fstat(journal.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert stream_is_journal(journal, env) and not stream_is_journal(other, env)
        assert not stream_is_journal(io.StringIO(), env)
        assert not stream_is_journal(journal, {"JOURNAL_STREAM": "garbage"})
        configure_logging("info", "text", stream=journal, env=env)
        log.warning("unit unreachable", extra={"unit": "unix:/x.sock"})
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("handler failed")
        # systemd inherited JOURNAL_STREAM, but stderr was redirected elsewhere
        configure_logging("info", "text", stream=other, env=env)
        log.info("to a file")
    lines = (tmp_path / "journal").read_text().splitlines()
    assert lines[0] == "<4>WARNING unit_p2p.test: unit unreachable unit=unix:/x.sock"
    assert lines[1] == "<3>ERROR unit_p2p.test: handler failed"
    assert all(line.startswith("<3>") for line in lines[2:]) and "RuntimeError: boom" in lines[-1]
    assert re.match(r"\d{4}-\d\d-\d\dT.* INFO unit_p2p\.test: to a file$",
                    (tmp_path / "other").read_text())


def test_json_one_object_per_line():
    out = io.StringIO()
    configure_logging("debug", "json", stream=out, env={})
    log.debug("pulled\nrevision", extra={"bytes": 1024, "peer": "12D3", "level": "spoof"})
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        log.error("failed", exc_info=True)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "debug" and first["msg"] == "pulled\nrevision"
    assert first["logger"] == "unit_p2p.test" and first["bytes"] == 1024 and first["peer"] == "12D3"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"])
    assert "ZeroDivisionError" in second["exc"] and second["level"] == "error"


def test_reconfiguring_replaces_the_handler():
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", "text", stream=first, env={})
    configure_logging("warning", "json", stream=second, env={})
    assert [h.get_name() for h in logging.getLogger().handlers].count("unit-p2p") == 1
    log.info("dropped")
    log.warning("kept")
    assert first.getvalue() == "" and json.loads(second.getvalue())["msg"] == "kept"
    # py-libp2p logs routine events as warnings and errors: silenced unless debugging
    assert logging.getLogger("libp2p").level == logging.CRITICAL
    configure_logging("debug", "text", stream=io.StringIO(), env={})
    assert logging.getLogger("libp2p").level == logging.WARNING


def test_bad_level_or_format():
    with pytest.raises(SettingsError, match="log_level"):
        configure_logging("loud", "text", stream=io.StringIO(), env={})
    with pytest.raises(SettingsError, match="log_format"):
        configure_logging("info", "xml", stream=io.StringIO(), env={})
