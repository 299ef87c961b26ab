#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: unit-p2p contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: unit_p2p_info
short_description: Read the head, the revision history and the peers of a unit-p2p agent
version_added: "0.1.0"
description:
  - Talks to the local unit-p2p agent on the managed host through the agent's API unix socket
    and returns what it knows, changing nothing.
  - The history lists the revisions this host published or followed, newest first, with what
    each changed and how the fleet took it; the agent keeps the configurations of the last
    C(keep_configs) of them, which M(unit_p2p.mesh.unit_p2p_publish) can roll back to.
options:
  socket:
    description:
      - Path of the agent's API unix socket on the managed host (setting C(api) of the agent).
      - Set it once for several tasks with C(module_defaults) and the action group
        C(group/unit_p2p.mesh.agent).
    type: path
    default: /run/unit-p2p/api.sock
  revision:
    description:
      - Also return the kept configuration of this revision as RV(config).
      - C(<counter>@<peer id>), a bare counter, V(head) or V(previous).
    type: str
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details:
      - The module only reads; it runs the same in check mode.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
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
seealso:
  - module: unit_p2p.mesh.unit_p2p_publish
  - name: unit-p2p history, show, diff and rollback
    description: The revisions an agent keeps and how a rollback works.
    link: https://github.com/unit-p2p/unit-p2p/blob/main/docs/history.md
author:
  - unit-p2p contributors (@unit-p2p)
"""

EXAMPLES = r"""
- name: What does the mesh run, and what came before?
  unit_p2p.mesh.unit_p2p_info:
  register: mesh

- name: Show the last three revisions
  ansible.builtin.debug:
    msg: "{{ item.revision }} {{ item.role }}: {{ item.summary }}"
  loop: "{{ mesh.history[:3] }}"

- name: Get the configuration of the revision before the head
  unit_p2p.mesh.unit_p2p_info:
    revision: previous
  register: previous

- name: Warn about certificates of the head that expire within 30 days
  ansible.builtin.debug:
    msg: "{{ item.name }} expires {{ item.not_after }}"
  loop: "{{ mesh.certificates | default([]) | selectattr('expires_in', 'defined')
            | selectattr('expires_in', 'lt', 30 * 86400) }}"

- name: Roll back if the head failed anywhere
  unit_p2p.mesh.unit_p2p_publish:
    rollback: previous
    wait: true
  when: (mesh.history[0].fleet.failed | default(0)) > 0
"""

RETURN = r"""
peer_id:
  description: The agent's peer ID.
  returned: always
  type: str
  sample: "12D3KooWQxo5yGk3Q7ErBDvCE7fS7kb3AJhEU3gRpvGZhSdbPkwT"
head:
  description: The revision the agent applied (null before the first one).
  returned: always
  type: dict
  sample: {"revision": "8@12D3KooW...", "counter": 8, "origin": "12D3KooW...",
           "digest": "sha256:9f2c...", "size": 412, "applied_at": 1764599452.1}
history:
  description:
    - The revisions this host published or followed, newest first (see the agent's
      docs/history.md for every field).
  returned: always
  type: list
  elements: dict
  contains:
    revision:
      description: C(<counter>@<origin peer id>).
      type: str
    role:
      description: V(published) (this host is the origin) or V(followed).
      type: str
    applied_at:
      description: Unix time this host took it as its head.
      type: float
    published_at:
      description: The publish time, known only for revisions this host published.
      type: float
    digest:
      description: C(sha256:<hex>) of the canonical JSON of the configuration.
      type: str
    size:
      description: Size of the configuration document in bytes.
      type: int
    kept:
      description: Whether the configuration is still kept (only kept ones can be rolled back to).
      type: bool
    previous:
      description: The revision this host held before it.
      type: str
    summary:
      description: What it changed against the previous one, e.g. C(routes +2 -1 ~3).
      type: str
    fleet:
      description:
        - Counts of C(applied), C(failed), C(pending) and C(moved_on) peers and C(failed_peers)
          with reasons, from the reports the agent holds; null when it holds none.
      type: dict
peers:
  description: Every peer the agent knows, with its head and last report.
  returned: always
  type: list
  elements: dict
certificates:
  description:
    - The certificates of the head as the agent reports them in its status, by name, each with
      its expiry; never key bytes. Empty when the head holds none.
  returned: when the agent's status lists certificates
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
  description: The JS modules of the head as the agent reports them (name, digest, size).
  returned: when the agent's status lists JS modules
  type: list
  elements: dict
  sample: [{"name": "auth", "digest": "sha256:0c1d...", "size": 412}]
config:
  description: The kept configuration of O(revision).
  returned: when O(revision) is set
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.six.moves.urllib.parse import quote
from ansible_collections.unit_p2p.mesh.plugins.module_utils.agent_api import (
    AgentAPI,
    AgentError,
)
from ansible_collections.unit_p2p.mesh.plugins.module_utils.resources import (
    certificate_summaries,
    js_module_summaries,
)

ARGUMENT_SPEC = dict(
    socket=dict(type="path", default="/run/unit-p2p/api.sock"),
    revision=dict(type="str"),
)


def run(params, api):
    """The task result from ``api`` (an AgentAPI); raises AgentError. Free of AnsibleModule so
    it is tested without Ansible."""
    status = api.get("/v1/status")
    result = {
        "changed": False,
        "peer_id": status.get("peer_id"),
        "head": status.get("head"),
        "history": api.get("/v1/revisions").get("revisions") or [],
        "peers": api.get("/v1/peers").get("peers") or [],
    }
    if "certificates" in status:
        result["certificates"] = certificate_summaries(status["certificates"])
    if "js_modules" in status:
        result["js_modules"] = js_module_summaries(status["js_modules"])
    if params.get("revision"):
        shown = api.get("/v1/revisions/" + quote(params["revision"], safe="@"))
        result["config"] = shown.get("config")
    return result


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        result = run(module.params, AgentAPI(module.params["socket"]))
    except AgentError as exc:
        module.fail_json(msg=str(exc), changed=False)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
