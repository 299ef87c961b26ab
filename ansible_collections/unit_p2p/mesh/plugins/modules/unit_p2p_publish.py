#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: unit-p2p contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: unit_p2p_publish
short_description: Publish an NGINX Unit configuration to every host of a unit-p2p mesh
version_added: "0.1.0"
description:
  - Talks to the local unit-p2p agent on the managed host through the agent's API unix socket.
  - Without O(config), publishes the local NGINX Unit's current configuration as the next
    revision of the mesh; every trusted peer pulls it and applies it to its own Unit.
  - With O(config), the agent first applies that configuration to the local Unit (a configuration
    Unit rejects leaves Unit unchanged and fails the task) and then publishes it.
  - Publishing a configuration that already equals the mesh head is a no-op and reports
    C(changed=false), so the task is idempotent.
  - With O(wait=true) the task blocks until the peers reported the revision applied or failed,
    and fails, naming every peer that did not apply it and why, if they do not converge in time.
  - Run it on one host of the mesh (for example with C(run_once=true)); the agent spreads the
    revision to the others.
options:
  socket:
    description:
      - Path of the agent's API unix socket on the managed host (setting C(api) of the agent).
      - Set it once for several tasks with C(module_defaults) and the action group
        C(group/unit_p2p.mesh.agent).
    type: path
    default: /run/unit-p2p/api.sock
  config:
    description:
      - A complete NGINX Unit configuration (the object at Unit's C(/config)) to apply to the
        local Unit and then publish.
      - When omitted, the local Unit's current configuration is published.
    type: dict
  wait:
    description:
      - Wait until the peers report the published revision applied (or failed).
      - Without it, the task returns as soon as the revision is announced.
    type: bool
    default: false
  timeout:
    description:
      - Seconds to wait for convergence when O(wait=true).
    type: int
    default: 30
  min_peers:
    description:
      - With O(require_all=false), the number of peers that must report the revision applied
        before the wait ends.
      - Requires O(require_all=false).
    type: int
  require_all:
    description:
      - Wait for every trusted peer known to the agent.
      - Set to V(false) together with O(min_peers) to wait for a quorum only.
    type: bool
    default: true
  rollback:
    description:
      - Instead of a configuration, publish again the kept configuration of this revision of
        the agent's history, as a new revision (so a host that was down during a bad revision
        goes straight to the rollback).
      - V(previous) is the revision before the agent's head; otherwise C(<counter>@<peer id>)
        or a bare counter. M(unit_p2p.mesh.unit_p2p_info) lists the history.
      - Mutually exclusive with O(config).
    type: str
  certificates:
    description:
      - "TLS certificate bundles to publish with the revision, by NAME, each given as
        C({path: FILE}) (a file on the managed host) or C({content: PEM}) (mutually exclusive)."
      - A bundle is what NGINX Unit's C(PUT /certificates/NAME) takes, one PEM text holding the
        certificate chain (leaf first) and the private key of the leaf.
      - The configuration references a bundle by its NAME, for example
        C(listeners["*:443"].tls.certificate), set to NAME; each host uploads the bundle to its
        own Unit under a name derived from its content and rewrites the reference, so publishing
        a new bundle under the same NAME rotates it on every host.
      - The agent checks each bundle (a chain with the matching key, not expired) before anything
        is published; a bundle it refuses fails the task and nothing changes.
      - This option is C(no_log); neither the bundles nor their paths appear in the task's output.
        Results and diffs show the subject, issuer, expiry and fingerprint of each certificate only.
      - Mutually exclusive with O(rollback).
    type: dict
  js_modules:
    description:
      - "JavaScript modules to publish with the revision, by NAME, each given as C({path: FILE})
        (a file on the managed host) or C({content: SOURCE}) (mutually exclusive)."
      - The configuration references them by NAME (C(settings.js_module)), as it would on one Unit.
      - Mutually exclusive with O(rollback).
    type: dict
  stages:
    description:
      - Roll the revision out in waves (a staged rollout, see the agent's docs/rollout.md).
        Each stage is the cumulative size of a wave, as a host count (V(1)), a share of the
        fleet (V(10%)) or an explicit list of peer IDs; the last stage must be V(100%) (every
        other host, including hosts the agent does not know yet).
      - The publishing host is the first host of the first wave. Each next wave opens when every
        host of the current one applied the revision and passed its health gate (the agents'
        C(health_url) setting).
      - With O(wait=true) the task waits for the rollout to end and fails unless it completed,
        naming the wave it halted at and each failed host with its reason (see RV(rollout)).
      - Mutually exclusive with O(rollback).
    type: list
    elements: raw
  max_failures:
    description:
      - With O(stages), halt the rollout when more hosts than this failed to apply the revision
        or failed their health gate.
    type: int
    default: 0
  auto_revert:
    description:
      - With O(stages), when the rollout halts, publish the previous configuration again as a new
        revision, so the hosts that took the revision go back and the others never apply it.
    type: bool
    default: false
  force:
    description:
      - Publish even when the agent's guards refuse it, that is when the configuration has no
        listeners, routes or applications, removes more than the agent's C(max_removed_share)
        of the head's listeners, routes or applications, or would undo a newer revision.
      - Without it such a publish fails, naming what would be removed, and changes nothing.
    type: bool
    default: false
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details:
      - Asks the agent for a dry run, which tells whether a publish would create a new revision
        and changes nothing anywhere.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details:
      - Shows the configuration at the mesh head before and the configuration that is published
        (or rolled back to) after.
      - When the certificates change, a second diff shows each certificate's subject, issuer,
        expiry and fingerprint at the mesh head and in the published revision; never key bytes.
  platform:
    description: Target OS/families that can be operated against.
    support: N/A
    platforms: posix
  action_group:
    description: Use C(group/unit_p2p.mesh.agent) in C(module_defaults) to set defaults for this module.
    support: full
    membership:
      - unit_p2p.mesh.agent
notes:
  - The module needs read and write access to the agent's socket, that is root (C(become=true))
    or membership of the agent's C(api_group).
  - The revision is announced to the peers this agent trusts; peers that are down catch up when
    they come back, even if the task already returned.
seealso:
  - name: unit-p2p agent API
    description: The HTTP API of the agent that this module calls (POST /v1/publish).
    link: https://github.com/unit-p2p/unit-p2p/blob/main/docs/api.md
author:
  - unit-p2p contributors (@unit-p2p)
"""

EXAMPLES = r"""
- name: Publish the Unit configuration of web1 to the whole mesh and wait for every peer
  unit_p2p.mesh.unit_p2p_publish:
    wait: true
    timeout: 60
  run_once: true
  delegate_to: web1

- name: Apply a new configuration on one host, publish it, and wait for all peers
  unit_p2p.mesh.unit_p2p_publish:
    config:
      listeners:
        "*:8080":
          pass: routes
      routes:
        - action:
            return: 200
    wait: true
  run_once: true
  register: published

- name: Show how the rollout went
  ansible.builtin.debug:
    msg: "{{ published.revision }} applied on {{ published.peers.applied | length }} peers"
  run_once: true

- name: Wait for a quorum of two peers only
  unit_p2p.mesh.unit_p2p_publish:
    wait: true
    require_all: false
    min_peers: 2

- name: Undo the last revision everywhere (see the diff first with --check --diff)
  unit_p2p.mesh.unit_p2p_publish:
    rollback: previous
    wait: true
  run_once: true

- name: Publish a config that removes most of the routes, on purpose
  unit_p2p.mesh.unit_p2p_publish:
    config: "{{ lookup('file', 'small.json') | from_json }}"
    force: true
  run_once: true

- name: Publish a config with a TLS listener and its certificate bundle (chain + key in one file)
  unit_p2p.mesh.unit_p2p_publish:
    config:
      listeners:
        "*:443":
          pass: routes
          tls:
            certificate: site
      routes:
        - action:
            return: 200
    certificates:
      site:
        path: /etc/unit-p2p/resources/certificates/site.pem
    wait: true
  run_once: true
  register: published

- name: Rotate the bundle everywhere (same NAME, new file); the config is unchanged
  unit_p2p.mesh.unit_p2p_publish:
    certificates:
      site:
        content: "{{ lookup('ansible.builtin.file', 'site-2027.pem') }}"
    js_modules:
      auth:
        path: /etc/unit-p2p/resources/js_modules/auth.js
    wait: true
  run_once: true

- name: Roll a new config out in three waves, each gated on the hosts' health checks
  unit_p2p.mesh.unit_p2p_publish:
    config: "{{ lookup('file', 'new.json') | from_json }}"
    stages: [1, "10%", "100%"]
    max_failures: 0
    auto_revert: true
    wait: true
    timeout: 600
  run_once: true
  register: rollout
  ignore_errors: true

- name: Show where it stopped, if it did
  ansible.builtin.debug:
    msg: "{{ rollout.rollout.state }} at wave {{ rollout.rollout.wave }}: {{ rollout.rollout.waves | map(attribute='failed') | list }}"
  run_once: true

- name: Set the agent socket once for every module of the collection
  module_defaults:
    group/unit_p2p.mesh.agent:
      socket: /run/unit-p2p/api.sock
  block:
    - name: Would a publish change anything? (check mode, nothing is published)
      unit_p2p.mesh.unit_p2p_publish:
      check_mode: true
      register: would
"""

RETURN = r"""
changed:
  description:
    - Whether a new revision was published (in check mode, whether one would be).
    - V(false) when the configuration already equals the mesh head.
  returned: always
  type: bool
  sample: true
revision:
  description:
    - The published revision, C(<counter>@<origin peer id>), or the current head when nothing changed.
    - In check mode null, since nothing is published.
  returned: success
  type: str
  sample: "8@12D3KooWQxo5yGk3Q7ErBDvCE7fS7kb3AJhEU3gRpvGZhSdbPkwT"
digest:
  description: C(sha256:<hex>) of the canonical JSON of the published configuration (host-local exclusions removed).
  returned: success
  type: str
  sample: "sha256:9f2c1e4b0d5e8f3a7c6b2a1d0e9f8c7b6a5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f"
size:
  description: Size in bytes of the canonical JSON of the configuration.
  returned: when the agent reports it
  type: int
  sample: 1234
converged:
  description: Whether every peer that was waited for applied the revision (false if any failed).
  returned: when O(wait=true)
  type: bool
  sample: true
peers:
  description: Per-peer outcome of the revision, as reported to the agent.
  returned: always
  type: dict
  contains:
    applied:
      description: Peer IDs that reported the revision applied.
      type: list
      elements: str
      returned: always
      sample: ["12D3KooWQxo5yGk3Q7ErBDvCE7fS7kb3AJhEU3gRpvGZhSdbPkwT"]
    failed:
      description: Peer IDs that reported the revision failed, each with the reason.
      type: dict
      returned: always
      sample: {"12D3KooWBmAwcd4PJNJvfV89HwE48nwkRmAgo8Vy3uQEyNNHBox2": "unit_rejected: port 80 is busy"}
    pending:
      description: Peer IDs that had not reported when the task returned.
      type: list
      elements: str
      returned: always
      sample: []
certificates:
  description:
    - The certificates of the published revision (in check mode, of the revision a publish would
      create), as the agent reports them, by name. Never key bytes.
  returned: when the agent reports them
  type: list
  elements: dict
  contains:
    name:
      description: The NAME the configuration references.
      type: str
    subject:
      description: The leaf certificate's subject.
      type: raw
    issuer:
      description: The leaf certificate's issuer.
      type: raw
    not_before:
      description: When the leaf certificate becomes valid, as the agent reports it.
      type: raw
    not_after:
      description: When the leaf certificate expires, as the agent reports it.
      type: raw
    fingerprint:
      description: The leaf certificate's SHA-256 fingerprint, as the agent reports it.
      type: str
    expires_in:
      description: Seconds from the task's run until RV(certificates[].not_after); negative once expired.
      type: int
      returned: when not_after is a date the module can read
  sample: [{"name": "site", "subject": "CN=www.example.com", "issuer": "CN=Example CA",
            "not_after": "2027-03-01T12:00:00Z", "fingerprint": "sha256:5d0f...",
            "expires_in": 7776000}]
js_modules:
  description: The JS modules of the published revision, as the agent reports them (name, digest, size).
  returned: when the agent reports them
  type: list
  elements: dict
  sample: [{"name": "auth", "digest": "sha256:0c1d...", "size": 412}]
rollout:
  description:
    - With O(stages), where the staged rollout stands, as the agent reports it (C(GET /v1/rollout)).
  returned: when O(stages) is set and a revision was published
  type: dict
  contains:
    state:
      description: V(open), V(halted) (more than O(max_failures) hosts failed), V(aborted) or V(complete).
      type: str
    wave:
      description: The last wave opened (1-based).
      type: int
    reason:
      description: Why it halted or was aborted.
      type: str
    reverted_by:
      description: The revision that published the previous configuration again (O(auto_revert)).
      type: str
    waves:
      description: Per wave, its hosts and who applied it, who failed (peer ID to reason, such as a
        failed health gate) and who is pending.
      type: list
      elements: dict
  sample: {"state": "halted", "wave": 2, "reverted_by": "10@12D3KooW...",
           "reason": "1 host(s) failed, more than max_failures 0: ...",
           "waves": [{"wave": 1, "open": true, "hosts": ["12D3KooW...A"], "applied": ["12D3KooW...A"],
                      "failed": {}, "pending": []},
                     {"wave": 2, "open": true, "hosts": ["12D3KooW...B"], "applied": [],
                      "failed": {"12D3KooW...B": "health_gate: GET http://127.0.0.1:8080/healthz answered 500, expected 2xx (try 1 of 3)"},
                      "pending": []}]}
rolled_back_to:
  description: With O(rollback), the revision whose configuration was published again.
  returned: when O(rollback) is set
  type: str
  sample: "7@12D3KooWQxo5yGk3Q7ErBDvCE7fS7kb3AJhEU3gRpvGZhSdbPkwT"
msg:
  description: One readable sentence about what happened.
  returned: always
  type: str
  sample: "published revision 8@12D3KooW... (sha256:9f2c...); applied on 3 of 3 peers"
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.unit_p2p.mesh.plugins.module_utils.agent_api import (
    AgentAPI,
    AgentError,
)
from ansible_collections.unit_p2p.mesh.plugins.module_utils.resources import (
    ResourceError,
    by_name,
    certificate_summaries,
    js_module_summaries,
    read_resources,
)

# The one list of options and defaults: main() hands it to AnsibleModule, and run() fills the
# same defaults when it is called without Ansible (the unit tests).
ARGUMENT_SPEC = dict(
    socket=dict(type="path", default="/run/unit-p2p/api.sock"),
    config=dict(type="dict"),
    wait=dict(type="bool", default=False),
    timeout=dict(type="int", default=30),
    min_peers=dict(type="int"),
    require_all=dict(type="bool", default=True),
    rollback=dict(type="str"),
    force=dict(type="bool", default=False),
    # no_log: the bundles hold private keys; Ansible then also keeps them out of the journal
    certificates=dict(type="dict", no_log=True),
    js_modules=dict(type="dict"),
    stages=dict(type="list", elements="raw"),
    max_failures=dict(type="int", default=0),
    auto_revert=dict(type="bool", default=False),
)
MUTUALLY_EXCLUSIVE = [("config", "rollback"), ("certificates", "rollback"),
                      ("js_modules", "rollback"), ("stages", "rollback")]
# Extra seconds on top of the agent's own wait so the agent, not the HTTP client, reports
# a timeout (its answer lists the pending peers). A dry run never waits for peers, so the
# margin alone bounds it.
REQUEST_MARGIN = 15


class PublishFailed(Exception):
    """The publish ran but its outcome is a failure; ``result`` holds what is known."""

    def __init__(self, msg, result):
        super(PublishFailed, self).__init__(msg)
        self.result = result


def _peers(answer):
    peers = answer.get("peers") or {}
    return {
        "applied": sorted(peers.get("applied") or []),
        "failed": dict(peers.get("failed") or {}),
        "pending": sorted(peers.get("pending") or []),
    }


def _convergence_text(peers):
    waited = len(peers["applied"]) + len(peers["failed"]) + len(peers["pending"])
    text = "applied on %d of %d peers" % (len(peers["applied"]), waited)
    if peers["failed"]:
        text += "; failed: " + ", ".join(
            "%s (%s)" % (peer, reason) for peer, reason in sorted(peers["failed"].items()))
    if peers["pending"]:
        text += "; pending: " + ", ".join(peers["pending"])
    return text


def _validate(params):
    if params["timeout"] <= 0:
        raise AgentError("timeout must be a positive number of seconds, got %s" % params["timeout"])
    if params["min_peers"] is not None:
        if params["min_peers"] < 0:
            raise AgentError("min_peers must be 0 or more, got %s" % params["min_peers"])
        if params["require_all"]:
            raise AgentError("min_peers needs require_all=false (require_all=true waits for "
                             "every trusted peer)")
    if params["max_failures"] < 0:
        raise AgentError("max_failures must be 0 or more, got %s" % params["max_failures"])
    if params["rollback"] is not None:
        for other in ("config", "certificates", "js_modules", "stages"):
            if params[other] is not None:
                raise AgentError("parameters are mutually exclusive: %s|rollback" % other)


def _with_defaults(params):
    full = dict((name, spec.get("default")) for name, spec in ARGUMENT_SPEC.items())
    full.update((name, value) for name, value in params.items() if value is not None)
    return full


def _resources_view(certificates, js_modules):
    view = {}
    if certificates:
        view["certificates"] = by_name(certificates)
    if js_modules:
        view["js_modules"] = by_name(js_modules)
    return view


def _result(answer, diff, head_status=None):
    """The task result for one agent answer, in normal and in check mode alike. ``head_status``
    (GET /v1/status before the publish, only fetched for a diff) gives the head's resources."""
    result = {
        "changed": bool(answer.get("changed")),
        "revision": answer.get("revision"),
        "digest": answer.get("digest"),
        "peers": _peers(answer),
    }
    if answer.get("size") is not None:
        result["size"] = answer["size"]
    if answer.get("rolled_back_to"):
        result["rolled_back_to"] = answer["rolled_back_to"]
    if answer.get("rollout") is not None:
        result["rollout"] = answer["rollout"]
    certificates = certificate_summaries(answer.get("certificates"))
    js_modules = js_module_summaries(answer.get("js_modules"))
    if "certificates" in answer:
        result["certificates"] = certificates
    if "js_modules" in answer:
        result["js_modules"] = js_modules
    if diff and result["changed"] and "before" in answer:
        diffs = [{
            "before": answer.get("before") or {},
            "after": answer.get("after") or {},
            "before_header": "mesh head",
            "after_header": "published config",
        }]
        head = head_status or {}
        before = _resources_view(certificate_summaries(head.get("certificates")),
                                 js_module_summaries(head.get("js_modules")))
        after = _resources_view(certificates, js_modules)
        if before != after:
            diffs.append({
                "before": before,
                "after": after,
                "before_header": "mesh head certificates and JS modules",
                "after_header": "published certificates and JS modules",
            })
        # one diff stays a dict (what every diff consumer reads); Ansible shows a list in order
        result["diff"] = diffs[0] if len(diffs) == 1 else diffs
    return result


def _rollout_failure(revision, rollout, timeout):
    """Why a staged rollout the task waited for did not complete, in one sentence."""
    state, wave = rollout.get("state"), rollout.get("wave")
    if state == "open":
        text = "the rollout of %s did not complete within %s s (wave %s open)" % (
            revision, timeout, wave)
    else:
        text = "the rollout of %s %s at wave %s" % (revision, state, wave)
    failed = {}
    for entry in rollout.get("waves") or []:
        failed.update(entry.get("failed") or {})
    if failed:
        text += "; failed: " + ", ".join(
            "%s (%s)" % (peer, reason) for peer, reason in sorted(failed.items()))
    if rollout.get("reverted_by"):
        text += "; the previous config was published again as %s" % rollout["reverted_by"]
    return text


def run(params, api, check_mode=False, diff=False):
    """Publish through ``api`` (an AgentAPI); returns the task result or raises AgentError /
    PublishFailed. Kept free of AnsibleModule so it is tested without Ansible."""
    params = _with_defaults(params)
    _validate(params)
    body = {}
    if diff:
        body["diff"] = True
    if params["config"] is not None:
        body["config"] = params["config"]
    for option in ("certificates", "js_modules"):
        try:
            texts = read_resources(option, params[option])
        except ResourceError as exc:
            raise AgentError(str(exc))
        if texts:  # an empty dict (a role with no resources) is the same as none
            body[option] = texts
    if params["force"]:
        body["force"] = True
    if params["stages"]:
        body.update(stages=params["stages"], max_failures=params["max_failures"],
                    auto_revert=params["auto_revert"])
    send = api.publish
    if params["rollback"] is not None:
        send = api.rollback
        if params["rollback"] != "previous":
            body["revision"] = params["rollback"]

    # The head's certificates are the "before" of the resources diff; the agent's answer has the
    # published ones. Read before the publish moves the head.
    head_status = api.get("/v1/status", timeout=REQUEST_MARGIN) if diff else None

    if check_mode:
        body["dry_run"] = True
        result = _result(send(body, timeout=REQUEST_MARGIN), diff, head_status)
        if result.get("rolled_back_to"):
            result["msg"] = ("a rollback to %s would %s; check mode published nothing"
                             % (result["rolled_back_to"], "create a new revision"
                                if result["changed"] else "change nothing (it is the head)"))
        elif result["changed"]:
            result["msg"] = ("a publish would create a new revision (config %s differs from the "
                             "mesh head); check mode published nothing" % result["digest"])
        else:
            result["msg"] = "nothing to publish: the config already equals the mesh head"
        return result

    wait, timeout = params["wait"], params["timeout"]
    body.update(wait=wait, timeout=timeout, require_all=params["require_all"])
    if params["min_peers"] is not None:
        body["min_peers"] = params["min_peers"]
    answer = send(body, timeout=(timeout if wait else 0) + REQUEST_MARGIN)
    result = _result(answer, diff, head_status)
    if result["changed"] and result.get("rolled_back_to"):
        msg = "rolled back to %s as revision %s (%s)" % (
            result["rolled_back_to"], result["revision"], result["digest"])
    elif result["changed"]:
        msg = "published revision %s (%s)" % (result["revision"], result["digest"])
    else:
        msg = "nothing changed: the config already is the mesh head %s" % result["revision"]
    rollout = result.get("rollout")
    if wait and rollout is not None and rollout.get("state") != "complete":
        raise PublishFailed(_rollout_failure(result["revision"], rollout, timeout), result)
    if wait:
        result["converged"] = bool(answer.get("converged"))
        convergence = _convergence_text(result["peers"])
        if not result["converged"]:
            raise PublishFailed("revision %s did not converge within %s s: %s"
                                % (result["revision"], timeout, convergence), result)
        msg += "; " + convergence
    result["msg"] = msg
    return result


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, mutually_exclusive=MUTUALLY_EXCLUSIVE,
                           supports_check_mode=True)
    api = AgentAPI(module.params["socket"])
    try:
        result = run(module.params, api, check_mode=module.check_mode, diff=module._diff)
    except AgentError as exc:
        module.fail_json(msg=str(exc), changed=False)
    except PublishFailed as exc:
        module.fail_json(msg=str(exc), **exc.result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
