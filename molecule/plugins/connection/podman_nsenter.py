# A connection to running podman containers that enters their namespaces with nsenter(1)
# instead of running `podman exec`.
#
# Why: `podman exec` costs about 0.35 s here, and containers.podman.podman runs five or six of
# them per task (it cannot pipeline: it runs exec without -i). nsenter costs milliseconds, and with
# pipelining a module is one process in the container: tasks went from 3-5 s to 1-2 s on a loaded
# 2-core VM. Needs root on the controller (rootful podman, as prepare-host.sh sets up).
# Used by the molecule scenarios only: molecule/shared/vars.yml selects it.

from __future__ import annotations

import shlex
import shutil
import subprocess

from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.module_utils.common.text.converters import to_bytes, to_native
from ansible.plugins.connection import ConnectionBase, ensure_connect
from ansible.utils.display import Display

DOCUMENTATION = """
    name: podman_nsenter
    short_description: Run commands in a running podman container through nsenter
    description:
        - Looks up the PID of the container's init with C(podman inspect) once per connection,
          then runs every command in its mount, UTS, IPC, network and PID namespaces with
          C(nsenter), as root, with a clean environment. Files are copied through a pipe.
        - Supports pipelining. Needs root on the controller and a rootful podman container.
    options:
      remote_addr:
        description: The name or ID of the container.
        default: inventory_hostname
        vars:
          - name: ansible_host
          - name: inventory_hostname
          - name: ansible_podman_host
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

display = Display()

# what a login shell in the container would have; the controller's environment must not leak in
_CONTAINER_ENV = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
    "LANG=C.UTF-8",
    "container=podman",
]


class Connection(ConnectionBase):
    transport = "podman_nsenter"
    has_pipelining = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pid = None

    def _connect(self):
        super()._connect()
        if self._pid is None:
            name = self.get_option("remote_addr")
            podman = shutil.which(self.get_option("podman_executable"))
            if podman is None:
                raise AnsibleError("podman not found on the controller's PATH")
            p = subprocess.run(
                [podman, "inspect", "--format", "{{.State.Pid}}", name],
                capture_output=True, check=False,
            )
            pid = p.stdout.strip().decode() if p.returncode == 0 else ""
            if not pid.isdigit() or pid == "0":
                raise AnsibleConnectionFailure(
                    f"container {name} is not running: {to_native(p.stderr.strip())}")
            self._pid = pid
            display.vvv(f"NSENTER to {name}: pid {pid}", host=name)
        self._connected = True

    def _nsenter(self, argv, in_data=None):
        cmd = ["nsenter", "-t", self._pid, "-m", "-u", "-i", "-n", "-p", "-r", "-w", "--",
               "/usr/bin/env", "-i", *_CONTAINER_ENV, *argv]
        display.vvv(f"EXEC {cmd}", host=self.get_option("remote_addr"))
        p = subprocess.run(
            [to_bytes(a, errors="surrogate_or_strict") for a in cmd],
            input=in_data, capture_output=True, check=False,
        )
        return p.returncode, p.stdout, p.stderr

    @ensure_connect
    def exec_command(self, cmd, in_data=None, sudoable=False):
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        return self._nsenter(shlex.split(to_native(cmd, errors="surrogate_or_strict")), in_data)

    @ensure_connect
    def put_file(self, in_path, out_path):
        super().put_file(in_path, out_path)
        with open(to_bytes(in_path, errors="surrogate_or_strict"), "rb") as f:
            data = f.read()
        rc, _, err = self._nsenter(["/bin/sh", "-c", f"cat > {shlex.quote(out_path)}"], data)
        if rc != 0:
            raise AnsibleError(f"failed to put {in_path} to {out_path}: {to_native(err)}")

    @ensure_connect
    def fetch_file(self, in_path, out_path):
        super().fetch_file(in_path, out_path)
        rc, out, err = self._nsenter(["/bin/cat", in_path])
        if rc != 0:
            raise AnsibleError(f"failed to fetch {in_path}: {to_native(err)}")
        with open(to_bytes(out_path, errors="surrogate_or_strict"), "wb") as f:
            f.write(out)

    def close(self):
        super().close()
        self._connected = False
