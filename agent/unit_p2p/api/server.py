"""The agent's local HTTP API (see docs/api.md): routes and access, served by ``api.http``.

Two listeners, one set of routes:

- a unix socket (always), created here with mode 0660 and the configured group before it
  listens, so it is never briefly world-accessible;
- a loopback TCP listener (only when configured) that demands ``Authorization: Bearer <token>``,
  compared in constant time.
"""

from __future__ import annotations

import grp
import hmac
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import trio

from unit_p2p import jsonstrict
from unit_p2p.api.http import Limits, Request, Response, json_response, problem, serve_listener
from unit_p2p.api.token import read_token
from unit_p2p.errors import (
    BadDocument,
    PublishRefused,
    RevisionRejected,
    SettingsError,
    SyncError,
    SyncRetryLater,
    UnitError,
    UnitRejected,
    UnitUnreachable,
    UnknownRevision,
)
from unit_p2p.metrics import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from unit_p2p.agent import AgentView

log = logging.getLogger("unit_p2p.api")

#: characters of an error's detail; the rest is cut
MAX_DETAIL = 500
# bodies bigger than this are parsed in a worker thread
_PARSE_IN_THREAD = 256 * 1024
Handler = Callable[[dict], Awaitable[tuple[int, Any]]]


class ApiProblem(Exception):
    def __init__(self, status: int, error: str, detail: str):
        self.status, self.error, self.detail = status, error, detail
        super().__init__(detail)


