# -*- coding: utf-8 -*-
# Copyright: unit-p2p contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Certificate bundles and JS modules in unit_p2p_publish and unit_p2p_info: run() against a
fake agent API object (no socket, no Ansible), so these tests hold whatever the agent does.

The agent's side (validation of the bundles, what it stores and reports) is tested with the
agent; here: what the modules read, send, return and show in a diff, and that key bytes never
reach a result.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os

import pytest

from ansible_collections.unit_p2p.mesh.plugins.module_utils import resources
from ansible_collections.unit_p2p.mesh.plugins.modules import unit_p2p_info as info
from ansible_collections.unit_p2p.mesh.plugins.modules import unit_p2p_publish as mod

ORIGIN = "12D3KooWOrigin"
KEY_BODY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDsecretkeybytes"
CHAIN = ("-----BEGIN CERTIFICATE-----\nMIIDleafcert\n-----END CERTIFICATE-----\n"
         "-----BEGIN CERTIFICATE-----\nMIIDcacert\n-----END CERTIFICATE-----\n")
BUNDLE = CHAIN + "-----BEGIN PRIVATE KEY-----\n" + KEY_BODY + "\n-----END PRIVATE KEY-----\n"
JS = "export default {check(r) { return r.uri != '/admin'; }}\n"
CONFIG = {"listeners": {"*:443": {"pass": "routes", "tls": {"certificate": "site"}}},
          "routes": [{"action": {"return": 200}}]}
CERT_V1 = {"name": "site", "subject": "CN=www.example.test", "issuer": "CN=Example Test CA",
           "not_before": "2026-12-01T12:00:00Z", "not_after": "2027-03-01T12:00:00Z", "fingerprint": "sha256:" + "1" * 64}
CERT_V2 = dict(CERT_V1, not_after="2028-03-01T12:00:00Z", fingerprint="sha256:" + "2" * 64)
NOW = 1800000000.0  # 2027-01-15T08:00:00Z


class FakeAPI:
    """Stands in for AgentAPI: records each call and answers from ``answer`` / ``status``."""

    def __init__(self, answer=None, status=None):
        self.answer = answer if answer is not None else {}
        self.status = status if status is not None else {"peer_id": ORIGIN, "head": None}
        self.calls = []

    def publish(self, body, timeout):
        self.calls.append(("publish", body))
        answer = {"changed": True, "revision": None if body.get("dry_run") else "2@" + ORIGIN,
                  "digest": "sha256:" + "a" * 64, "size": 321,
                  "peers": {"applied": [ORIGIN], "failed": {}, "pending": []}}
        if body.get("wait"):
            answer["converged"] = True
        if body.get("diff") or body.get("dry_run"):
            answer.update(before={}, after=body.get("config") or {})
        answer.update(self.answer)
        return answer

    def rollback(self, body, timeout):
        self.calls.append(("rollback", body))
        return {"changed": True, "revision": "3@" + ORIGIN, "rolled_back_to": "1@" + ORIGIN}

    def get(self, path, timeout=30):
        self.calls.append(("get", path))
        if path == "/v1/status":
            return self.status
        if path == "/v1/revisions":
            return {"revisions": []}
        if path == "/v1/peers":
            return {"peers": []}
        raise AssertionError("unexpected GET " + path)

    def bodies(self):
        return [body for verb, body in self.calls if verb in ("publish", "rollback")]


def _run(api, check_mode=False, diff=False, **params):
    return mod.run(params, api, check_mode=check_mode, diff=diff)


def test_bundles_and_modules_from_paths_and_contents_are_sent_by_name(tmp_path):
    bundle = tmp_path / "site.pem"
    bundle.write_text(BUNDLE)
    script = tmp_path / "auth.js"
    script.write_text(JS)
    api = FakeAPI()
    _run(api, config=CONFIG,
         certificates={"site": {"path": str(bundle)}, "api": {"content": BUNDLE}},
         js_modules={"auth": {"path": str(script)}, "inline": {"content": JS}})
    (body,) = api.bodies()
    assert body["certificates"] == {"site": BUNDLE, "api": BUNDLE}
    assert body["js_modules"] == {"auth": JS, "inline": JS}
    assert body["config"] == CONFIG


