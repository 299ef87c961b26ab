"""Client for the agent's local API (docs/api.md), for ``unit-p2p publish/status/peers`` and tests.

Every method returns the documented JSON document as parsed (``metrics()`` returns text). An
error status becomes :class:`~unit_p2p.errors.ApiError` with the API's ``error`` code and
``detail``; no answer at all becomes :class:`~unit_p2p.errors.AgentUnreachable`.
"""

from __future__ import annotations

import functools
import json
import os
import stat
import time
from typing import Any
from urllib.parse import quote

from unit_p2p.errors import AgentUnreachable, ApiError
from unit_p2p.httpunix import Endpoint, parse_address

__all__ = ["AgentUnreachable", "ApiClient"]


#: a "503 busy" (too many connections at the agent) is retried this often, this far apart
BUSY_RETRIES, BUSY_PAUSE_S = 5, 1.0

_HINTS = {
    "missing": "the unit-p2p agent may not be running (or uses another api address)",
    "refused": "the unit-p2p agent may not be running",
    "denied": "run as root or as a member of the agent's api_group",
    "timeout": "the agent may be overloaded or stuck",
}


def _unreachable(kind: str, message: str, path: str, *,
                 socket_path: str | None = None) -> AgentUnreachable:
    if kind == "refused" and socket_path and _not_a_socket(socket_path):
        return AgentUnreachable(f"unit-p2p agent API: {socket_path} is not a socket; is the "
                                "api address right?", kind="missing")
    if kind == "timeout" and path == "/v1/publish":
        hint = "the agent (or the local Unit it is applying the config to) is slow"
    else:
        hint = _HINTS.get(kind)
    return AgentUnreachable(f"{message}; {hint}" if hint else message, kind=kind)


def _not_a_socket(path: str) -> bool:
    try:
        return not stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


