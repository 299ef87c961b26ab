"""Contract test: replay the transcripts recorded from a real NGINX Unit 1.35.0 against the
emulator and compare what a client sees.

The recording (``shared/unit-fixtures/unit-control-api.jsonl``, see its README) was made on three
fresh instances: h1 and h2 with a unix control socket, h3 over TCP. Here every instance is a
fresh emulator, all three run side by side (h2's "port already in use" comes from h1 holding
the port, as in the recording), and the requests are replayed in ``seq`` order.

For every replayed request the status line, the header names and their order, ``Server``,
``Content-Type``, ``Connection`` and ``Content-Length``, the parsed JSON body and the exact body
bytes must match. ``Date`` is ignored, and so are the ``/status`` counters (connections and
requests: the emulator serves no traffic, so they stay at zero). Requests Unit answered by
closing the connection must be closed without a response.

Listener ports of the recording (42101-42199) are remapped to currently free loopback ports of
the same width, so the bodies keep their lengths and the test does not depend on those ports
being free. The unix listener h3 configured lived in a directory that existed on the recording
host (``/opt/unit-demo/hosts/h3``); Unit refuses a unix listener whose directory is missing, so
that directory is remapped to one the test creates (no recorded answer contains the path).
Bodies the recording omitted (PEM bundles, the 8 MiB and the 20000-route configs) and raw
requests it only describes are rebuilt from their description; ``SYNTHESIZED`` lists them.

The recorded data-plane requests (``unit-data-plane.jsonl``: what a listener served, or that it
refused the connection) are replayed at their place in the sequence (``DATA_PLANE_AFTER``),
over TLS where the recording used https, and compared: status, header names and order, every
header value but ``Date``, and the exact body. Those needing a share, an application or the
timing runs' configurations are listed in ``DATA_PLANE_SKIPPED``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import trio

from tests.emulator.conftest import fetch, free_loopback_port, make_bundle
from unit_p2p.unit.emulator import UnitEmulator
from unit_p2p.unit.emulator.jsonparse import dumps_pretty
from unit_p2p.unit.emulator.rawclient import RawResponse, build_request, exchange

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "unit-fixtures"
TRANSCRIPT = FIXTURES / "unit-control-api.jsonl"
DATA_PLANE = FIXTURES / "unit-data-plane.jsonl"

#: When each recorded data-plane request was made: after the control request with this ``seq``
#: (the recording has no sequence numbers for them; each position follows from the request's
#: name and from the configuration it shows being served).
DATA_PLANE_AFTER = {
    "after_put_default_route": 9,
    "after_put_return_418": 9,
    "after_put_redirect": 9,
    "new_listener_serves_immediately": 21,
    "after_scalar_subpath_put": 22,
    "appended_route_after_catchall_not_reached": 27,
    "deleted_listener_refuses": 33,
    "still_serving_after_400s": 56,
    "broken_app_request": 75,  # 74, the failed PUT, is not replayed (see SKIPPED)
    "h2_still_serving_old_after_500": 81,
    "h1_unaffected_by_h2_failure": 81,
    "h3_listener": 83,
    "h3_named_route": 90,
    "h3_listener_gone_after_delete_whole": 98,
    "tls_listener_serves": 116,
    "after_restart_route": 135,
}

#: Data-plane requests that cannot be compared, with the reason.
DATA_PLANE_SKIPPED = {
    "after_put_static_share": "a static share: the emulator serves no files",
    "python_app_serves": "a Python application: the emulator runs no applications",
    "python_app_serves_after_restart": "a Python application: the emulator runs no applications",
    "after_restart_python_app": "a Python application: the emulator runs no applications",
    "served_after_small_puts": "made during the timing runs, whose configurations the "
    "transcript does not hold",
    "served_after_routes500_puts": "made during the timing runs, whose configurations the "
    "transcript does not hold",
}

#: The module list the recorded build reported (its install prefix rewritten to /opt/unit-demo).
RECORDED_MODULES = {
    "python": {"version": "3.11.2", "lib": "/opt/unit-demo/inst/lib/unit/modules/python3.unit.so"}
}

#: Cases that cannot be compared, with the reason. Skipped requests are not sent at all; each
#: was rejected by Unit, so skipping leaves the same state behind.
SKIPPED = {
    "put_config_app_module_missing": "needs a real Python application process: Unit answered "
    "500 because the app's module cannot be imported; the emulator starts no applications",
    "put_config_app_path_missing": "needs a real Python application process: Unit answered 500 "
    "because the app's path does not exist; the emulator starts no applications",
}

#: Requests whose body or raw bytes the recording does not contain, rebuilt from its notes.
SYNTHESIZED = {
    "put_no_content_length": "PUT without body and without Content-Length",
    "put_chunked_body": "Transfer-Encoding: chunked, one 0x100-byte chunk",
    "h3_put_body_without_content_length_same_packet": "body sent with the headers, no length",
    "content_length_invalid": "Content-Length: abc",
    "content_length_too_big": "Content-Length: 99999999999999999999",
    "content_length_longer_than_body_then_eof": "Content-Length 100, 10 bytes, then shutdown",
    "put_8MiB_body_whitespace_padded": "the app config padded with spaces to 8389082 bytes",
    "put_20000_routes": "a config with 20001 routes",
    "put_certificate": "a fresh RSA-2048 bundle with the recorded subject and validity",
    "put_certificate_again_exists": "the same bundle again",
    "put_certificate_cert_only_no_key": "the certificate without its key",
    "post_certificate_not_allowed": "the same bundle",
    "put_certificate_for_persistence": "a fresh bundle like the first one",
}

_PORT = re.compile(r"127\.0\.0\.1(:|%3A)(421\d\d)")
#: the recording host's directory of h3's unix listener, raw and percent-encoded
UNIX_LISTENER_DIR = "/opt/unit-demo/hosts/h3"


def _load() -> list[dict]:
    records = [json.loads(line) for line in TRANSCRIPT.read_text().splitlines() if line.strip()]
    return sorted(records, key=lambda r: r["seq"])


def _port_map(records: list[dict]) -> dict[str, str]:
    ports = sorted({m[1] for r in records for m in _PORT.findall(json.dumps(r))})
    mapping: dict[str, str] = {}
    for port in ports:
        new = str(free_loopback_port())
        while len(new) != len(port) or new in mapping.values():
            new = str(free_loopback_port())
        mapping[port] = new
    return mapping


def _remap(text, mapping: dict[str, str], unix_dir: str = UNIX_LISTENER_DIR):
    if text is None:
        return None
    text = text.replace(UNIX_LISTENER_DIR, unix_dir)
    text = text.replace(UNIX_LISTENER_DIR.replace("/", "%2F"), unix_dir.replace("/", "%2F"))
    return _PORT.sub(lambda m: "127.0.0.1" + m.group(1) + mapping[m.group(2)], text)


def _mask_counters(path: str, value: object) -> object:
    """Zero the /status counters (connections, requests) wherever the path's body has them."""

    def zero(v: object) -> object:
        if isinstance(v, dict):
            return {k: zero(x) for k, x in v.items()}
        return 0 if isinstance(v, int) and not isinstance(v, bool) else v

    def in_status(status: object) -> object:
        if not isinstance(status, dict):
            return status
        return {k: zero(v) if k in ("connections", "requests") else v for k, v in status.items()}

    clean = path.split("?", 1)[0].rstrip("/") or "/"
    if clean == "/" and isinstance(value, dict) and "status" in value:
        return {**value, "status": in_status(value["status"])}
    if clean == "/status":
        return in_status(value)
    if clean.startswith(("/status/connections", "/status/requests")):
        return zero(value)
    return value


