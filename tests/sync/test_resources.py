"""Certificate bundles and JS modules travel with a revision (in-memory network, fake Units)."""

from __future__ import annotations

import json

import pytest
import trio

from tests.sync.fakes import FakeUnit
from tests.sync.test_reconciler import cluster, until
from tests.tlsbundle import bundle
from unit_p2p.errors import BadDocument, PublishRefused, RevisionRejected, UnitRejected
from unit_p2p.sync.resources import certificate_refs, unit_certificate_name
from unit_p2p.sync.revision import digest_of_bytes

JS = "function hello(r) { return 'hi'; }\nexport default { hello };\n"


def tls_config(n: int = 0, cert: str | list = "site", js: bool = True) -> dict:
    out = {"listeners": {"127.0.0.1:8443": {"pass": "routes", "tls": {"certificate": cert}}},
           "routes": [{"action": {"return": 200 + n}}], "applications": {}}
    if js:
        out["settings"] = {"js_module": "auth"}
    return out


def unit_name(pem: bytes, name: str = "site") -> str:
    return unit_certificate_name(name, digest_of_bytes(pem))


def holds(unit: FakeUnit, pem: bytes, name: str = "site") -> bool:
    listener = unit.config.get("listeners", {}).get("127.0.0.1:8443", {})
    return (listener.get("tls", {}).get("certificate") == unit_name(pem, name)
            and unit.certificates.get(unit_name(pem, name)) == pem)


async def test_a_tls_config_and_its_module_converge_and_every_unit_holds_them(tmp_path):
    pem, key = bundle()
    async with cluster(tmp_path) as (_, nodes):
        a = nodes[0]
        with trio.fail_after(15):
            result = await a.rec.publish(tls_config(), certificates={"site": pem.decode()},
                                         js_modules={"auth": JS}, wait=True, timeout=10)
        assert result.converged, result
        for node in nodes:
            assert holds(node.unit, pem) and node.unit.js_modules == {"auth": JS}
            assert node.rec.head.digest == result.digest
            status = node.rec.status()
            assert status["local"]["in_sync"] is True
            [cert] = status["certificates"]
            assert cert["name"] == "site" and "CN=www.example.com" in cert["subject"]
            assert set(cert) == {"name", "subject", "issuer", "not_before", "not_after",
                                 "fingerprint"}
            assert node.metrics.certificate_expiry.labels("site")._value.get() > 1.7e9
            [entry] = await node.rec.revisions.views()
            assert entry["certificates"] == status["certificates"]
        # each host pulled the bundle and the module once, and keeps them private
        for node in nodes[1:]:
            assert node.rec.store.load_blob(digest_of_bytes(pem)) == (pem, True)
        # the same publish again changes nothing; the head's bundle stays without resending it
        with trio.fail_after(15):
            again = await a.rec.publish(tls_config(), wait=True, timeout=10)
        assert not again.changed and again.digest == result.digest
        assert key not in json.dumps(result.to_json(with_diff=True)).encode()


async def test_rotation_under_the_same_name_never_leaves_a_host_without_its_bundle(tmp_path):
    old, _ = bundle()
    new, _ = bundle()
    steps = []

    def check(unit: FakeUnit) -> None:
        # at every change of every Unit: each bundle the config names is there, valid
        for name in certificate_refs(unit.config):
            assert unit.certificates[name] in (old, new), name
        steps.append(sorted(unit.certificates))

    async with cluster(tmp_path) as (_, nodes):
        a = nodes[0]
        for node in nodes:
            node.unit.on_change.append(check)
        with trio.fail_after(15):
            first = await a.rec.publish(tls_config(js=False),
                                        certificates={"site": old.decode()}, wait=True,
                                        timeout=10)
            second = await a.rec.publish(tls_config(js=False),
                                         certificates={"site": new.decode()}, wait=True,
                                         timeout=10)
        assert first.converged and second.converged
        for node in nodes:
            assert holds(node.unit, new)
            assert set(node.unit.certificates) == {unit_name(new)}  # the old one deleted
        # both bundles were held at once somewhere in each rotation: upload, switch, delete
        assert any(unit_name(old) in s and unit_name(new) in s for s in steps)


async def test_a_tampered_bundle_from_a_relaying_peer_is_refused(tmp_path):
    pem, _ = bundle()
    async with cluster(tmp_path) as (net, (a, b, c)):
        digest = digest_of_bytes(pem)
        held = b.rec.fetcher._held

        def tampered(wanted):
            found = held(wanted)
            if wanted == digest and found is not None:
                return found[0].replace(b"MI", b"MJ", 1), found[1]
            return found

        b.rec.fetcher._held = tampered
        net.cut.add(frozenset((a.peer_id, c.peer_id)))  # c can pull only from b
        with trio.fail_after(15):
            result = await a.rec.publish(tls_config(js=False),
                                         certificates={"site": pem.decode()}, wait=False)
            await until(lambda: c.rejected("digest_mismatch") >= 1, timeout=10)
            assert c.rec.head is None and c.unit.certificates == {}
            assert not c.rec.store.has_blob(digest)
            net.cut.clear()  # the origin serves it intact
            await until(lambda: c.rec.head is not None
                        and c.rec.head.revision == result.revision, timeout=10)
        assert holds(c.unit, pem)


