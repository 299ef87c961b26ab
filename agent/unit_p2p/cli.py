"""The ``unit-p2p`` command line.

    unit-p2p agent         run the agent (every setting is also a flag; --print-config shows them)
    unit-p2p publish       publish this host's Unit config to the mesh (optionally wait for all)
    unit-p2p status        this agent's head, Unit, peers and counters at a glance
    unit-p2p peers         the peers this agent knows
    unit-p2p history       the revisions this host took, what each changed, how the fleet took it
    unit-p2p show REV      a kept revision's config
    unit-p2p diff REV [REV]  what a revision changed (or the difference between two)
    unit-p2p rollback [REV]  publish a kept revision's config again, as a new revision
    unit-p2p rollout status|resume|abort [REV]  a staged rollout (publish --stages), wave by wave
    unit-p2p id            print (or create) an identity's peer ID
    unit-p2p unit-emulator run the NGINX Unit 1.35 control-API emulator (tests and demos)
    unit-p2p demo          a local demo mesh on loopback, with emulated Units

Exit codes: 0 ok; 1 failed (the agent refused, a peer failed, not converged in time, or a publish
got no answer in time: its outcome is then unknown); 2 bad usage or settings; 3 agent unreachable.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import time
from pathlib import Path

from unit_p2p import __version__
from unit_p2p.api.client import AgentUnreachable
from unit_p2p.errors import ApiError, SettingsError, UnitP2PError
from unit_p2p.settings import DEFAULT_API

EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3
EXIT_CODES = ("exit codes: 0 ok; 1 failed (refused, a peer failed, not converged, or no answer in "
              "time to a publish); 2 bad usage or settings; 3 agent unreachable")
# seconds to connect and for an answer that involves no wait (status, peers); a publish adds its
# --timeout
CLIENT_TIMEOUT = 10.0
# the agent's own bound on a wait (docs/api.md)
MAX_WAIT_S = 3600.0


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text[:40]!r}") from None
    if not 0 < value <= MAX_WAIT_S:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be in (0, {MAX_WAIT_S:g}] seconds")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text[:40]!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _stages(text: str) -> list[str]:
    from unit_p2p.sync.plan import parse_stages

    stages = parse_stages(text)
    if not stages:
        raise argparse.ArgumentTypeError("expected stages like 1,10%,100%")
    return stages


def _resource_arg(text: str) -> tuple[str, str]:
    """``NAME=FILE`` -> (NAME, the file's text). The text is never quoted in an error."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE, got {text[:80]!r}")
    try:
        with open(path, "rb") as f:
            return name, f.read().decode("utf-8")
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise argparse.ArgumentTypeError(f"{path}: not UTF-8 text") from None


def _api_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api", default=os.environ.get("UNIT_P2P_API", DEFAULT_API),
                   help="the agent's API: unix:/path or http://127.0.0.1:PORT "
                        "(default: $UNIT_P2P_API or %(default)s)")
    p.add_argument("--token-file", type=Path, default=os.environ.get("UNIT_P2P_API_TOKEN_FILE"),
                   help="bearer token file, for an http:// API address "
                        "(default: $UNIT_P2P_API_TOKEN_FILE)")
    p.add_argument("--json", action="store_true", help="print the raw JSON answer")


REVISION_HELP = "COUNTER@PEER_ID, a bare COUNTER, head or previous"


def _publish_args(p: argparse.ArgumentParser, *, force: str) -> None:
    """The flags of a publish (a rollback is one)."""
    p.add_argument("--wait", action="store_true", help="wait until every peer applied it")
    p.add_argument("--timeout", type=_seconds, default=30.0,
                   help="seconds to wait for the agent's answer, which includes applying the "
                        "config to the local Unit and, with --wait, the peers (default 30, "
                        f"at most {MAX_WAIT_S:g})")
    p.add_argument("--min-peers", type=_count, help="with --wait: enough when N peers applied")
    p.add_argument("--dry-run", action="store_true", help="say whether it would change anything")
    p.add_argument("--force", action="store_true", help=force)