class AgentApi:
    """Routes requests to the agent; knows nothing about sockets."""

    def __init__(self, agent: AgentView):
        self.agent = agent
        self.routes: dict[tuple[str, str], Handler] = {
            ("GET", "/v1/healthz"): self.healthz,
            ("GET", "/v1/status"): self.status,
            ("GET", "/v1/peers"): self.peers,
            ("GET", "/v1/config"): self.config,
            ("POST", "/v1/publish"): self.publish,
            ("POST", "/v1/wait"): self.wait,
            ("GET", "/v1/revisions"): self.revisions,
            ("GET", REVISION_ROUTE): self.revision,
            ("POST", "/v1/rollback"): self.rollback,
            ("GET", "/v1/rollout"): self.rollout,
            ("GET", ROLLOUT_ROUTE): self.rollout,
            ("POST", "/v1/rollout/resume"): self.rollout_resume,
            ("POST", "/v1/rollout/abort"): self.rollout_abort,
        }

    # --- the server's side ----------------------------------------------------------------------

    def admit(self, request: Request) -> Response | None:
        """404/405 before any body is read."""
        path, _ = _route_path(request)
        if (request.method, path) in self.routes or (request.method, path) == ("GET", "/metrics"):
            return None
        if path == "/metrics" or any(p == path for _, p in self.routes):
            return problem(405, "method_not_allowed",
                           f"{jsonstrict.clip(request.method, 20)} is not allowed on {path}")
        return problem(404, "not_found", f"no such endpoint: {jsonstrict.clip(path)}")

    async def respond(self, request: Request) -> Response:
        path, param = _route_path(request)
        if path == "/metrics":
            return Response(200, self.agent.metrics.render(), CONTENT_TYPE_LATEST)
        try:
            body = {}
            if request.body.strip():
                try:
                    if len(request.body) > _PARSE_IN_THREAD:
                        # a config of megabytes takes about a second to parse and check; in a
                        # thread the event loop keeps serving status and the mesh meanwhile
                        body = await trio.to_thread.run_sync(jsonstrict.loads, request.body)
                    else:
                        body = jsonstrict.loads(request.body)
                except jsonstrict.StrictJSONError as exc:
                    raise ApiProblem(400, "bad_request", f"body is not valid JSON: {exc}") \
                        from None
                if not isinstance(body, dict):
                    raise ApiProblem(400, "bad_request", "body must be a JSON object")
            if param is not None:
                body = {"revision": param}
            status, payload = await self.routes[(request.method, path)](body)
        except ApiProblem as exc:
            status, payload = exc.status, {"error": exc.error, "detail": exc.detail}
        except UnitUnreachable as exc:
            status, payload = 503, {"error": "unit_unreachable", "detail": str(exc)}
        except UnitRejected as exc:
            if exc.method in ("PUT", "POST", "DELETE"):  # Unit refused the change it was given
                status, payload = 422, {"error": "unit_rejected", "detail": str(exc)}
            else:  # a read failed: Unit's fault, not the request's
                status, payload = 502, {"error": "unit_error", "detail": str(exc)}
        except UnitError as exc:
            status, payload = 502, {"error": "unit_error", "detail": str(exc)}
        except SyncError as exc:
            if isinstance(exc, PublishRefused):
                code = 413 if exc.reason == "too_large" else 409
            elif isinstance(exc, RevisionRejected | BadDocument):  # cannot apply or publish it
                code = 422
            elif isinstance(exc, UnknownRevision):
                code = 404
            elif isinstance(exc, SyncRetryLater):  # no holder now: the client may retry
                code = 503
            else:
                code = 500
            # the code is the reason already; the detail need not repeat it
            detail = exc.detail
            status, payload = code, {"error": exc.reason, "detail": detail}
        if status >= 400 and len(payload["detail"]) > MAX_DETAIL:
            # Unit's own messages quote the config, whose keys can be any length
            payload["detail"] = payload["detail"][:MAX_DETAIL - 1] + "…"
        return json_response(status, payload)

    # --- handlers -----------------------------------------------------------------------------

    async def healthz(self, _: dict) -> tuple[int, Any]:
        return 200, self.agent.health()

    async def status(self, _: dict) -> tuple[int, Any]:
        return 200, self.agent.status()

    async def peers(self, _: dict) -> tuple[int, Any]:
        return 200, {"peers": self.agent.peers()}

    async def config(self, _: dict) -> tuple[int, Any]:
        return 200, await self.agent.local_config()

    async def publish(self, req: dict) -> tuple[int, Any]:
        staged = {k: req.pop(k) for k in ("stages", "max_failures", "auto_revert") if k in req}
        options = {**_publish_options(req, "config", *_RESOURCES), **_staged_options(staged)}
        config = req.get("config")
        if config is not None and not isinstance(config, dict):
            raise ApiProblem(422, "not_an_object", "config must be a JSON object")
        for kind in _RESOURCES:
            given = req.get(kind)
            if given is not None and not (isinstance(given, dict) and all(
                    isinstance(v, str) for v in given.values())):
                raise ApiProblem(400, "bad_request", f"{kind} must be an object of NAME -> text")
            if given:
                options[kind] = given
        result = await self.agent.publish(config, **options)
        return 200, result.to_json(with_diff=options["dry_run"] or req.get("diff", False))

    async def revisions(self, _: dict) -> tuple[int, Any]:
        return 200, {"revisions": await self.agent.revisions()}

    async def revision(self, req: dict) -> tuple[int, Any]:
        return 200, await self.agent.revision(req["revision"])

    async def rollback(self, req: dict) -> tuple[int, Any]:
        options = _publish_options(req, "revision")
        revision = req.get("revision")
        if revision is not None and not isinstance(revision, str):
            raise ApiProblem(400, "bad_request", "revision must be a string")
        target, result = await self.agent.rollback(revision, **options)
        answer = result.to_json(with_diff=options["dry_run"] or req.get("diff", False))
        return 200, {**answer, "rolled_back_to": target}

    async def rollout(self, req: dict) -> tuple[int, Any]:
        return 200, await self.agent.rollout(_optional_revision(req, set()))

    async def rollout_resume(self, req: dict) -> tuple[int, Any]:
        next_wave = req.get("next", False)
        if not isinstance(next_wave, bool):
            raise ApiProblem(400, "bad_request", "next must be true or false")
        return 200, await self.agent.rollout_resume(_optional_revision(req, {"next"}), next_wave)

    async def rollout_abort(self, req: dict) -> tuple[int, Any]:
        revert = req.get("revert", False)
        if not isinstance(revert, bool):
            raise ApiProblem(400, "bad_request", "revert must be true or false")
        return 200, await self.agent.rollout_abort(_optional_revision(req, {"revert"}), revert)

    async def wait(self, req: dict) -> tuple[int, Any]:
        from unit_p2p.sync.revision import Revision

        unknown = set(req) - {"revision", "timeout", "min_peers", "require_all"}
        if unknown:
            raise ApiProblem(400, "bad_request", _unknown_fields(unknown))
        try:
            revision = Revision.parse(req.get("revision"))
        except ValueError:
            raise ApiProblem(400, "bad_request",
                             f"revision {jsonstrict.clip(req.get('revision'))} is not "
                             "COUNTER@PEER_ID") from None
        require_all = req.get("require_all", True)
        if not isinstance(require_all, bool):
            raise ApiProblem(400, "bad_request", "require_all must be true or false")
        timeout, min_peers = _wait_args(req)
        result = await self.agent.wait(
            revision, timeout=timeout, min_peers=min_peers, require_all=require_all)
        return 200, result.to_json(with_diff=False)


