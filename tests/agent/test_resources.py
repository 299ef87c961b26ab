"""Real agent processes carry certificate bundles and JS modules with a revision.

Each agent is a real process with its own emulated Unit (in this test's trio loop, so each
Unit's state is checked directly: what it holds, at every step of a rotation).
"""

from __future__ import annotations

import json
import time

import pytest
import trio

from tests.agent.harness import Fleet, running_agent, running_fleet
from tests.tlsbundle import bundle
from unit_p2p.errors import ApiError
from unit_p2p.identity import load_or_create_identity, peer_id_of
from unit_p2p.sync.resources import certificate_refs, unit_certificate_name
from unit_p2p.sync.revision import digest_of_bytes

pytestmark = pytest.mark.slow

JS = "function hello(r) { return 'hello'; }\nexport default { hello };\n"


def tls_config(n: int = 0) -> dict:
    # "*:PORT": the emulators, all in this process, bind loopback listeners only, so a wildcard
    # one is validated and kept without three Units fighting over one port
    return {"settings": {"js_module": "auth"},
            "listeners": {"*:8443": {"pass": "routes", "tls": {"certificate": "site"}}},
            "routes": [{"match": {"uri": f"/v{n}"}, "action": {"return": 200}}],
            "applications": {}}


def unit_name(pem: bytes) -> str:
    return unit_certificate_name("site", digest_of_bytes(pem))



def secrets_of(key_pem: bytes) -> list[bytes]:
    """What would give a private key away: each base64 line of its PEM body."""
    return [line for line in key_pem.splitlines() if line and not line.startswith(b"-----")]


async def test_bundles_and_modules_converge_rotate_and_never_leak(tmp_path):
    first, first_key = bundle("www.example.com")
    second, second_key = bundle("www.example.com")
    answers: list[dict] = []
    async with running_fleet(tmp_path, 3, extra_args=["--no-mdns"]) as f:
        # --- converge: each Unit holds the bundle (content-derived name) and the module ---
        with trio.fail_after(90):
            result = await f[0].call("publish", config=tls_config(1),
                                     certificates={"site": first.decode()},
                                     js_modules={"auth": JS}, wait=True, timeout=60,
                                     http_timeout=90)
        answers.append(result)
        assert result["converged"], result
        assert [c["name"] for c in result["certificates"]] == ["site"]
        for a in f:
            assert a.emulator.certificates == {unit_name(first): first}
            assert a.emulator.js_modules == {"auth": JS}
            assert a.emulator.config["listeners"]["*:8443"]["tls"]["certificate"] == \
                unit_name(first)

        # --- rotate under the same NAME, from another host; every Unit checked all along ---
        violations: list[str] = []
        both_at_once: set[int] = set()

        async def watch_units():
            while True:
                for a in f:
                    held = a.emulator.certificates
                    for name in certificate_refs(a.emulator.config):
                        if held.get(name) not in (first, second):
                            violations.append(f"agent {a.index}: config names {name}, "
                                              f"Unit holds {sorted(held)}")
                    if unit_name(first) in held and unit_name(second) in held:
                        both_at_once.add(a.index)
                await trio.sleep(0.002)

        async with trio.open_nursery() as watchers:
            watchers.start_soon(watch_units)
            with trio.fail_after(90):
                rotated = await f[1].call("publish", config=tls_config(1),
                                          certificates={"site": second.decode()}, wait=True,
                                          timeout=60, http_timeout=90)
                answers.append(rotated)
                assert rotated["converged"], rotated
                await f.wait_converged(rotated["digest"])
            watchers.cancel_scope.cancel()
        assert not violations, violations[:5]
        assert both_at_once == {0, 1, 2}  # uploaded, switched, then the old one deleted
        for a in f:
            assert a.emulator.certificates == {unit_name(second): second}
            assert a.emulator.config["listeners"]["*:8443"]["tls"]["certificate"] == \
                unit_name(second)

        # --- a config-only change keeps the head's bundle without sending it again ---
        with trio.fail_after(90):
            third = await f[2].call("publish", config=tls_config(3), wait=True, timeout=60,
                                    http_timeout=90)
        answers.append(third)
        assert third["converged"] and [c["fingerprint"] for c in third["certificates"]] == \
            [c["fingerprint"] for c in rotated["certificates"]]

        # --- refused at publish: expired, mismatched, or a config naming a missing bundle ---
        expired, _ = bundle(days=-2)
        mismatched, _ = bundle(wrong_key=True)
        for certificates, error, detail in (
                ({"site": expired.decode()}, "bad_certificate", "certificate site: the leaf "
                 "certificate expired"),
                ({"site": mismatched.decode()}, "bad_certificate", "certificate site: the "
                 "private key does not match"),
                ({"other": second.decode()}, None, None)):
            config = tls_config(4)
            if error is None:  # names a bundle neither given nor in the head
                config["listeners"]["*:8443"]["tls"]["certificate"] = ["site", "nope"]
                error, detail = "missing_certificate", "certificate nope"
            with trio.fail_after(30), pytest.raises(ApiError) as info:
                await f[0].call("publish", config=config, certificates=certificates,
                                http_timeout=30)
            assert info.value.error == error and detail in info.value.detail
            answers.append({"error": info.value.error, "detail": info.value.detail})
        for a in f:
            assert a.emulator.certificates == {unit_name(second): second}

        # --- no private key anywhere an operator or a peer could read it ---
        with trio.fail_after(60):
            for a in f:
                answers.append(await a.call("status"))
                answers.append(await a.call("revisions"))
                for spec in ("head", "previous"):
                    answers.append(await a.call("revision", spec))
                answers.append({"metrics": await a.call("metrics")})
        expiry = [line for line in answers[-1]["metrics"].splitlines()
                  if line.startswith('unit_p2p_certificate_expiry_seconds{name="site"}')]
        assert len(expiry) == 1 and float(expiry[0].split()[-1]) > time.time()
        seen = json.dumps(answers).encode()
        for a in f:
            seen += a.log.read_bytes()
            state = a.dir / "state"
            for path in state.rglob("*"):
                if path.is_file() and "secrets" not in path.parts:
                    seen += path.read_bytes()
        assert b"PRIVATE KEY" not in seen
        for key in (first_key, second_key):
            for line in secrets_of(key):
                assert line not in seen
        # the bundles are kept private on disk: 0700 directory, 0600 files
        secrets = f[2].dir / "state" / "secrets"
        assert secrets.stat().st_mode & 0o777 == 0o700
        assert {p.stat().st_mode & 0o777 for p in secrets.iterdir()} == {0o600}