def test_without_resource_options_the_body_has_none():
    api = FakeAPI()
    _run(api, config=CONFIG)
    # empty dicts, as the role's options are when it was given no resources, are the same
    _run(api, config=CONFIG, certificates={}, js_modules={})
    for body in api.bodies():
        assert "certificates" not in body and "js_modules" not in body


@pytest.mark.parametrize("spec, message", [
    ({"site": {"path": "/x.pem", "content": BUNDLE}}, "certificates.site: give exactly one of path or content"),
    ({"site": {}}, "certificates.site: give exactly one of path or content"),
    ({"site": {"path": None, "content": None}}, "certificates.site: give exactly one of path or content"),
    ({"site": {"file": "/x.pem"}}, "certificates.site: unsupported keys file"),
    ({"site": "/x.pem"}, "certificates.site must be a dict with path or content"),
    ({"site": {"content": "  \n"}}, "certificates.site is empty"),
    ({"site": {"content": 42}}, "certificates.site.content must be a string"),
    (["site"], "certificates must be a dict of NAME"),
])
def test_malformed_options_fail_before_anything_is_sent(spec, message):
    api = FakeAPI()
    with pytest.raises(mod.AgentError) as caught:
        _run(api, certificates=spec)
    assert str(caught.value).startswith(message)
    assert KEY_BODY not in str(caught.value)
    assert api.calls == []


def test_unreadable_files_are_named_by_option_and_name(tmp_path, monkeypatch):
    api = FakeAPI()
    binary = tmp_path / "auth.js"
    binary.write_bytes(b"\xff\xfe\x00 not utf-8")
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    cases = [
        ("certificates", str(tmp_path / "missing.pem"), "certificates.site: the file in path does not exist"),
        ("certificates", str(tmp_path), "certificates.site: path is a directory"),
        ("js_modules", str(binary), "js_modules.site: the file in path is not UTF-8 text"),
        ("certificates", str(empty), "certificates.site is empty"),
    ]
    for option, path, message in cases:
        with pytest.raises(mod.AgentError) as caught:
            _run(api, **{option: {"site": {"path": path}}})
        assert str(caught.value).startswith(message), str(caught.value)

    def refuse(path, mode="r"):
        raise PermissionError(13, "Permission denied", path)

    # root reads any file, so the test cannot use a mode of 000; the error is the open()'s
    monkeypatch.setattr(resources, "open", refuse, raising=False)
    with pytest.raises(mod.AgentError, match="certificates.site: the file in path is not readable"):
        _run(api, certificates={"site": {"path": str(empty)}})
    assert api.calls == []


def test_resources_with_rollback_are_refused():
    api = FakeAPI()
    for option in ("certificates", "js_modules"):
        with pytest.raises(mod.AgentError, match="mutually exclusive: %s|rollback" % option):
            _run(api, rollback="previous", **{option: {"site": {"content": BUNDLE}}})
    assert api.calls == []
    assert ("certificates", "rollback") in mod.MUTUALLY_EXCLUSIVE
    assert ("js_modules", "rollback") in mod.MUTUALLY_EXCLUSIVE


def test_check_mode_sends_the_bundles_with_the_dry_run():
    api = FakeAPI(answer={"certificates": [CERT_V1]})
    result = _run(api, check_mode=True, certificates={"site": {"content": BUNDLE}})
    (body,) = api.bodies()
    assert body["dry_run"] is True and body["certificates"] == {"site": BUNDLE}
    assert result["changed"] is True and "check mode published nothing" in result["msg"]
    assert [c["fingerprint"] for c in result["certificates"]] == [CERT_V1["fingerprint"]]


def test_the_certificates_diff_shows_subject_issuer_expiry_fingerprint_and_no_key():
    # an agent that (wrongly) sent more than the public fields: none of it reaches the result
    leaky = dict(CERT_V2, bundle=BUNDLE, key=KEY_BODY, pem=CHAIN)
    api = FakeAPI(answer={"certificates": [leaky]},
                  status={"peer_id": ORIGIN, "head": {"revision": "1@" + ORIGIN},
                          "certificates": [CERT_V1]})
    for check_mode in (True, False):
        result = _run(api, check_mode=check_mode, diff=True, config=CONFIG,
                      certificates={"site": {"content": BUNDLE}})
        config_diff, resource_diff = result["diff"]
        assert config_diff["after"] == CONFIG
        public = dict((k, v) for k, v in CERT_V1.items() if k != "name")
        assert resource_diff["before"] == {"certificates": {"site": public}}
        assert resource_diff["after"] == {"certificates": {"site": dict(
            (k, v) for k, v in CERT_V2.items() if k != "name")}}
        assert set(result["certificates"][0]) <= set(resources.CERTIFICATE_FIELDS) | {"expires_in"}
        text = json.dumps(result)
        assert KEY_BODY not in text and "PRIVATE KEY" not in text and "MIID" not in text
    # the head's certificates are read before each publish, for the diff's "before"
    assert [c for c in api.calls if c[0] == "get"] == [("get", "/v1/status")] * 2