async def test_bad_bundles_are_refused_at_publish_and_nothing_changes(tmp_path):
    expired, _ = bundle(days=-1)
    mismatched, _ = bundle(wrong_key=True)
    good, key = bundle()
    async with cluster(tmp_path, n=1) as (_, (a,)):
        cases = [
            ({"certificates": {"site": expired.decode()}}, BadDocument,
             "certificate site: the leaf certificate expired at"),
            ({"certificates": {"site": mismatched.decode()}}, BadDocument,
             "certificate site: the private key does not match"),
            ({"certificates": {"site": good.decode().split("-----BEGIN PRIVATE")[0]}},
             BadDocument, "certificate site: no private key"),
            ({"certificates": {"../x": good.decode()}}, BadDocument, "certificate name"),
            ({}, PublishRefused, "refers to certificate site, which this revision does not"),
            ({"certificates": {"site": good.decode()}}, PublishRefused,
             "refers to JS module auth"),
        ]
        for resources, error, message in cases:
            with trio.fail_after(10), pytest.raises(error, match=message) as info:
                await a.rec.publish(tls_config(), **resources)
            assert key.split(b"\n")[1].decode() not in str(info.value)
            assert a.rec.head is None and a.unit.puts == 0 and a.unit.certificates == {}


async def test_a_module_unit_refuses_fails_the_publish_before_any_peer_sees_it(tmp_path):
    pem, _ = bundle()
    async with cluster(tmp_path, n=1) as (_, (a,)):
        a.unit.reject_modules = "export"
        with trio.fail_after(10), pytest.raises(RevisionRejected,
                                                match="JS module auth: Unit refused it: "
                                                      "Compilation error"):
            await a.rec.publish(tls_config(), certificates={"site": pem.decode()},
                                js_modules={"auth": JS})
        assert a.rec.head is None and "routes" in a.unit.config
        assert a.unit.config["routes"] == [{"action": {"return": 200}}]


async def test_a_changed_module_is_swapped_and_a_refusal_puts_the_old_one_back(tmp_path):
    async with cluster(tmp_path, n=2) as (_, (a, b)):
        config = {**tls_config(js=True), "listeners": {"127.0.0.1:8080": {"pass": "routes"}}}
        with trio.fail_after(15):
            first = await a.rec.publish(config, js_modules={"auth": JS}, wait=True,
                                        timeout=10)
            assert first.converged
            v2 = JS.replace("hi", "hello")
            second = await a.rec.publish(config, js_modules={"auth": v2}, wait=True,
                                         timeout=10)
        assert second.converged
        assert a.unit.js_modules == b.unit.js_modules == {"auth": v2}
        assert b.unit.config["settings"] == {"js_module": "auth"}
        # b's Unit refuses the next one: b keeps the old module and the old config
        b.unit.reject_modules = "//3"
        with trio.fail_after(15):
            third = await a.rec.publish(config, js_modules={"auth": JS + "//3\n"},
                                        wait=True, timeout=10)
        assert "JS module auth: Unit refused it" in third.failed[b.peer_id]
        assert b.unit.js_modules == {"auth": v2} and b.unit.config["settings"] == {
            "js_module": "auth"}
        assert b.rec.status()["last_error"]["detail"].startswith("JS module auth")


async def test_a_reinstalled_unit_gets_bundles_and_modules_back(tmp_path):
    pem, _ = bundle()
    async with cluster(tmp_path, n=2) as (_, (a, b)):
        with trio.fail_after(15):
            result = await a.rec.publish(tls_config(), certificates={"site": pem.decode()},
                                         js_modules={"auth": JS}, wait=True, timeout=10)
            assert result.converged
            b.unit.config = {"listeners": {}, "routes": [], "applications": {}}
            b.unit.certificates, b.unit.js_modules = {}, {}
            await until(lambda: holds(b.unit, pem) and b.unit.js_modules == {"auth": JS},
                        timeout=10)


async def test_a_unit_refusing_a_bundle_keeps_the_old_config_and_names_it(tmp_path):
    pem, _ = bundle()
    async with cluster(tmp_path) as (_, (a, _b, c)):
        async def refuse(path, body):
            raise UnitRejected(400, "Invalid certificate.", method="PUT", path=path)

        c.unit.put_raw = refuse
        with trio.fail_after(15):
            result = await a.rec.publish(tls_config(js=False),
                                         certificates={"site": pem.decode()}, wait=True,
                                         timeout=10)
        assert "certificate site" in result.failed[c.peer_id]
        assert "Unit refused it: Invalid certificate." in result.failed[c.peer_id]
        assert c.unit.config["routes"] == [{"action": {"return": 200}}] and c.rec.head is None