async def test_a_bundle_served_tampered_is_refused_then_taken_intact(tmp_path):
    pem, _ = bundle()
    key_path = tmp_path / "origin.key"
    origin_id = peer_id_of(load_or_create_identity(key_path, create=True))
    async with trio.open_nursery() as nursery:
        f = Fleet(tmp_path / "fleet", nursery, 2)
        ids = [a.peer_id for a in f]
        async with running_agent(tmp_path, mesh=f[0].mesh, key=key_path, trust="allowlist",
                                 trusted_peers=tuple(ids)) as (origin, _):
            assert origin.peer_id == origin_id
            for a in f:
                a.trusted.append(origin_id)
                a.bootstrap = [origin.listen_addrs[0]]
                a.extra_args = ["--no-mdns"]
            fetcher = origin.reconciler.fetcher
            intact = fetcher._held
            digest = digest_of_bytes(pem)

            def tampered(wanted):
                found = intact(wanted)
                if wanted == digest and found is not None:
                    return found[0].replace(b"MI", b"MJ", 1), found[1]
                return found

            fetcher._held = tampered
            try:
                with f.log_tails_on_failure():
                    with trio.fail_after(60):
                        await f.start()
                    with trio.fail_after(60):
                        result = await origin.publish(tls_config(), certificates={
                            "site": pem.decode()}, js_modules={"auth": JS})
                        for a in f:
                            while (await a.call("status"))["counters"]["rejected"].get(  # noqa: ASYNC110 - another process
                                    "digest_mismatch", 0) < 1:
                                await trio.sleep(0.1)
                    for a in f:
                        assert a.emulator.certificates == {} and await a.head_digest() is None
                    fetcher._held = intact  # the next try gets it intact
                    with trio.fail_after(90):
                        await f.wait_converged(result.digest)
                    for a in f:
                        assert a.emulator.certificates == {unit_name(pem): pem}
            finally:
                f.stop()
        nursery.cancel_scope.cancel()


async def test_the_command_line_publishes_shows_and_diffs_bundles_by_their_public_parts(
        tmp_path, capsys):
    from unit_p2p import cli

    first, first_key = bundle("cli.example.com")
    second, second_key = bundle("cli.example.com")
    (tmp_path / "tls.json").write_text(json.dumps(tls_config(1)))
    (tmp_path / "auth.js").write_text(JS)
    for name, pem in (("one.pem", first), ("two.pem", second)):
        (tmp_path / name).write_bytes(pem)
    async with running_agent(tmp_path) as (agent, emulator):
        api = agent.settings.api

        def run(*argv: str) -> str:
            assert cli.main([*argv, "--api", api]) == 0
            return capsys.readouterr().out

        with trio.fail_after(60):
            out = await trio.to_thread.run_sync(lambda: run(
                "publish", "--config-file", str(tmp_path / "tls.json"), "--certificate",
                f"site={tmp_path / 'one.pem'}", "--js-module", f"auth={tmp_path / 'auth.js'}"))
            assert "changed true" in out
            out = await trio.to_thread.run_sync(lambda: run(
                "publish", "--config-file", str(tmp_path / "tls.json"), "--certificate",
                f"site={tmp_path / 'two.pem'}"))
            status = await trio.to_thread.run_sync(lambda: run("status"))
            diff = await trio.to_thread.run_sync(lambda: run("diff", "head"))
            history = await trio.to_thread.run_sync(lambda: run("history"))
        assert emulator.certificates == {unit_name(second): second}
        assert "cert      site  expires" in status and "CN=cli.example.com" in status
        assert "certificate site: subject" in diff and "fingerprint sha256:" in diff
        assert "certificates ~1" in history
        shown = out + status + diff + history
        assert "PRIVATE KEY" not in shown
        for key in (first_key, second_key):
            assert not any(line.decode() in shown for line in secrets_of(key))