class Replay:
    def __init__(self, records: list[dict], tmp_path: Path):
        self.records = records
        self.ports = _port_map(records)
        self.tmp_path = tmp_path
        self.unix_dir = tmp_path / "hosts" / "h3"
        self.unix_dir.mkdir(parents=True)
        self.bundle = make_bundle()
        by_name = {r["name"]: r for r in records}
        self.app_conf = self.remap(by_name["put_config_restore_app_conf"]["request_body"])

    def remap(self, text):
        return _remap(text, self.ports, str(self.unix_dir))

    def request_bytes(self, rec: dict) -> tuple[bytes, bool]:
        """The raw request for a record, and whether to half-close after sending it."""
        name, method = rec["name"], rec["method"]
        path = self.remap(rec["path"])
        headers = [tuple(h) for h in rec["request_headers"]]
        body = self.remap(rec["request_body"])
        if name == "put_no_content_length":
            return build_request(method, path), False
        if name == "put_chunked_body":
            chunk = b'{"listeners": {}}'.ljust(0x100)
            raw = b"100\r\n" + chunk + b"\r\n0\r\n\r\n"
            te = [("Transfer-Encoding", "chunked")]
            return build_request(method, path, raw, te, content_length=False), False
        if name == "h3_put_body_without_content_length_same_packet":
            conf = self.remap(
                '{"listeners": {"127.0.0.1:42167": {"pass": "routes"}}, '
                '"routes": [{"action": {"return": 200}}]}',
            )
            return build_request(method, path, conf.encode(), content_length=False), False
        if name == "content_length_invalid":
            return build_request(
                method, path, b"{}", [("Content-Length", "abc")], content_length=False
            ), False
        if name == "content_length_too_big":
            big = [("Content-Length", "99999999999999999999")]
            return build_request(method, path, b"{}", big, content_length=False), False
        if name == "content_length_longer_than_body_then_eof":
            short = [("Content-Length", "100")]
            return build_request(method, path, b'{"a": 1}  ', short, content_length=False), True
        if name == "put_8MiB_body_whitespace_padded":
            return build_request(method, path, self.app_conf.encode().ljust(8389082)), False
        if name == "put_20000_routes":
            routes = [{"match": {"uri": f"/r{i}"}, "action": {"return": 200}} for i in range(20000)]
            routes.append({"action": {"return": 204}})
            conf = {"listeners": json.loads(self.app_conf)["listeners"], "routes": routes}
            conf["applications"] = json.loads(self.app_conf)["applications"]
            return build_request(method, path, json.dumps(conf).encode()), False
        if name in (
            "put_certificate",
            "put_certificate_again_exists",
            "post_certificate_not_allowed",
        ):
            return build_request(method, path, self.bundle), False
        if name == "put_certificate_for_persistence":
            return build_request(method, path, make_bundle()), False
        if name == "put_certificate_cert_only_no_key":
            return build_request(method, path, make_bundle(with_key=False)), False
        if isinstance(body, str) and body.startswith("<omitted"):
            raise AssertionError(f"{name}: omitted body without a synthesized replacement")
        data = body.encode("utf-8") if body is not None else None
        return build_request(method, path, data, headers), False

    def compare(self, rec: dict, got: RawResponse) -> list[str]:
        name = rec["name"]
        problems: list[str] = []
        if rec["status"] is None:
            if got.status is not None:
                problems.append(f"expected no response, got {got.status}")
            elif rec["closed_by"] == "reset" and not got.reset:
                problems.append("expected the connection to be reset")
            return [f"{rec['seq']} {name}: {p}" for p in problems]
        if got.status is None:
            return [f"{rec['seq']} {name}: no response, expected {rec['status']}"]
        status_line = got.raw.split(b"\r\n", 1)[0].decode("latin-1")
        if status_line != rec["status_line"]:
            problems.append(f"status line {status_line!r} != {rec['status_line']!r}")
        if list(got.headers) != list(rec["headers"]):
            problems.append(f"header names {list(got.headers)} != {list(rec['headers'])}")
        for header in ("Server", "Content-Type", "Connection"):
            if got.headers.get(header) != rec["headers"].get(header):
                problems.append(f"{header}: {got.headers.get(header)!r}")
        if got.headers.get("Content-Length") != str(len(got.body)):
            problems.append("Content-Length does not match the body")
        path = rec["path"]
        want_json = _mask_counters(
            path, json.loads(self.remap(json.dumps(rec["response_json"])))
        )
        try:
            got_json = _mask_counters(path, json.loads(got.body))
        except ValueError:
            problems.append(f"body is not JSON: {got.body[:200]!r}")
            return [f"{rec['seq']} {name}: {p}" for p in problems]
        if got_json != want_json:
            problems.append(f"body {json.dumps(got_json)[:300]} != {json.dumps(want_json)[:300]}")
        want_bytes = dumps_pretty(want_json)
        if not problems and dumps_pretty(got_json) != want_bytes:
            problems.append("body bytes differ after masking")
        unmasked_path = not path.startswith("/status") and path.split("?")[0] != "/"
        if not problems and unmasked_path:
            recorded = self.remap(rec["response_body"]).encode("utf-8")
            if got.body != recorded:
                problems.append(f"body bytes {got.body[:200]!r} != {recorded[:200]!r}")
        return [f"{rec['seq']} {name}: {p}" for p in problems]


    async def compare_data_plane(self, rec: dict) -> list[str]:
        """Replay one recorded data-plane request and compare what the client sees."""
        url = urlsplit(self.remap(rec["url"]))
        tls = url.scheme == "https"
        problems: list[str] = []
        try:
            got = await fetch(url.port, url.path, tls=tls)  # type: ignore[arg-type]
        except OSError as exc:
            if rec["status"] is not None:
                problems.append(f"no answer ({exc}), expected {rec['status']}")
            return [f"data plane {rec['name']}: {p}" for p in problems]
        if rec["status"] is None:
            problems.append(f"expected the connection to be refused, got {got.status}")
            return [f"data plane {rec['name']}: {p}" for p in problems]
        names = [h for h, _ in got.headers]
        want = {k: self.remap(v) for k, v in rec["headers"].items() if k != "Date"}
        if got.status != rec["status"]:
            problems.append(f"status {got.status} != {rec['status']}")
        if names != list(rec["headers"]):
            problems.append(f"header names {names} != {list(rec['headers'])}")
        for header, value in want.items():
            if dict(got.headers).get(header) != value:
                problems.append(f"{header}: {dict(got.headers).get(header)!r} != {value!r}")
        if got.body != rec["body"].encode("utf-8"):
            problems.append(f"body {got.body[:100]!r} != {rec['body'][:100]!r}")
        return [f"data plane {rec['name']}: {p}" for p in problems]


