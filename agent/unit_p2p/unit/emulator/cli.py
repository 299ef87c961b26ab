"""``unit-p2p unit-emulator``: run the NGINX Unit control API emulator (tests and demos only).

``unit_p2p.cli`` adds the subcommand with :func:`configure_parser` and calls :func:`run`.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
from pathlib import Path

import trio

from unit_p2p.errors import EmulatorError

# The emulator itself (server, state, certificates -> cryptography.x509) is imported inside the
# functions that run it: ``unit-p2p`` builds this subcommand's parser for every command,
# including the agent daemon, which must not pay for it.

__all__ = ["configure_parser", "run"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Emulate NGINX Unit 1.35's control API (for tests and demos; listeners serve TLS "
        "and return actions only). "
        "Answers like Unit: validation, atomic rejection, exact error bodies, lenient JSON."
    )
    parser.add_argument(
        "--control",
        metavar="ADDR",
        help="where to listen: unix:/path.sock, 127.0.0.1:PORT or http://127.0.0.1:PORT",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="keep the configuration and certificates in DIR (reloaded at start); "
        "default: in memory only",
    )
    parser.add_argument(
        "--admin",
        metavar="unix:PATH",
        help="also serve the fault-injection endpoints (GET /state, POST /fail-next-puts, "
        "/stop-listening, /start-listening) on this socket",
    )
    parser.add_argument(
        "--no-bind-listeners",
        action="store_true",
        help="do not bind or serve listener ports (lets several emulators on one host share "
        "a configuration; a taken port then no longer fails with 500)",
    )
    parser.add_argument(
        "--bind-all-addresses",
        action="store_true",
        help="bind and serve every TCP listener, wildcard (*:PORT) and non-loopback ones too "
        "(for containers); by default only loopback listeners are bound",
    )
    parser.add_argument(
        "--whole-answers",
        action="store_true",
        help="always send whole answers on a unix control socket; by default an answer larger "
        "than the socket's send buffer is cut short and the connection closed, as Unit 1.35 does",
    )
    parser.add_argument(
        "--no-njs",
        action="store_true",
        help="emulate a Unit built without njs: no /js_modules, settings.js_module unchecked",
    )
    parser.add_argument(
        "--self-check",
        action="store_true",
        help="start on a temporary socket, run a few requests against it, print OK or FAIL",
    )


async def _serve(args: argparse.Namespace) -> None:
    from unit_p2p.unit.emulator.server import UnitEmulator

    emulator = UnitEmulator(
        args.control,
        state_dir=args.state_dir,
        admin=args.admin,
        bind_listeners=not args.no_bind_listeners,
        all_addresses=args.bind_all_addresses,
        cut_unix_answers=not args.whole_answers,
        njs=not args.no_njs,
    )
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            address = await nursery.start(emulator.serve)
            admin = f", admin on {emulator.admin_address}" if emulator.admin_address else ""
            print(f"unit-emulator listening on {address}{admin}", file=sys.stderr, flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


async def _self_check() -> list[str]:
    """Problems found (empty when everything answered like Unit)."""
    from unit_p2p.unit.emulator.rawclient import request
    from unit_p2p.unit.emulator.server import UnitEmulator

    problems: list[str] = []

    def expect(what: str, got: object, want: object) -> None:
        if got != want:
            problems.append(f"{what}: got {got!r}, expected {want!r}")

    with tempfile.TemporaryDirectory(prefix="unit-emulator-") as tmp:
        emulator = UnitEmulator(f"unix:{tmp}/control.sock", state_dir=Path(tmp) / "state")
        async with trio.open_nursery() as nursery:
            address = await nursery.start(emulator.serve)
            with trio.fail_after(10):
                fresh = await request(address, "GET", "/config")
                expect("GET /config status", fresh.status, 200)
                expect(
                    "GET /config body",
                    fresh.body,
                    b'{\r\n\t"listeners": {},\r\n\t"routes": [],\r\n\t"applications": {}\r\n}\r\n',
                )
                good = b'{"listeners": {"*:8080": {"pass": "routes"}}, "routes": []}'
                put = await request(address, "PUT", "/config", good)
                expect("PUT valid config", put.status, 200)
                bad = b'{"listeners": {"*:8081": {"pass": "routes/nope"}}}'
                rejected = await request(address, "PUT", "/config", bad)
                expect("PUT invalid config", rejected.status, 400)
                expect(
                    "rejection detail",
                    json.loads(rejected.body).get("detail"),
                    'Request "pass" points to invalid location "routes/nope".',
                )
                after = await request(address, "GET", "/config/listeners")
                expect(
                    "config kept after rejection",
                    json.loads(after.body),
                    {"*:8080": {"pass": "routes"}},
                )
                expect("Server header", after.headers.get("Server"), "Unit/1.35.0")
                status = await request(address, "GET", "/status")
                expect("GET /status", status.status, 200)
            nursery.cancel_scope.cancel()
    return problems


def _leaf(exc: BaseException, types: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of ``types`` in ``exc`` (trio wraps failures in exception groups)."""
    if isinstance(exc, types):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _leaf(inner, types)
            if found is not None:
                return found
    return None


def run(args: argparse.Namespace) -> int:
    """Run until SIGTERM/Ctrl-C (exit 0), or the self-check (exit 0 OK, 1 FAIL); 2 on bad use."""
    if args.self_check:
        expected = (EmulatorError, OSError, trio.TooSlowError)
        try:
            problems = trio.run(_self_check)
        except (*expected, BaseExceptionGroup) as exc:
            failure = _leaf(exc, expected)
            if failure is None:
                raise
            problems = [f"{type(failure).__name__}: {failure}"]
        if problems:
            print("unit-emulator self-check: FAIL", file=sys.stderr)
            for problem in problems:
                print(f"  {problem}", file=sys.stderr)
            return 1
        print("unit-emulator self-check: OK")
        return 0
    if not args.control:
        print("unit-emulator: --control is required (e.g. unix:/tmp/control.sock)", file=sys.stderr)
        return 2
    try:
        trio.run(_serve, args)
    except (EmulatorError, BaseExceptionGroup) as exc:
        failure = _leaf(exc, (EmulatorError,))
        if failure is None:
            raise
        print(f"unit-emulator: {failure}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="unit-emulator")
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
