# containers.podman.podman with pipelining: one `podman exec -i` per module instead of five or six
# podman calls (mkdir, chmod, run, rm... at ~0.35 s each here), and the container is mounted only
# when a file is actually copied. The upstream plugin disables pipelining because it runs
# `podman exec` without -i, so the module on stdin never arrives; with -i it does.
# GNU General Public License v3.0+ (as the plugin it extends)

from __future__ import annotations

DOCUMENTATION = """
    name: podman_pipelined
    short_description: containers.podman.podman with pipelining and a lazy mount
    description:
        - The podman connection of containers.podman, running modules through a pipe
          (C(podman exec -i)) and mounting the container only for file transfers.
    options:
      remote_addr:
        description: The ID of the container you want to access.
        default: inventory_hostname
        vars:
          - name: ansible_host
          - name: inventory_hostname
          - name: ansible_podman_host
      remote_user:
        description: User inside the container.
        ini:
          - section: defaults
            key: remote_user
        env:
          - name: ANSIBLE_REMOTE_USER
        vars:
          - name: ansible_user
      podman_extra_args:
        description: Extra arguments to pass to the podman command line.
        default: ''
        vars:
          - name: ansible_podman_extra_args
        env:
          - name: ANSIBLE_PODMAN_EXTRA_ARGS
      podman_executable:
        description: Executable for podman command.
        default: podman
        vars:
          - name: ansible_podman_executable
        env:
          - name: ANSIBLE_PODMAN_EXECUTABLE
      pipelining:
        description: Pipe modules into the container instead of copying them.
        default: true
        type: boolean
        vars:
          - name: ansible_pipelining
        env:
          - name: ANSIBLE_PIPELINING
"""

import shlex

from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.connection import ConnectionBase, ensure_connect
from ansible_collections.containers.podman.plugins.connection.podman import (
    Connection as PodmanConnection,
)


class Connection(PodmanConnection):
    transport = "podman_pipelined"
    has_pipelining = True

    def _connect(self):
        # the upstream _connect mounts the container (one podman call) for every task
        ConnectionBase._connect(self)
        self._connected = True
        self._mounted = False

    def _ensure_mount(self):
        if not self._mounted:
            self._mounted = True
            PodmanConnection._connect(self)

    @ensure_connect
    def exec_command(self, cmd, in_data=None, sudoable=False):
        ConnectionBase.exec_command(self, cmd, in_data=in_data, sudoable=sudoable)
        args = ["exec", "-i"] if in_data is not None else ["exec"]
        if self.user:
            args.extend(("--user", self.user))
        cmd_args = shlex.split(to_native(cmd, errors="surrogate_or_strict"))
        return self._podman(args, cmd_args, in_data)

    def put_file(self, in_path, out_path):
        self._ensure_mount()
        return super().put_file(in_path, out_path)

    def fetch_file(self, in_path, out_path):
        self._ensure_mount()
        return super().fetch_file(in_path, out_path)