class ApiClient:
    """Blocking client for one agent API address (``unix:/path`` or ``127.0.0.1:PORT``)."""

    def __init__(self, address: str, token: str | None = None, timeout: float = 10.0):
        socket_path = parse_address(address).socket_path
        self._endpoint = Endpoint(
            address, timeout=timeout, name="unit-p2p agent API",
            unreachable=functools.partial(_unreachable, socket_path=socket_path),
        )
        self.address = str(self._endpoint.address)
        self.timeout = self._endpoint.timeout
        self._headers = {"Accept": "application/json"}
        # Token files usually end with a newline, which is not allowed in a header.
        if token and token.strip():
            self._headers["Authorization"] = f"Bearer {token.strip()}"

    def healthz(self) -> dict:
        return self._json("GET", "/v1/healthz")

    def status(self) -> dict:
        return self._json("GET", "/v1/status")

    def peers(self) -> dict:
        """``{"peers": [...]}`` as documented."""
        return self._json("GET", "/v1/peers")

    def config(self) -> dict:
        return self._json("GET", "/v1/config")

    def publish(self, config: dict | None = None, **options: Any) -> dict:
        """Publish this host's Unit config, or ``config`` applied here first. ``options``:
        wait, timeout, dry_run, min_peers, require_all, diff, force, certificates and
        js_modules (NAME -> text, docs/tls.md), and for a staged rollout
        stages, max_failures, auto_revert (docs/api.md, docs/rollout.md)."""
        subject: dict[str, Any] = {} if config is None else {"config": config}
        # certificates / js_modules: NAME -> text (a PEM bundle, a module's source)
        for name in ("certificates", "js_modules", "stages", "max_failures", "auto_revert"):
            value = options.pop(name, None)
            if value is not None:
                subject[name] = value
        return self._publishing("/v1/publish", subject, **options)

    def rollout(self, revision: str | None = None) -> dict:
        """Where a staged rollout stands (default: the latest known here), wave by wave."""
        return self._json("GET", "/v1/rollout" + ("" if revision is None
                                                  else "/" + quote(revision, safe="@")))

    def rollout_resume(self, revision: str | None = None, next_wave: bool = False) -> dict:
        """Drive a rollout from this host: an open one from its current wave, a halted one
        (or with ``next_wave`` an open one) from its next wave."""
        body: dict[str, Any] = {"next": True} if next_wave else {}
        if revision is not None:
            body["revision"] = revision
        return self._json("POST", "/v1/rollout/resume", body)

    def rollout_abort(self, revision: str | None = None, revert: bool = False) -> dict:
        """Stop a rollout: hosts outside its open waves never apply it; ``revert`` (or the
        plan's auto_revert) publishes the previous config again."""
        body: dict[str, Any] = {"revert": revert}
        if revision is not None:
            body["revision"] = revision
        return self._json("POST", "/v1/rollout/abort", body)

    def revisions(self) -> dict:
        """``{"revisions": [...]}``: this host's history, newest first."""
        return self._json("GET", "/v1/revisions")

    def revision(self, spec: str) -> dict:
        """One kept revision with its ``config``: ``COUNTER@PEER_ID``, ``COUNTER``, ``head`` or
        ``previous``."""
        return self._json("GET", "/v1/revisions/" + quote(spec, safe="@"))

    def rollback(self, revision: str | None = None, **options: Any) -> dict:
        """Publish the kept document of ``revision`` (default: the one before the head) as a
        new revision; the publish's answer plus ``rolled_back_to``. ``options`` as publish."""
        return self._publishing("/v1/rollback",
                                {} if revision is None else {"revision": revision}, **options)

    def _publishing(self, path: str, subject: dict, *, wait: bool = False, timeout: float = 30,
                    dry_run: bool = False, min_peers: int | None = None,
                    require_all: bool = True, diff: bool = False,
                    force: bool = False) -> dict:
        request: dict[str, Any] = {"wait": wait, "timeout": timeout, "dry_run": dry_run,
                                   "min_peers": min_peers, "require_all": require_all,
                                   "diff": diff, **subject}
        if force:
            request["force"] = True
        # `timeout` bounds the whole publish: applying to the local Unit (several calls, each
        # up to the agent's unit_timeout) and, with wait, the peers.
        return self._json("POST", path, request, timeout=self.timeout + timeout)

    def wait(
        self,
        revision: str,
        timeout: float = 30,
        min_peers: int | None = None,
        require_all: bool = True,
    ) -> dict:
        """Where ``revision`` stands, after waiting up to ``timeout`` s for it to converge."""
        request = {
            "revision": revision,
            "timeout": timeout,
            "min_peers": min_peers,
            "require_all": require_all,
        }
        return self._json("POST", "/v1/wait", request, timeout=self.timeout + timeout)

    def metrics(self) -> str:
        return self._send("GET", "/metrics").text

    def _json(self, method: str, path: str, value: Any = None, timeout: float | None = None):
        response = self._send(method, path, value, timeout)
        try:
            return response.json()
        except ValueError:
            raise ApiError(
                response.status_code,
                "bad_response",
                f"{method} {path} answered without JSON: {response.content[:200]!r}",
            ) from None

    def _send(self, method: str, path: str, value: Any = None, timeout: float | None = None):
        headers = dict(self._headers)
        body = None
        if value is not None:
            body = json.dumps(value, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        retries = BUSY_RETRIES
        while True:
            response = self._endpoint.request(method, path, body=body, headers=headers,
                                              timeout=timeout)
            if response.status_code < 400:
                return response
            error = _api_error(response.status_code, response.content)
            # "busy" is said before the request is read, so sending it again is always safe
            if error.error != "busy" or retries == 0:
                raise error
            retries -= 1
            time.sleep(BUSY_PAUSE_S)

    def close(self) -> None:
        self._endpoint.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _api_error(status: int, body: bytes) -> ApiError:
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        detail = doc.get("detail")
        return ApiError(status, doc["error"][:100],
                        detail[:1000] if isinstance(detail, str) else None)
    text = body[:200].decode("utf-8", "replace").strip()
    return ApiError(status, f"http_{status}", text or None)