#: what a publish may carry besides its config: NAME -> text (a PEM bundle, a module's source)
_RESOURCES = ("certificates", "js_modules")


def _publish_options(req: dict, *subject: str) -> dict[str, Any]:
    """The options a publish and a rollback share, checked; ``subject``: the other fields
    the request may have (the config and resources, the revision)."""
    unknown = set(req) - {*subject, "wait", "timeout", "dry_run", "min_peers", "require_all",
                          "diff", "force"}
    if unknown:
        raise ApiProblem(400, "bad_request", _unknown_fields(unknown))
    for name in ("wait", "dry_run", "require_all", "diff", "force"):
        if name in req and not isinstance(req[name], bool):
            raise ApiProblem(400, "bad_request", f"{name} must be true or false")
    timeout, min_peers = _wait_args(req)
    return {"dry_run": req.get("dry_run", False), "wait": req.get("wait", False),
            "timeout": timeout, "min_peers": min_peers,
            "require_all": req.get("require_all", True), "force": req.get("force", False)}


def _staged_options(req: dict) -> dict[str, Any]:
    """A staged rollout's options (docs/rollout.md), checked; none for a plain publish."""
    if "stages" not in req:
        if req:
            raise ApiProblem(400, "bad_request", "max_failures and auto_revert need stages")
        return {}
    stages = req["stages"]
    if not isinstance(stages, list) or not 1 <= len(stages) <= 100 or not all(
            (isinstance(s, int) and not isinstance(s, bool)) or isinstance(s, str)
            or (isinstance(s, list) and all(isinstance(p, str) for p in s)) for s in stages):
        raise ApiProblem(400, "bad_request", "stages must be a list of 1-100 host counts (3), "
                         'shares ("10%") or lists of peer IDs, ending with "100%"')
    max_failures = req.get("max_failures", 0)
    if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 0:
        raise ApiProblem(400, "bad_request", "max_failures must be a non-negative integer")
    auto_revert = req.get("auto_revert", False)
    if not isinstance(auto_revert, bool):
        raise ApiProblem(400, "bad_request", "auto_revert must be true or false")
    return {"stages": stages, "max_failures": max_failures, "auto_revert": auto_revert}


def _optional_revision(req: dict, allowed: set[str]) -> str | None:
    unknown = set(req) - {"revision"} - allowed
    if unknown:
        raise ApiProblem(400, "bad_request", _unknown_fields(unknown))
    revision = req.get("revision")
    if revision is not None and not isinstance(revision, str):
        raise ApiProblem(400, "bad_request", "revision must be a string")
    return revision


def _wait_args(req: dict) -> tuple[float, int | None]:
    timeout = req.get("timeout", 30)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not (
            0 < timeout <= 3600):
        raise ApiProblem(400, "bad_request", "timeout must be a number of seconds in (0, 3600]")
    min_peers = req.get("min_peers")
    if min_peers is not None and (isinstance(min_peers, bool) or not isinstance(min_peers, int)
                                  or min_peers < 0):
        raise ApiProblem(400, "bad_request", "min_peers must be a non-negative integer")
    return float(timeout), min_peers


def _unknown_fields(names: set[str]) -> str:
    shown = ", ".join(jsonstrict.clip(n, 40) for n in sorted(names)[:5])
    return f"unknown fields: {shown}" + (f" and {len(names) - 5} more" if len(names) > 5 else "")