def build_parser() -> argparse.ArgumentParser:
    from unit_p2p.settings import add_agent_arguments
    from unit_p2p.unit.emulator import cli as emulator_cli

    parser = argparse.ArgumentParser(
        prog="unit-p2p",
        description="A peer-to-peer control plane for NGINX Unit: every host's Unit converges "
                    "on one config, with no central server.",
        epilog=f"Run 'unit-p2p COMMAND --help' for a command's options. {EXIT_CODES}.")
    parser.add_argument("--version", action="version", version=f"unit-p2p {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, **kwargs) -> argparse.ArgumentParser:
        p = sub.add_parser(name, **kwargs)
        p.set_defaults(command_parser=p)
        return p

    p = add("agent", help="run the agent daemon",
                       description="Run the agent: join the mesh, keep the local Unit on the "
                                   "mesh's config, serve the local API. Settings come from "
                                   "--config FILE, then UNIT_P2P_* variables, then flags.")
    add_agent_arguments(p)

    p = add("publish", help="publish this host's Unit config to the mesh",
                       description="Publish the local Unit's config (or --config-file, applied "
                                   "locally first) as a new mesh revision.",
                       epilog=EXIT_CODES + ".")
    _api_args(p)
    p.add_argument("--config-file", type=Path,
                   help="config to apply locally, then publish: one JSON object, strict JSON "
                        "(no comments, trailing commas or duplicate keys, which Unit itself "
                        "would accept or refuse differently)")
    p.add_argument("--certificate", action="append", default=[], metavar="NAME=FILE",
                   type=_resource_arg, help="a certificate bundle (PEM: the chain, leaf first, "
                   "and the leaf's private key) the config names NAME in "
                   "listeners.*.tls.certificate; checked here, kept in each agent's state dir "
                   "and uploaded to each Unit (repeatable)")
    p.add_argument("--js-module", action="append", default=[], metavar="NAME=FILE",
                   type=_resource_arg, help="a JS module the config imports as NAME "
                   "(settings.js_module); checked by this host's Unit first (repeatable)")
    _publish_args(p, force="publish even though the mesh has a newer revision or Unit holds an "
                           "older revision's config (refused otherwise, since it would roll "
                           "every host back), or the config is blank or removes more than "
                           "max_removed_share of the head's listeners, routes or applications")
    p.add_argument("--stages", type=_stages,
                   help="a staged rollout: cumulative wave sizes, host counts or shares of the "
                        "fleet, the last one 100%%, e.g. 1,10%%,100%% (this host is the first "
                        "of wave 1; docs/rollout.md)")
    p.add_argument("--max-failures", type=_count, default=0,
                   help="with --stages: halt the rollout when more hosts than this failed to "
                        "apply it or failed their health gate (default 0)")
    p.add_argument("--auto-revert", action="store_true",
                   help="with --stages: when the rollout halts, publish the previous config "
                        "again, so the hosts that took it go back")

    p = add("rollout", help="a staged rollout: status, resume, abort",
                       description="Where a staged rollout (publish --stages) stands, wave by "
                                   "wave; resume it from this host (an open rollout whose "
                                   "driver died continues at its wave, a halted one opens its "
                                   "next wave); or abort it.",
                       epilog=EXIT_CODES + ".")
    _api_args(p)
    p.add_argument("action", choices=("status", "resume", "abort"))
    p.add_argument("revision", nargs="?", help="COUNTER@PEER_ID or COUNTER (default: the "
                                               "latest rollout known here)")
    p.add_argument("--revert", action="store_true",
                   help="with abort: publish the previous config again")
    p.add_argument("--next", action="store_true",
                   help="with resume: open the next wave now, even though the current one has "
                        "not finished (a host of it is gone for good)")

    p = add("history", help="list the revisions this host knows, newest first",
                       description="The revisions this host published or followed (newest "
                                   "first, * is the head): when, digest, size, what each "
                                   "changed against the one before it here, and how the fleet "
                                   "took it as far as this host heard.",
                       epilog=EXIT_CODES + ".")
    _api_args(p)

    p = add("show", help="print a kept revision's config", epilog=EXIT_CODES + ".")
    _api_args(p)
    p.add_argument("revision", help=REVISION_HELP)

    p = add("diff", help="show what a revision changed, or the difference between two",
                    description="With one revision: what it changed against the revision before "
                                "it on this host. With two: from the first to the second. A "
                                "unified diff of the configs as indented JSON, keys sorted.",
                    epilog=EXIT_CODES + ".")
    _api_args(p)
    p.add_argument("revision", help=REVISION_HELP)
    p.add_argument("other", nargs="?", help="a second revision (the diff goes from REVISION "
                                            "to it)")

    p = add("rollback", help="publish a kept revision's config again, as a new revision",
                        description="Publish the config of REVISION (default: the revision "
                                    "before the head on this host) as a new revision, so every "
                                    "host moves forward to it, a host that was down too.",
                        epilog=EXIT_CODES + ".")
    _api_args(p)
    p.add_argument("revision", nargs="?", help=REVISION_HELP + " (default: previous)")
    _publish_args(p, force="roll back even when the config is blank or removes more than "
                           "max_removed_share of the head's listeners, routes or applications")

    p = add("status", help="show this agent's state",
                       description="Head revision, local Unit, last error, peers and counters.",
                       epilog=EXIT_CODES + ".")
    _api_args(p)

    p = add("peers", help="list the peers this agent knows", epilog=EXIT_CODES + ".")
    _api_args(p)

    p = add("id", help="print the peer ID of an identity key",
                       description="Print the libp2p peer ID of an Ed25519 identity key file.")
    p.add_argument("--key", type=Path, required=True, help="identity key file")
    p.add_argument("--create", action="store_true", help="create the key (mode 0600) if missing")
    p.add_argument("--rotate", action="store_true",
                   help="replace the key, keeping the old one as FILE.old; prints OLD NEW "
                        "(docs/settings.md: rotating without downtime)")
    p.add_argument("--new-key", type=Path, help="with --rotate: swap in this prepared key")

    p = add("unit-emulator", help="run the NGINX Unit control-API emulator",
                       description="An emulator of NGINX Unit 1.35's control API for tests and "
                                   "demos. It is not a web server: listeners are not served.")
    emulator_cli.configure_parser(p)

    p = add("demo", help="run a local demo mesh on loopback",
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
    args, extra = parser.parse_known_args(argv)
    if extra:  # the subcommand's usage, not the top level's, names the flags it does take
        args.command_parser.error(f"unrecognized arguments: {' '.join(extra)[:200]}")
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        return 130
    except AgentUnreachable as exc:
        if exc.kind == "timeout" and args.command == "publish":
            # the agent took the request: the publish may well complete after we stop waiting
            print(f"unit-p2p: {exc}; the publish may still complete: `unit-p2p status` shows "
                  "its outcome (a slow Unit can take several times unit_timeout)",
                  file=sys.stderr)
            return EXIT_FAILED
        print(f"unit-p2p: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ApiError as exc:
        detail = f": {exc.detail}" if exc.detail else ""
        hint = " (give the API's token with --token-file)" if exc.status == 401 else ""
        print(f"unit-p2p: agent answered {exc.status} {exc.error}{detail}{hint}", file=sys.stderr)
        return EXIT_FAILED
    except UnitP2PError as exc:
        print(f"unit-p2p: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "agent":
        return _cmd_agent(args)
    if args.command == "id":
        from unit_p2p.identity import id_command, rotate_command

        if args.new_key is not None and not args.rotate:
            raise SettingsError("--new-key only means something with --rotate",
                                source="command line")
        if args.rotate:
            return rotate_command(args.key, args.new_key)
        return id_command(args.key, args.create)
    if args.command == "unit-emulator":
        from unit_p2p.unit.emulator import cli as emulator_cli

        return emulator_cli.run(args)
    if args.command == "demo":
        from unit_p2p.demo import run_demo

        if args.keep_dir is not None and args.keep_dir.exists() and not args.keep_dir.is_dir():
            raise SettingsError(f"{args.keep_dir} exists and is not a directory",
                                source="command line", key="--keep-dir")

        return run_demo(args.nodes, timeout=args.timeout, topology=args.topology,
                        keep_dir=args.keep_dir)
    return _cmd_client(args)


def _cmd_agent(args: argparse.Namespace) -> int:
    from unit_p2p import lean_libp2p

    lean_libp2p.install()  # before anything imports libp2p: the daemon loads only what it runs
    import trio

    from unit_p2p.agent import run_agent
    from unit_p2p.logsetup import configure_logging
    from unit_p2p.settings import settings_from_args, settings_to_yaml

    try:
        settings = settings_from_args(args)
    except SettingsError as exc:
        if args.print_config:
            # still show the settings (a first look at the defaults), then why they cannot run;
            # a bad value fails this again, and `exc` below already says why
            with contextlib.suppress(SettingsError):
                print(settings_to_yaml(settings_from_args(args, cross_check=False)), end="")
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
    import ipaddress

    from unit_p2p.api.client import ApiClient
    from unit_p2p.api.token import read_token
    from unit_p2p.httpunix import parse_address

    try:
        address = parse_address(args.api)
    except ValueError as exc:
        raise SettingsError(str(exc)[:300], source="command line", key="--api") from None
    if address.host is not None and address.host != "localhost":
        try:
            loopback = ipaddress.ip_address(address.host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:  # the agent listens on loopback only; never send the token elsewhere
            raise SettingsError("the agent's API is on loopback: unix:/path, 127.0.0.1:PORT or "
                                "[::1]:PORT", source="command line", key="--api")
    token = read_token(args.token_file, private=False, key="--token-file") \
        if args.token_file else None
    return ApiClient(args.api, token=token, timeout=CLIENT_TIMEOUT)


def _cmd_client(args: argparse.Namespace) -> int:
    config = _read_config_file(args.config_file) if getattr(args, "config_file", None) else None
    with _client(args) as api:
        try:
            if args.command == "status":
                answer = api.status()
                print(json.dumps(answer, indent=2) if args.json else _format_status(answer))
                return 0
            if args.command == "peers":
                answer = api.peers()
                print(json.dumps(answer, indent=2) if args.json else _format_peers(answer))
                return 0
            if args.command in ("history", "show", "diff"):
                return _cmd_history(api, args)
            if args.command == "rollout":
                return _cmd_rollout(api, args)
            return _cmd_publish(api, args, config)
        except (KeyError, TypeError, AttributeError, IndexError) as exc:
            # an agent of another version, or not an agent at all
            shape = f"{type(exc).__name__}: {str(exc)[:80]}"
            raise ApiError(200, "bad_response",
                           f"the answer does not have the documented shape ({shape})") from None


def _read_config_file(path: Path) -> dict:
    from unit_p2p import jsonstrict

    try:
        with open(path, "rb") as f:
            config = jsonstrict.loads(f.read())
    except OSError as exc:
        raise SettingsError(f"cannot read it: {exc.strerror or exc}", source=str(path),
                            key="--config-file") from None
    except jsonstrict.StrictJSONError as exc:
        raise SettingsError(f"not strict JSON: {exc}", source=str(path),
                            key="--config-file") from None
    if not isinstance(config, dict):
        raise SettingsError("a Unit config is one JSON object ({...})", source=str(path),
                            key="--config-file")
    return config


def _cmd_publish(api, args: argparse.Namespace, config: dict | None) -> int:
    require_all = args.min_peers is None
    if getattr(args, "stages", None):
        # the agent waits for the rollout's end itself (halted, complete) with --wait
        result = api.publish(config=config, wait=args.wait, timeout=args.timeout,
                             certificates=dict(args.certificate),
                             js_modules=dict(args.js_module),
                             dry_run=args.dry_run, force=args.force, stages=args.stages,
                             max_failures=args.max_failures, auto_revert=args.auto_revert)
        print(json.dumps(result, indent=2) if args.json else _format_publish(result, args.dry_run))
        if "rollout" in result and not args.json:
            print(_format_rollout(result["rollout"]))
        if args.dry_run or not args.wait:
            return 0
        return 0 if (result.get("rollout") or {}).get("state") == "complete" else EXIT_FAILED
    if args.command == "rollback":
        send = functools.partial(api.rollback, args.revision)
    else:
        send = functools.partial(api.publish, config=config,
                                 certificates=dict(args.certificate),
                                 js_modules=dict(args.js_module))
    if args.wait and not args.json and not args.dry_run:
        # Publish, then follow the revision in one-second waits so the user sees progress.
        published = send(wait=False, timeout=args.timeout, force=args.force)
        result = published
        what = (f"rolled back to {result['rolled_back_to']} as"
                if "rolled_back_to" in result else "published")
        print(f"{what} {result['revision']} (changed={str(result['changed']).lower()})",
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
        # a wait only knows where the revision stands; whether the publish changed anything
        # is the publish's answer
        result["changed"] = published["changed"]
        if "rolled_back_to" in published:
            result["rolled_back_to"] = published["rolled_back_to"]
    else:
        result = send(wait=args.wait, timeout=args.timeout, dry_run=args.dry_run,
                      min_peers=args.min_peers, require_all=require_all, force=args.force)
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
    back = f"roll back to {r['rolled_back_to']}: " if "rolled_back_to" in r else ""
    if dry_run:
        return f"{back}would change: {str(r['changed']).lower()}  digest {r['digest']}"
    lines = [f"{back}revision {r['revision']}  digest {r['digest']}  changed "
             f"{str(r['changed']).lower()}"]
    p = r["peers"]
    lines.append(f"applied {len(p['applied'])}, failed {len(p['failed'])}, "
                 f"pending {len(p['pending'])}")
    lines += [f"  failed  {peer}: {why}" for peer, why in p["failed"].items()]
    lines += [f"  pending {peer}" for peer in p["pending"]]
    return "\n".join(lines)


def _cmd_rollout(api, args: argparse.Namespace) -> int:
    if args.action == "status":
        answer = api.rollout(args.revision)
    elif args.action == "resume":
        answer = api.rollout_resume(args.revision, next_wave=args.next)
    else:
        answer = api.rollout_abort(args.revision, revert=args.revert)
    print(json.dumps(answer, indent=2) if args.json else _format_rollout(answer))
    return 0


def _format_rollout(r: dict) -> str:
    waves = r.get("waves") or []
    lines = [f"rollout {r['revision']}  {r['state']}  wave {r['wave']} of {len(waves)}  "
             f"(moved by {_short(r.get('moved_by'))}, max_failures {r.get('max_failures')}, "
             f"auto_revert {str(r.get('auto_revert')).lower()})"]
    if r.get("reason"):
        lines.append(f"  reason: {r['reason']}")
    if r.get("reverted_by"):
        lines.append(f"  reverted by {r['reverted_by']}")
    for w in waves:
        lines.append(f"  wave {w['wave']}  {'open  ' if w['open'] else 'closed'}  "
                     f"{len(w['hosts'])} host(s): applied {len(w['applied'])}, failed "
                     f"{len(w['failed'])}, pending {len(w['pending'])}")
        lines += [f"    failed  {_short(p)}: {why}" for p, why in w["failed"].items()]
        if w["open"]:
            lines += [f"    pending {_short(p)}" for p in w["pending"]]
    return "\n".join(lines)


def _cmd_history(api, args: argparse.Namespace) -> int:
    if args.command == "history":
        answer = api.revisions()
        print(json.dumps(answer, indent=2) if args.json else _format_history(answer))
        return 0
    first = api.revision(args.revision)
    if args.command == "show":
        print(json.dumps(first if args.json else first["config"], indent=2))
        return 0
    if args.other is not None:
        old, new = first, api.revision(args.other)
    else:
        old, new = (api.revision(first["previous"]) if first["previous"] else None), first
    if args.json:
        print(json.dumps({"from": old, "to": new}, indent=2))
        return 0
    print(_format_diff(old, new), end="")
    return 0


def _format_diff(old: dict | None, new: dict) -> str:
    import difflib

    def lines(doc: dict | None) -> list[str]:
        if doc is None:
            return []
        out = json.dumps(doc["config"], indent=2, sort_keys=True).splitlines(keepends=True)
        # resources by their public description only (a bundle's key never leaves the agent)
        out += [f"certificate {c['name']}: subject {c['subject']}, issuer {c['issuer']}, "
                f"not after {c['not_after']}, fingerprint {c['fingerprint']}\n"
                for c in doc.get("certificates", [])]
        out += [f"js_module {m['name']}: {m['digest']} ({m['size']} bytes)\n"
                for m in doc.get("js_modules", [])]
        return out

    diff = "".join(difflib.unified_diff(
        lines(old), lines(new), fromfile=old["revision"] if old else "(nothing before it)",
        tofile=new["revision"]))
    if not diff:
        return f"{old['revision'] if old else '-'} and {new['revision']}: same config\n"
    return diff if diff.endswith("\n") else diff + "\n"


def _format_history(answer: dict) -> str:
    rows = ["  REVISION          ROLE       APPLIED (UTC)          SIZE  FLEET               "
            "CHANGES"]
    for i, r in enumerate(answer.get("revisions", [])):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["applied_at"])) \
            if r.get("applied_at") else "-"
        fleet = r.get("fleet")
        took = " ".join([f"{fleet['applied']} ok"] + [
            f"{fleet[k]} {k}" for k in ("failed", "pending") if fleet[k]]) if fleet else "-"
        summary = r.get("summary") or ("(document no longer kept)" if not r.get("kept")
                                       else "-")
        counter, _, origin = r["revision"].partition("@")
        rows.append(f"{'*' if i == 0 else ' '} {counter + '@' + _short(origin):<16}  "
                    f"{r['role']:<9}  {when:<19}  {r['size']:>6}  {took:<18}  {summary}")
    return "\n".join(rows)


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
    for cert in s.get("certificates") or []:
        lines.append(f"cert      {cert['name']}  expires {cert['not_after']}  {cert['subject']}"
                     f"  ({cert['fingerprint'][:19]}…)")
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
