"""The client commands' user errors: one line, the right exit code, never a traceback.

In-process (``cli.main``), so each case costs milliseconds; test_cli.py runs the real binary.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from unit_p2p import cli

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture
def files(tmp_path):
    (tmp_path / "dup.json").write_text('{"listeners": {}, "listeners": {"x": 1}}')
    (tmp_path / "null.json").write_text("null")
    (tmp_path / "deep.json").write_text(DEEP)
    (tmp_path / "comments.json").write_text('{"listeners": {}, // Unit takes this\n}')
    (tmp_path / "nan.json").write_text('{"settings": {"x": NaN}}')
    (tmp_path / "plain").write_text("x")
    (tmp_path / "binary").write_bytes(b"\xff\xfe")
    (tmp_path / "token").write_text("t" * 20)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    return tmp_path


@pytest.mark.parametrize("argv, code, expected", [
    (["publish", "--config-file", "{d}/dup.json"], 2, "duplicate key 'listeners'"),
    (["publish", "--config-file", "{d}/null.json"], 2, "one JSON object"),
    (["publish", "--config-file", "{d}/deep.json"], 2, "nested deeper than"),
    (["publish", "--config-file", "{d}/comments.json"], 2, "not strict JSON"),
    (["publish", "--config-file", "{d}/nan.json"], 2, "NaN is not JSON"),
    (["publish", "--config-file", "{d}/absent.json"], 2, "cannot read it"),
    (["publish", "--timeout", "1e300"], 2, "--timeout: must be in (0, 3600]"),
    (["publish", "--timeout", "nan"], 2, "--timeout: must be in"),
    (["publish", "--wait", "--min-peers", "-3"], 2, "--min-peers: must be 0 or more"),
    (["publish", "--certificate", "site"], 2, "--certificate: expected NAME=FILE"),
    (["publish", "--certificate", "site={d}/absent.pem"], 2, "absent.pem: No such file"),
    (["publish", "--js-module", "auth={d}/binary"], 2, "binary: not UTF-8 text"),
    (["status", "--api", "bogus://x"], 2, "--api"),
    (["status", "--api", "http://192.0.2.1:80", "--token-file", "{d}/token"], 2, "loopback"),
    (["status", "--api", "127.0.0.1:1", "--token-file", "{d}/absent"], 2, "--token-file"),
    (["status", "--api", "127.0.0.1:1", "--token-file", "{d}"], 2, "not a regular file"),
    (["status", "--api", "unix:{d}/plain"], 3, "is not a socket"),
    (["status", "--api", "unix:{d}/none.sock"], 3, "does not exist"),
    (["status", "--bogus"], 2, "unit-p2p status: error: unrecognized arguments: --bogus"),
    (["id", "--key", "{d}/k", "--new-key", "{d}/n"], 2, "--new-key only means"),
    (["demo", "--keep-dir", "{d}/plain"], 2, "is not a directory"),
    (["id", "--key", "{d}/dangling", "--create"], 2, "which does not exist: point it"),
])
def test_client_user_errors(files, capsys, argv, code, expected):
    argv = [a.format(d=files) for a in argv]
    try:
        rc = cli.main(argv)
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == code, err
    assert expected in err
    assert "Traceback" not in err
    assert len(err) < 1000


def test_exit_codes_are_in_help(capsys):
    for argv in (["--help"], ["publish", "--help"], ["status", "--help"]):
        with pytest.raises(SystemExit):
            cli.main(argv)
        assert "3 agent unreachable" in " ".join(capsys.readouterr().out.split())


class SlowAgent:
    """A listener that answers every request after ``delay`` s (a Unit slow to apply), or
    never (``delay`` None)."""

    def __init__(self, path, delay):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.delay = delay
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                if self.delay is None:
                    self.stop.wait(30)
                    continue
                time.sleep(self.delay)
                body = (b'{"changed": false, "revision": "1@x", "digest": "sha256:0", '
                        b'"converged": true, "peers": {"applied": [], "failed": {}, '
                        b'"pending": []}}')
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(body), body))

    def close(self):
        self.stop.set()
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept(); close() alone does not
        self.sock.close()
        self.thread.join(10)


def test_publish_waits_its_timeout_for_a_slow_unit(tmp_path, capsys, monkeypatch):
    """The answer comes after the client's base timeout but within --timeout: that is success,
    not "the agent may be stuck"."""
    monkeypatch.setattr(cli, "CLIENT_TIMEOUT", 0.5)
    agent = SlowAgent(tmp_path / "api.sock", delay=1.5)
    try:
        rc = cli.main(["publish", "--api", f"unix:{tmp_path / 'api.sock'}", "--timeout", "20"])
    finally:
        agent.close()
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "would change" not in captured.out and "1@x" in captured.out


def test_publish_without_answer_in_time_is_exit_1_outcome_unknown(tmp_path, capsys,
                                                                  monkeypatch):
    monkeypatch.setattr(cli, "CLIENT_TIMEOUT", 0.2)
    agent = SlowAgent(tmp_path / "api.sock", delay=None)
    try:
        rc = cli.main(["publish", "--api", f"unix:{tmp_path / 'api.sock'}", "--timeout", "0.3"])
    finally:
        agent.close()
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "may still complete" in err and "unit-p2p status" in err


def test_print_config_alone_shows_the_defaults_and_why_they_cannot_run(tmp_path, capsys,
                                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    for var in [v for v in os.environ if v.startswith("UNIT_P2P_")]:
        monkeypatch.delenv(var)
    (tmp_path / "empty.yaml").write_text("")
    rc = cli.main(["agent", "--print-config", "--config", str(tmp_path / "empty.yaml")])
    captured = capsys.readouterr()
    assert rc == 2
    assert "trust: allowlist" in captured.out and "mesh: default" in captured.out
    assert "trusted_peers" in captured.err and "Traceback" not in captured.err