@pytest.mark.skipif(not TRANSCRIPT.exists(), reason=f"fixtures not found at {FIXTURES}")
async def test_replay_recorded_unit_transcripts(tmp_path: Path, capsys) -> None:
    replay = Replay(_load(), tmp_path)
    served = [json.loads(line) for line in DATA_PLANE.read_text().splitlines() if line.strip()]
    unplaced = {r["name"] for r in served} - set(DATA_PLANE_AFTER) - set(DATA_PLANE_SKIPPED)
    assert not unplaced, f"data-plane records without a position: {unplaced}"
    data_after: dict[int, list[dict]] = {}
    for rec in served:
        if rec["name"] in DATA_PLANE_AFTER:
            data_after.setdefault(DATA_PLANE_AFTER[rec["name"]], []).append(rec)
    plane = {"compared": 0, "matched": 0}
    state_h1 = tmp_path / "h1-state"
    counts = {"compared": 0, "matched": 0, "skipped": 0}
    by_api = {"config": 0, "status": 0, "other": 0}
    mismatches: list[str] = []
    skipped: list[str] = []

    with trio.fail_after(180):
        async with trio.open_nursery() as nursery:
            instances: dict[str, tuple[UnitEmulator, trio.CancelScope, trio.Event]] = {}

            async def start(name: str, control: str, **kwargs) -> None:
                # The recorded build was configured without --njs (unit-version.json).
                emulator = UnitEmulator(control, modules=RECORDED_MODULES, njs=False, **kwargs)
                scope = trio.CancelScope()
                done = trio.Event()

                async def run(task_status=trio.TASK_STATUS_IGNORED) -> None:
                    try:
                        with scope:
                            await emulator.serve(task_status=task_status)
                    finally:
                        done.set()

                await nursery.start(run)
                instances[name] = (emulator, scope, done)

            await start("h1", f"unix:{tmp_path}/h1.sock", state_dir=state_h1)
            await start("h2", f"unix:{tmp_path}/h2.sock")
            await start("h3", "127.0.0.1:0")

            for rec in replay.records:
                name = rec["name"]
                if name in SKIPPED:
                    counts["skipped"] += 1
                    skipped.append(f"{rec['seq']} {name}: {SKIPPED[name]}")
                    continue
                if name == "after_restart_get_config":
                    # "unitd stopped (SIGTERM) and started again with the same statedir"
                    _, scope, done = instances["h1"]
                    scope.cancel()
                    await done.wait()
                    await start("h1", f"unix:{tmp_path}/h1.sock", state_dir=state_h1)
                emulator = instances[rec["instance"]][0]
                data, half_close = replay.request_bytes(rec)
                got = await exchange(emulator.control_address, data, half_close=half_close)
                problems = replay.compare(rec, got)
                counts["compared"] += 1
                path = rec["path"]
                api = (
                    "config"
                    if path.startswith("/config")
                    else ("status" if path.startswith("/status") else "other")
                )
                by_api[api] += 1
                if problems:
                    mismatches.extend(problems)
                else:
                    counts["matched"] += 1
                for data in data_after.get(rec["seq"], []):
                    problems = await replay.compare_data_plane(data)
                    plane["compared"] += 1
                    plane["matched"] += not problems
                    mismatches.extend(problems)
            nursery.cancel_scope.cancel()

    with capsys.disabled():
        print(
            f"\ncontract: compared={counts['compared']} matched={counts['matched']} "
            f"skipped={counts['skipped']} (compared /config={by_api['config']}, "
            f"/status={by_api['status']}, other={by_api['other']}; "
            f"synthesized requests={len(SYNTHESIZED)})"
        )
        for line in skipped:
            print(f"  skipped {line}")
        print(
            f"contract data plane: compared={plane['compared']} matched={plane['matched']} "
            f"skipped={len(DATA_PLANE_SKIPPED)}"
        )
        for name, reason in DATA_PLANE_SKIPPED.items():
            print(f"  skipped {name}: {reason}")
    assert not mismatches, "\n".join(mismatches)
    assert by_api["config"] + by_api["status"] >= 70
    assert plane["compared"] == len(DATA_PLANE_AFTER)
