"""The ``unit-p2p`` command line.

    unit-p2p agent         run the agent (every setting is also a flag; --print-config shows them)
    unit-p2p publish       publish this host's Unit config to the mesh (optionally wait for all)
    unit-p2p status        this agent's head, Unit, peers and counters at a glance
    unit-p2p peers         the peers this agent knows
    unit-p2p id            print (or create) an identity's peer ID
    unit-p2p unit-emulator run the NGINX Unit 1.35 control-API emulator (tests and demos)
    unit-p2p demo          a local demo mesh on loopback, with emulated Units

Exit codes: 0 ok, 1 failed (e.g. not converged), 2 bad usage or settings, 3 agent unreachable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from unit_p2p import __version__
from unit_p2p.api.client import AgentUnreachable
from unit_p2p.errors import ApiError, UnitP2PError
from unit_p2p.settings import DEFAULT_API

EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


def _api_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api", default=os.environ.get("UNIT_P2P_API", DEFAULT_API),
                   help="the agent's API: unix:/path or http://127.0.0.1:PORT "
                        "(default: $UNIT_P2P_API or %(default)s)")
    p.add_argument("--token-file", type=Path, default=os.environ.get("UNIT_P2P_API_TOKEN_FILE"),
                   help="bearer token file, for an http:// API address")
    p.add_argument("--json", action="store_true", help="print the raw JSON answer")


def build_parser() -> argparse.ArgumentParser:
    from unit_p2p.settings import add_agent_arguments
    from unit_p2p.unit.emulator import cli as emulator_cli

    parser = argparse.ArgumentParser(
        prog="unit-p2p",
        description="A peer-to-peer control plane for NGINX Unit: every host's Unit converges "
                    "on one config, with no central server.",
        epilog="Run 'unit-p2p COMMAND --help' for a command's options.")
    parser.add_argument("--version", action="version", version=f"unit-p2p {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("agent", help="run the agent daemon",
                       description="Run the agent: join the mesh, keep the local Unit on the "
                                   "mesh's config, serve the local API. Settings come from "
                                   "--config FILE, then UNIT_P2P_* variables, then flags.")
    add_agent_arguments(p)

    p = sub.add_parser("publish", help="publish this host's Unit config to the mesh",
                       description="Publish the local Unit's config (or --config-file, applied "
                                   "locally first) as a new mesh revision.")
    _api_args(p)
    p.add_argument("--config-file", type=Path, help="JSON config to apply locally, then publish")
    p.add_argument("--wait", action="store_true", help="wait until every peer applied it")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
    p.add_argument("--min-peers", type=int, help="with --wait: enough when N peers applied")
    p.add_argument("--dry-run", action="store_true", help="say whether it would change anything")

    p = sub.add_parser("status", help="show this agent's state",
                       description="Head revision, local Unit, last error, peers and counters.")
    _api_args(p)

    p = sub.add_parser("peers", help="list the peers this agent knows")
    _api_args(p)

    p = sub.add_parser("id", help="print the peer ID of an identity key",
                       description="Print the libp2p peer ID of an Ed25519 identity key file.")
    p.add_argument("--key", type=Path, required=True, help="identity key file")
    p.add_argument("--create", action="store_true", help="create the key (mode 0600) if missing")
    p.add_argument("--rotate", action="store_true",
                   help="replace the key, keeping the old one as FILE.old; prints OLD NEW "
                        "(docs/settings.md: rotating without downtime)")
    p.add_argument("--new-key", type=Path, help="with --rotate: swap in this prepared key")

    p = sub.add_parser("unit-emulator", help="run the NGINX Unit control-API emulator",
                       description="An emulator of NGINX Unit 1.35's control API for tests and "
                                   "demos. It is not a web server: listeners are not served.")
    emulator_cli.configure_parser(p)

    p = sub.add_parser("demo", help="run a local demo mesh on loopback",
                       description="Start N agents with N emulated Units on loopback, change the "
                                   "config on one node, publish, and show every node converge. "
                                   "The last line printed is a JSON summary.")
    p.add_argument("--nodes", type=int, default=3, help="number of agents (default 3)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to converge (default 60)")
    p.add_argument("--topology", choices=("mesh", "star"), default="mesh",
                   help="mesh: agents bootstrap from two others; star: all from node 0")
    p.add_argument("--keep-dir", type=Path, help="keep state and logs in this directory")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        return 130
    except AgentUnreachable as exc:
        print(f"unit-p2p: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ApiError as exc:
        print(f"unit-p2p: agent answered {exc.status} {exc.error}: {exc.detail}", file=sys.stderr)
        return EXIT_FAILED
    except UnitP2PError as exc:
        print(f"unit-p2p: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "agent":
        return _cmd_agent(args)
    if args.command == "id":
        from unit_p2p.identity import id_command, rotate_command

        if args.rotate:
            return rotate_command(args.key, args.new_key)
        return id_command(args.key, args.create)
    if args.command == "unit-emulator":
        from unit_p2p.unit.emulator import cli as emulator_cli

        return emulator_cli.run(args)
    if args.command == "demo":
        from unit_p2p.demo import run_demo

        return run_demo(args.nodes, timeout=args.timeout, topology=args.topology,
                        keep_dir=args.keep_dir)
    return _cmd_client(args)


def _cmd_agent(args: argparse.Namespace) -> int:
    from unit_p2p import lean_libp2p

    lean_libp2p.install()  # before anything imports libp2p: the daemon loads only what it runs
    import trio

    from unit_p2p.agent import run_agent
    from unit_p2p.errors import SettingsError
    from unit_p2p.logsetup import configure_logging
    from unit_p2p.settings import settings_from_args, settings_to_yaml

    try:
        settings = settings_from_args(args)
    except SettingsError as exc:
        print(f"unit-p2p agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.print_config:
        print(settings_to_yaml(settings), end="")
        return 0
    configure_logging(settings.log_level, settings.log_format)
    try:
        trio.run(run_agent, settings)
    except (UnitP2PError, BaseExceptionGroup) as exc:
        # Start-up failures (port in use, bad key, socket taken) are one clear line, exit 2;
        # trio nurseries wrap them in exception groups, anything else is a real crash.
        named = named_error(exc)
        if named is None:
            raise
        print(f"unit-p2p agent: {named}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def named_error(exc: BaseException) -> UnitP2PError | None:
    """The first of our own errors inside ``exc`` (itself, or a leaf of an exception group)."""
    if isinstance(exc, UnitP2PError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = named_error(inner)
            if found is not None:
                return found
    return None


def _client(args: argparse.Namespace):
    from unit_p2p.api.client import ApiClient

    token = args.token_file.read_text().strip() if args.token_file else None
    return ApiClient(args.api, token=token)


def _cmd_client(args: argparse.Namespace) -> int:
    with _client(args) as api:
        if args.command == "status":
            answer = api.status()
            print(json.dumps(answer, indent=2) if args.json else _format_status(answer))
            return 0
        if args.command == "peers":
            answer = api.peers()
            print(json.dumps(answer, indent=2) if args.json else _format_peers(answer))
            return 0
        return _cmd_publish(api, args)


def _cmd_publish(api, args: argparse.Namespace) -> int:
    config = None
    if args.config_file:
        try:
            config = json.loads(args.config_file.read_text())
        except (OSError, ValueError) as exc:
            print(f"unit-p2p publish: {args.config_file}: {exc}", file=sys.stderr)
            return EXIT_USAGE
    require_all = args.min_peers is None
    if args.wait and not args.json and not args.dry_run:
        # Publish, then follow the revision in one-second waits so the user sees progress.
        result = api.publish(config=config, wait=False)
        print(f"published {result['revision']} (changed={str(result['changed']).lower()})",
              file=sys.stderr)
        deadline = time.monotonic() + args.timeout
        while True:
            result = api.wait(result["revision"], timeout=1.0, min_peers=args.min_peers,
                              require_all=require_all)
            peers = result["peers"]
            print(f"\r  applied {len(peers['applied'])}  failed {len(peers['failed'])}  "
                  f"pending {len(peers['pending'])}", end="", file=sys.stderr, flush=True)
            if result["converged"] or peers["failed"] or time.monotonic() > deadline:
                print(file=sys.stderr)
                break
    else:
        result = api.publish(config=config, wait=args.wait, timeout=args.timeout,
                             dry_run=args.dry_run, min_peers=args.min_peers,
                             require_all=require_all)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(_format_publish(result, args.dry_run))
    if args.dry_run or not args.wait:
        return 0
    return 0 if result["converged"] else EXIT_FAILED


def _short(peer_id: str | None) -> str:
    return f"…{peer_id[-10:]}" if peer_id else "-"


def _format_publish(r: dict, dry_run: bool) -> str:
    if dry_run:
        return f"would change: {str(r['changed']).lower()}  digest {r['digest']}"
    lines = [f"revision {r['revision']}  digest {r['digest']}  changed "
             f"{str(r['changed']).lower()}"]
    p = r["peers"]
    lines.append(f"applied {len(p['applied'])}, failed {len(p['failed'])}, "
                 f"pending {len(p['pending'])}")
    lines += [f"  failed  {peer}: {why}" for peer, why in p["failed"].items()]
    lines += [f"  pending {peer}" for peer in p["pending"]]
    return "\n".join(lines)


def _format_status(s: dict) -> str:
    head = s.get("head") or {}
    local = s.get("local") or {}
    err = s.get("last_error")
    peers = s.get("peers") or {}
    counters = s.get("counters") or {}
    rejected = ", ".join(f"{k}={v}" for k, v in sorted(counters.get("rejected", {}).items()))
    lines = [
        f"peer      {s['peer_id']}  (mesh {s['mesh']}, unit-p2p {s.get('version', '?')})",
        f"head      {head.get('revision', 'none')}  {head.get('digest', '')}",
        f"unit      {local.get('unit')}  in_sync={str(local.get('in_sync')).lower()}"
        + (f"  ({local['unit_error']})" if local.get("unit_error") else ""),
        f"peers     connected {peers.get('connected', 0)}, known {peers.get('known', 0)}",
        f"counters  applied {counters.get('applied', 0)}, failed "
        f"{counters.get('apply_failed', 0)}, pulls served {counters.get('pulls_served', 0)}"
        + (f", rejected: {rejected}" if rejected else ""),
    ]
    if err:
        lines.append(f"last err  {err.get('revision')}: {err.get('reason')}: {err.get('detail')}")
    return "\n".join(lines)


def _format_peers(answer: dict) -> str:
    rows = ["PEER                                                    CONN  HEAD        REPORT"]
    for p in answer.get("peers", []):
        head = (p.get("head") or {}).get("revision", "-")
        rep = p.get("report") or {}
        report = f"{rep.get('status', '-')}" + (f" ({rep['reason']})" if rep.get("reason") else "")
        rows.append(f"{p['peer_id']:<55} {'yes' if p['connected'] else 'no ':<5} "
                    f"{head.split('@')[0]:<11} {report}")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