def test_no_certificates_diff_when_they_do_not_change():
    api = FakeAPI(answer={"certificates": [CERT_V1]},
                  status={"peer_id": ORIGIN, "certificates": [CERT_V1]})
    result = _run(api, diff=True, config=CONFIG)
    assert isinstance(result["diff"], dict) and result["diff"]["after"] == CONFIG


def test_status_is_read_only_for_a_diff():
    api = FakeAPI(answer={"certificates": [CERT_V1]})
    _run(api, certificates={"site": {"content": BUNDLE}})
    _run(api, check_mode=True, certificates={"site": {"content": BUNDLE}})
    assert [c for c in api.calls if c[0] == "get"] == []


def test_js_modules_reported_by_the_agent_are_returned_and_diffed():
    module = {"name": "auth", "digest": "sha256:" + "c" * 64, "size": len(JS), "source": JS}
    api = FakeAPI(answer={"js_modules": [module]})
    result = _run(api, diff=True, js_modules={"auth": {"content": JS}})
    assert result["js_modules"] == [{"name": "auth", "digest": module["digest"], "size": len(JS)}]
    assert result["diff"][1]["after"] == {"js_modules": {"auth": {"digest": module["digest"],
                                                                  "size": len(JS)}}}
    assert result["diff"][1]["before"] == {}


@pytest.mark.parametrize("not_after, expires_in", [
    ("2027-01-15T09:00:00Z", 3600),
    ("2027-01-15T09:00:00+00:00", 3600),
    ("2027-01-15T09:00:00", 3600),
    (NOW + 60, 60),
    ("Jan 15 07:00:00 2027 GMT", -3600),  # Unit's own form; expired an hour ago
    ("next spring", None),
    (None, None),
])
def test_expiry_is_read_from_the_forms_an_agent_may_use(not_after, expires_in):
    (summary,) = resources.certificate_summaries([dict(CERT_V1, not_after=not_after)], now=NOW)
    assert summary.get("expires_in") == expires_in


def test_certificates_reported_as_a_mapping_are_listed_by_name():
    entries = {"b": dict(CERT_V1, name="ignored"), "a": CERT_V2}
    names = [s["name"] for s in resources.certificate_summaries(entries, now=NOW)]
    assert names == ["a", "b"]


def test_info_returns_the_heads_certificates_with_expiry():
    module = {"name": "auth", "digest": "sha256:" + "c" * 64, "size": len(JS)}
    status = {"peer_id": ORIGIN, "head": {"revision": "2@" + ORIGIN},
              "certificates": [dict(CERT_V2, key=KEY_BODY), CERT_V1],
              "js_modules": [dict(module, source=JS)]}
    result = info.run({}, FakeAPI(status=status))
    assert result["js_modules"] == [module]
    assert [c["fingerprint"] for c in result["certificates"]] == [CERT_V2["fingerprint"],
                                                                  CERT_V1["fingerprint"]]
    assert all(isinstance(c["expires_in"], int) for c in result["certificates"])
    assert KEY_BODY not in json.dumps(result)
    assert result["changed"] is False


def test_info_without_certificates_in_the_status_returns_none():
    result = info.run({}, FakeAPI(status={"peer_id": ORIGIN, "head": None}))
    assert "certificates" not in result and "js_modules" not in result


def test_a_bundle_file_is_read_as_it_is(tmp_path):
    # CRLF and a missing final newline are the agent's to judge; the module sends the bytes
    bundle = tmp_path / "site.pem"
    bundle.write_bytes(BUNDLE.replace("\n", "\r\n").rstrip().encode())
    api = FakeAPI()
    _run(api, certificates={"site": {"path": str(bundle)}})
    assert api.bodies()[0]["certificates"]["site"] == BUNDLE.replace("\n", "\r\n").rstrip()
    assert os.path.exists(str(bundle))