#: the routes with a parameter: GET /v1/revisions/<COUNTER@PEER_ID | COUNTER | head | previous>
#: and GET /v1/rollout/<COUNTER@PEER_ID | COUNTER>
REVISION_ROUTE = "/v1/revisions/{revision}"
ROLLOUT_ROUTE = "/v1/rollout/{revision}"


def _route_path(request: Request) -> tuple[str, str | None]:
    """The route's path and its parameter, if it has one."""
    path = request.path.rstrip("/") or "/"
    for route in (REVISION_ROUTE, ROLLOUT_ROUTE):
        prefix, _, rest = path.partition(route.removesuffix("{revision}"))
        if not prefix and rest and "/" not in rest and (
                request.method == "GET" or route == REVISION_ROUTE):
            return route, unquote(rest)
    return path, None


class TokenGuard:
    """Wraps the routes for the TCP listener: no valid bearer token, no access (and no body is
    read from a client without one)."""

    def __init__(self, app: AgentApi, token: str):
        self.app = app
        self.expected = f"Bearer {token}".encode()

    def admit(self, request: Request) -> Response | None:
        given = request.headers.get(b"authorization", b"")
        if not hmac.compare_digest(given, self.expected):
            answer = problem(401, "unauthorized",
                             "a valid bearer token is required (unit-p2p --token-file FILE)")
            answer.headers.append((b"www-authenticate", b"Bearer"))
            return answer
        return self.app.admit(request)

    async def respond(self, request: Request) -> Response:
        return await self.app.respond(request)


# --- sockets ----------------------------------------------------------------------------------


def bind_unix_socket(path: Path, group: str | None) -> socket.socket:
    """Bind the API socket with mode 0660 (and ``group``) from the first instant.

    A stale socket file is replaced, but a live one (another agent answers there) is an error:
    silently stealing another agent's socket would leave it running unreachable.
    """
    gid = -1
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise SettingsError(f"group {jsonstrict.clip(group)} does not exist",
                                key="api_group") from None
    try:
        return _bind_unix_socket(path, gid)
    except OSError as exc:
        raise SettingsError(f"cannot listen on {path}: {exc.strerror or exc}", key="api") \
            from None


def _bind_unix_socket(path: Path, gid: int) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(path):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise SettingsError(f"{path} exists and is not a socket", key="api")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale: nobody listens
        else:
            raise SettingsError(f"another process is already serving {path}", key="api")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o117)
    try:
        sock.bind(str(path))
        os.chown(path, -1, gid)
        os.chmod(path, 0o660)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    return sock


def bind_tcp_socket(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as exc:
        sock.close()
        raise SettingsError(f"cannot listen on {address}: {exc.strerror}", key="api_tcp") from None
    sock.listen(128)
    return sock


def api_limits(settings: Any) -> Limits:
    """A body holds one config (at most ``max_config_bytes`` in its compact form) plus the
    request's few fields; JSON escapes and indentation can double it."""
    return Limits(max_body=2 * settings.max_config_bytes + 64 * 1024)


async def serve_api(agent: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the API on the unix socket and, if configured, loopback TCP with a token."""
    settings = agent.settings
    app = AgentApi(agent)
    limits = api_limits(settings)
    unix_path = Path(settings.api.removeprefix("unix:"))
    # outside the try: a socket another agent serves is not ours to remove
    listeners = [(bind_unix_socket(unix_path, settings.api_group), app)]
    try:
        if settings.api_tcp:
            token = read_token(settings.api_token_file, private=True)
            listeners.append((bind_tcp_socket(settings.api_tcp), TokenGuard(app, token)))
        async with trio.open_nursery() as nursery:
            for sock, service in listeners:
                listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
                await nursery.start(serve_listener, listener, service, limits)
            log.info("API listening on %s%s", settings.api,
                     f" and {settings.api_tcp} (token)" if settings.api_tcp else "")
            task_status.started([settings.api] + ([settings.api_tcp] if settings.api_tcp else []))
    finally:
        for sock, _ in listeners:
            sock.close()
        unix_path.unlink(missing_ok=True)  # noqa: ASYNC240 - one syscall at shutdown
