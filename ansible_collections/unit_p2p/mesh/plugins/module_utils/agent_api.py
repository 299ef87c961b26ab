# -*- coding: utf-8 -*-
# Copyright: unit-p2p contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The unit-p2p agent's local API (docs/api.md) over its unix socket, for this collection's
modules: JSON in and out, every failure one AgentError whose text is the task's message."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import socket
import stat
from urllib.error import HTTPError, URLError

from ansible.module_utils.urls import Request

PERMISSION_DENIED = ("permission denied on agent socket %s: run the task as root (become) or as "
                     "a member of the agent's api_group")


# 422 codes of the agent's checks of a publish request itself, not of Unit's answer
REFUSED_INPUT = ("bad_certificate", "bad_js_module", "bad_name", "not_an_object", "not_canonical")


class AgentError(Exception):
    """The agent could not be reached or answered with an error; str() is the task's message."""

    def __init__(self, msg, status=None, code=None):
        super(AgentError, self).__init__(msg)
        self.status = status
        self.code = code


def _error_message(socket_path, status, code, detail):
    if status == 503 and code == "unit_unreachable":
        return "the unit-p2p agent cannot reach NGINX Unit (nothing was published): %s" % detail
    if status == 422 and code in REFUSED_INPUT:
        # the agent's own checks of what the task sent (a bundle, a module, a NAME)
        return "the unit-p2p agent refused the request (%s; nothing was published): %s" % (
            code, detail)
    if status == 422 and code in ("unit_rejected", "error"):
        return ("NGINX Unit rejected the given config; Unit keeps its current config and nothing "
                "was published: %s" % detail)
    if status == 422:
        return ("the unit-p2p agent could not apply the config here (%s); Unit keeps its "
                "current config and nothing was published: %s" % (code, detail))
    if status == 400:
        return "the unit-p2p agent refused the request: %s" % detail
    if status == 409:
        # the detail says what would be lost and that force publishes anyway
        return "the unit-p2p agent refused to publish (%s; nothing changed): %s" % (code, detail)
    if status == 404 and code == "unknown_revision":
        return "the unit-p2p agent has no such revision: %s" % detail
    return "the unit-p2p agent at %s answered %s %s: %s" % (socket_path, status, code, detail)


class AgentAPI:
    """HTTP over the agent's unix socket, JSON in and out."""

    def __init__(self, socket_path):
        self.socket_path = socket_path

    def _check_socket(self):
        try:
            mode = os.stat(self.socket_path).st_mode
        except FileNotFoundError:
            raise AgentError("agent socket %s not found: is unit-p2p running?" % self.socket_path)
        except PermissionError:
            raise AgentError(PERMISSION_DENIED % self.socket_path)
        if not stat.S_ISSOCK(mode):
            raise AgentError("%s is not a unix socket: check the socket option (the agent's "
                             "api setting)" % self.socket_path)

    def call(self, method, path, body, timeout):
        self._check_socket()
        data = None if body is None else json.dumps(body)
        try:
            response = Request(unix_socket=self.socket_path).open(
                method, "http://localhost" + path, data=data,
                headers={"Content-Type": "application/json", "Accept": "application/json"},
                timeout=timeout)
            raw = response.read()
        except HTTPError as exc:
            code, detail = "error", ""
            try:
                err = json.loads(exc.read())
                code = err.get("error", code)
                detail = err.get("detail", "")
            except (ValueError, AttributeError, TypeError):
                detail = str(exc.reason)
            raise AgentError(_error_message(self.socket_path, exc.code, code, detail),
                             status=exc.code, code=code)
        except URLError as exc:
            if isinstance(exc.reason, (socket.timeout, TimeoutError)):
                raise AgentError("the unit-p2p agent at %s did not answer within %s s"
                                 % (self.socket_path, timeout))
            reason = str(exc.reason)
            if "Permission denied" in reason:
                raise AgentError(PERMISSION_DENIED % self.socket_path)
            raise AgentError("cannot connect to agent socket %s (%s): is unit-p2p running?"
                             % (self.socket_path, reason))
        except (socket.timeout, TimeoutError):
            raise AgentError("the unit-p2p agent at %s did not answer within %s s"
                             % (self.socket_path, timeout))
        except (ConnectionError, OSError) as exc:
            raise AgentError("connection to the unit-p2p agent at %s failed: %s"
                             % (self.socket_path, exc))
        try:
            return json.loads(raw)
        except ValueError:
            raise AgentError("the unit-p2p agent at %s answered something that is not JSON: %r"
                             % (self.socket_path, raw[:200]))

    def publish(self, body, timeout):
        return self.call("POST", "/v1/publish", body, timeout=timeout)

    def rollback(self, body, timeout):
        return self.call("POST", "/v1/rollback", body, timeout=timeout)

    def get(self, path, timeout=30):
        return self.call("GET", path, None, timeout=timeout)