async def test_bundles_go_only_to_the_peers_in_trusted_peers(tmp_path):
    pem, _ = bundle()
    async with cluster(tmp_path, n=2, extra_untrusted=1) as (_, (a, b, other)):
        # the rule the reconciler gives its fetcher: listed in trusted_peers, whatever the mode
        assert a.rec.fetcher.secrets_to(b.peer_id) and not a.rec.fetcher.secrets_to(
            other.peer_id)
        digest = digest_of_bytes(pem)
        # the counter below is about the one request made here: ``other`` must not ask too
        other.mesh.up = False
        with trio.fail_after(10):
            await a.rec.publish(tls_config(js=False), certificates={"site": pem.decode()})
            # b pulls the bundle (allowed): done before the rule changes under it
            await until(lambda: b.rec.head is not None)
            a.rec.fetcher.secrets_to = lambda peer: False
            assert await a.rec.fetcher.servable("12D3KooWanyone", digest) == "forbidden"
            assert a.rejected("secret_withheld") == 1
            a.rec.fetcher.secrets_to = lambda peer: True
            assert await a.rec.fetcher.servable("12D3KooWfriend", digest) == pem


async def test_history_says_a_rotation_changed_a_certificate(tmp_path):
    old, _ = bundle()
    new, _ = bundle()
    async with cluster(tmp_path, n=1) as (_, (a,)):
        with trio.fail_after(10):
            await a.rec.publish(tls_config(js=False), certificates={"site": old.decode()})
            await a.rec.publish(tls_config(js=False), certificates={"site": new.decode()})
            views = await a.rec.revisions.views()
        assert views[0]["summary"] == "certificates ~1"
        assert views[0]["certificates"][0]["fingerprint"] != \
            views[1]["certificates"][0]["fingerprint"]
        shown = await a.rec.revisions.show("head")
        assert shown["config"] == tls_config(js=False) and shown["certificates"]


async def test_publishing_unit_s_own_config_maps_bundle_names_back(tmp_path):
    old, _ = bundle()
    new, _ = bundle()
    async with cluster(tmp_path, n=2) as (_, (a, b)):
        with trio.fail_after(15):
            first = await a.rec.publish(tls_config(js=False),
                                        certificates={"site": old.decode()}, wait=True,
                                        timeout=10)
            # Unit holds site.<12 hex>: published again from Unit, it is the same revision
            again = await b.rec.publish()
            assert not again.changed and again.digest == first.digest
            assert b.rec.status()["local"]["in_sync"] is True
            # after a rotation, b's Unit is pointed by hand at the old bundle (uploaded by hand
            # again): no revision carries that one, so publishing it is refused
            await a.rec.publish(tls_config(js=False), certificates={"site": new.decode()},
                                wait=True, timeout=10)
            b.unit.certificates[unit_name(old)] = old
            b.unit.config = {**b.unit.config, "listeners": {"127.0.0.1:8443": {
                "pass": "routes", "tls": {"certificate": unit_name(old)}}}}
            with pytest.raises(PublishRefused, match="refers to certificate") as info:
                await b.rec.publish()
            assert unit_name(old) in str(info.value)


async def test_unit_holding_an_older_envelope_s_config_is_not_published_over_the_head(tmp_path):
    pem, _ = bundle()
    async with cluster(tmp_path, n=2) as (_, (a, b)):
        for node in (a, b):
            node.rec.drift.action = "report"  # on_drift: report, Unit is left as it is
        with trio.fail_after(15):
            await a.rec.publish(tls_config(1, js=False), certificates={"site": pem.decode()},
                                wait=True, timeout=10)
            older = dict(b.unit.config)
            await a.rec.publish(tls_config(2, js=False), wait=True, timeout=10)
            b.unit.config = older  # a Unit restarted from a stale state
            await until(lambda: b.rec.status()["local"]["drift"] is not None)
            with pytest.raises(PublishRefused, match="the config of an older revision"):
                await b.rec.publish()


async def test_a_rollback_brings_the_previous_bundle_back(tmp_path):
    old, _ = bundle()
    new, _ = bundle()
    async with cluster(tmp_path, n=2) as (_, (a, b)):
        with trio.fail_after(20):
            await a.rec.publish(tls_config(js=False), certificates={"site": old.decode()},
                                wait=True, timeout=10)
            await a.rec.publish(tls_config(js=False), certificates={"site": new.decode()},
                                wait=True, timeout=10)
            _, result = await b.rec.rollback(wait=True, timeout=10)
        assert result.converged and result.changed
        for node in (a, b):
            assert holds(node.unit, old) and set(node.unit.certificates) == {unit_name(old)}
        assert [c["fingerprint"] for c in b.rec.status()["certificates"]] == \
            [c["fingerprint"] for c in result.to_json(False)["certificates"]]
