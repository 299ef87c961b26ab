"""The control API's semantics: what Unit 1.35 answers to a method and a path.

This is the part of ``nxt_controller.c`` the emulator reproduces, independent of sockets: it
takes a parsed request and returns the status and the JSON body. Routing:

* ``/config[/...]`` GET/PUT/POST/DELETE; other methods, POST on ``/config`` itself or on a
  non-array get 405 "Method isn't allowed.";
* ``/status[/...]`` GET only (else 405 "Invalid method."), a missing path is 404 "Invalid path.";
* ``/certificates[/<name>[/...]]`` GET, PUT ``<name>``, DELETE ``<name>`` (else 405
  "Invalid method.");
* ``/js_modules[/<name>[/...]]`` (a Unit built with njs, the default here) GET, PUT ``<name>``,
  DELETE ``<name>``; a write without exactly one name is 400 "Invalid JS module name.", other
  methods 405 "Invalid method." (``nxt_controller_process_script``);
* ``/control/applications/<name>/restart`` GET only (else 405 "Method isn't allowed.");
* ``/`` GET only (else 405 "Invalid method."): certificates, js_modules (with njs), config
  and status together;
* anything else: 404 "Value doesn't exist.".

A write is: parse the body (400 "Invalid JSON."), build the new tree (404/405), validate the
whole of it (400 "Invalid configuration."), apply it (500 "Failed to apply new configuration.":
injected failures and listener sockets that cannot be bound), persist it, and only then make it
current. Writes are serialized.
"""

from __future__ import annotations

import collections
import copy
import logging
import re
import ssl
from dataclasses import dataclass

import trio

from unit_p2p.unit.emulator import tree
from unit_p2p.unit.emulator.certs import Bundle, InvalidCertificate, load_bundle
from unit_p2p.unit.emulator.dataplane import (
    TLSSetupError,
    build_tls_context,
    serve_listener_connection,
)
from unit_p2p.unit.emulator.jsonparse import JSONParseError, dumps_compact, parse
from unit_p2p.unit.emulator.listeners import ListenerBindError, ListenerSockets, parse_listener
from unit_p2p.unit.emulator.state import EmulatorError, StateDir
from unit_p2p.unit.emulator.validate import (
    DEFAULT_MODULES,
    ConfigInvalid,
    listener_names,
    validate,
)

__all__ = ["FRESH_CONFIG", "Controller", "Reply"]

log = logging.getLogger("unit_p2p.unit.emulator")

#: What a Unit that never had a configuration returns for GET /config.
FRESH_CONFIG: dict = {"listeners": {}, "routes": [], "applications": {}}

_BOM = b"\xef\xbb\xbf"


@dataclass
class Reply:
    status: int
    body: object


def _error(status: int, title: str, detail: str | None = None) -> Reply:
    body: dict = {"error": title}
    if detail is not None:
        body["detail"] = detail
    return Reply(status, body)


_DONE = Reply(200, {"success": "Reconfiguration done."})
_NOT_FOUND = _error(404, "Value doesn't exist.")
_NOT_ALLOWED = _error(405, "Method isn't allowed.")
_INVALID_METHOD = _error(405, "Invalid method.")
_APPLY_FAILED = _error(500, "Failed to apply new configuration.")
_CERT_MISSING = _error(404, "Certificate doesn't exist.")
_SCRIPT_MISSING = _error(404, "JS module doesn't exist.")
_INVALID_PATH = _error(404, "Invalid path.")
_NAME_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")


def _parse_body(body: bytes) -> object:
    if body.startswith(_BOM):
        body = body[3:]
    return parse(body)


def _invalid_json(err: JSONParseError) -> Reply:
    reply = _error(400, "Invalid JSON.", err.detail)
    reply.body["location"] = {  # type: ignore[index]
        "offset": err.offset,
        "line": err.line,
        "column": err.column,
    }
    return reply


def _clean(target: str) -> str:
    """The path of a request target: no query string, no trailing slash."""
    path = target.split("?", 1)[0]
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    return path


def _split_prefix(path: str, prefix: str) -> str | None:
    """The rest of ``path`` below ``prefix`` ("/" for the prefix itself), or None."""
    if path == prefix:
        return "/"
    if path.startswith(prefix + "/"):
        return path[len(prefix) :]
    return None


def _resource_path(sub: str) -> tuple[str, str | None]:
    """A certificate's or JS module's name and the path below it (None if there is none).

    The name is the first segment as Unit's request parser leaves it: percent escapes decoded,
    except ``%2F`` and ``%25``, which stay as they are (so a name never holds a ``/``).
    """
    name, sep, rest = sub[1:].partition("/")

    def decode(m: re.Match) -> bytes:
        return m.group(0) if m.group(1).upper() in (b"2F", b"25") else bytes.fromhex(m[1].decode())

    raw = _NAME_ESCAPE.sub(decode, name.encode("utf-8", "surrogateescape"))
    return raw.decode("utf-8", "surrogateescape"), ("/" + rest if sep else None)


def cert_names_in_use(conf: object) -> list[str]:
    """The certificate names the listeners of ``conf`` use, in order, without repeats."""
    used: dict[str, None] = {}
    for names in tls_certificates(conf).values():
        used.update(dict.fromkeys(names))
    return list(used)


def tls_certificates(conf: object) -> dict[str, list[str]]:
    """The certificate names of every TLS listener of ``conf``, in the order configured."""
    out: dict[str, list[str]] = {}
    listeners = conf.get("listeners") if isinstance(conf, dict) else None
    if not isinstance(listeners, dict):
        return out
    for name, listener in listeners.items():
        tls = listener.get("tls") if isinstance(listener, dict) else None
        cert = tls.get("certificate") if isinstance(tls, dict) else None
        if isinstance(cert, str):
            out[name] = [cert]
        elif isinstance(cert, list):
            out[name] = [c for c in cert if isinstance(c, str)]
    return out


class Controller:
    """The emulated controller's state and request handling (no I/O except the state dir)."""

    def __init__(
        self,
        *,
        state_dir: StateDir | None = None,
        modules: dict[str, dict[str, str]] | None = None,
        bind_listeners: bool = True,
        all_addresses: bool = False,
        njs: bool = True,
    ):
        self.state_dir = state_dir
        #: JS modules by name (their text), or None for a Unit built without njs
        self.scripts: dict[str, str] | None = {} if njs else None
        self.modules = dict(DEFAULT_MODULES) if modules is None else modules
        self.listeners = ListenerSockets(enabled=bind_listeners, all_addresses=all_addresses)
        #: the TLS context of each served TLS listener, by listener name
        self._tls: dict[str, ssl.SSLContext] = {}
        #: contexts by their bundles' contents, so an unchanged listener keeps its context
        self._tls_cache: dict[tuple[bytes, ...], ssl.SSLContext] = {}
        self.conf: object = copy.deepcopy(FRESH_CONFIG)
        self.certs: dict[str, Bundle] = {}
        #: PUT requests received on /config (whatever their outcome)
        self.put_count = 0
        #: configuration writes that succeeded (PUT, POST, DELETE)
        self.applied_count = 0
        self._failures: collections.deque[int] = collections.deque()
        self._lock = trio.Lock()

    # ------------------------------------------------------------------ state

    def load_state(self) -> None:
        """Reload the state directory (blocking: call before serving or from a thread)."""
        if self.state_dir is None:
            return
        self.state_dir.prepare()
        for name, pem in self.state_dir.read_certificates().items():
            try:
                self.certs[name] = load_bundle(pem)
            except InvalidCertificate as exc:
                raise EmulatorError(f"state dir certificate {name!r}: {exc}") from exc
        if self.scripts is not None:
            for name, text in self.state_dir.read_scripts().items():
                self.scripts[name] = text.decode("utf-8", "surrogateescape")
        raw = self.state_dir.read_config()
        if raw is None:
            return
        try:
            conf = parse(raw)
            self._validate(conf)
        except (JSONParseError, ConfigInvalid) as exc:
            raise EmulatorError(
                f"{self.state_dir.conf_file}: unusable configuration: {exc}"
            ) from exc
        try:
            fresh = self.listeners.prepare(listener_names(conf))
        except ListenerBindError as exc:
            # Unit starts anyway and logs; the listener stays unbound until the next write.
            log.warning("%s", exc)
            fresh = {}
        try:
            tls = self._tls_plan(conf)
        except TLSSetupError as exc:
            log.warning("TLS listeners not served: %s", exc)
            tls = {}
        self.listeners.commit(listener_names(conf), fresh)
        self._commit_tls(tls)
        self.conf = conf

    def fail_next_puts(self, n: int = 1, status: int = 500) -> None:
        if n < 0 or not 400 <= status <= 599:
            raise ValueError("n must be >= 0 and status a 4xx/5xx code")
        self._failures.extend([status] * n)

    @property
    def pending_failures(self) -> int:
        return len(self._failures)

    def close(self) -> None:
        self.listeners.close()

    def status_tree(self) -> dict:
        apps: dict = {}
        conf_apps = self.conf.get("applications") if isinstance(self.conf, dict) else None
        if isinstance(conf_apps, dict):
            for name, app in conf_apps.items():
                procs = app.get("processes", 1) if isinstance(app, dict) else 1
                running = procs.get("spare", 0) if isinstance(procs, dict) else procs
                apps[name] = {
                    "processes": {"running": running, "starting": 0, "idle": running},
                    "requests": {"active": 0},
                }
        return {
            "modules": copy.deepcopy(self.modules),
            # The emulator counts no traffic, so the data-plane counters stay at zero.
            "connections": {"accepted": 0, "active": 0, "idle": 0, "closed": 0},
            "requests": {"total": 0},
            "applications": apps,
        }

    # --------------------------------------------------------------- requests

    def read(self, target: str) -> Reply | None:
        """The answer to ``GET target`` if the target is under /config (None otherwise):
        reading needs no lock and no I/O, so the server may answer it without a task."""
        sub = _split_prefix(_clean(target), "/config")
        if sub is None:
            return None
        try:
            return Reply(200, tree.get(self.conf, tree.split_path(sub)))
        except tree.NotFound:
            return _NOT_FOUND

    async def handle(self, method: str, target: str, body: bytes) -> Reply:
        path = _clean(target)
        if (sub := _split_prefix(path, "/config")) is not None:
            if method == "GET":
                return self.read(target)  # type: ignore[return-value]
            return await self._config(method, sub, body)
        if (sub := _split_prefix(path, "/status")) is not None:
            return self._status(method, sub)
        if (sub := _split_prefix(path, "/certificates")) is not None:
            return await self._certificates(method, sub, body)
        if self.scripts is not None and (sub := _split_prefix(path, "/js_modules")) is not None:
            return await self._js_modules(method, sub, body)
        if (sub := _split_prefix(path, "/control")) is not None:
            return self._control(method, sub)
        if path == "/":
            if method != "GET":
                return _INVALID_METHOD
            root: dict = {"certificates": {n: b.info for n, b in self.certs.items()}}
            if self.scripts is not None:
                root["js_modules"] = dict(self.scripts)
            root["config"] = self.conf
            root["status"] = self.status_tree()
            return Reply(200, root)
        return _NOT_FOUND

    async def _config(self, method: str, sub: str, body: bytes) -> Reply:
        tokens = tree.split_path(sub)
        if method == "PUT":
            self.put_count += 1
        elif method == "POST":
            if tokens == []:
                return _NOT_ALLOWED
        elif method != "DELETE":
            return _NOT_ALLOWED
        async with self._lock:
            if method == "DELETE":
                value = None
            else:
                try:
                    value = _parse_body(body)
                except JSONParseError as err:
                    return _invalid_json(err)
            try:
                if method == "PUT":
                    new_conf = tree.put(self.conf, tokens, value)
                elif method == "POST":
                    new_conf = tree.append(self.conf, tokens, value)
                else:
                    new_conf = {} if tokens == [] else tree.delete(self.conf, tokens)
            except tree.NotFound:
                return _NOT_FOUND
            except tree.NotAllowed:
                return _NOT_ALLOWED
            return await self._apply(new_conf, injectable=method == "PUT")

    def _validate(self, conf: object) -> None:
        validate(conf, modules=self.modules, certificates=self.certs, js_modules=self.scripts)

    async def _apply(self, new_conf: object, *, injectable: bool) -> Reply:
        try:
            self._validate(new_conf)
        except ConfigInvalid as exc:
            return _error(400, "Invalid configuration.", str(exc))
        if injectable and self._failures:
            status = self._failures.popleft()
            return _error(status, "Failed to apply new configuration.")
        if not all(self.certs[n].key_matches for n in cert_names_in_use(new_conf)):
            # OpenSSL refuses a key that does not belong to the certificate when the router
            # sets up the listener, so the whole reconfiguration fails.
            return _APPLY_FAILED
        try:
            tls = self._tls_plan(new_conf)
        except TLSSetupError:
            return _APPLY_FAILED
        names = listener_names(new_conf)
        try:
            fresh = self.listeners.prepare(names)
        except ListenerBindError:
            return _APPLY_FAILED
        if self.state_dir is not None:
            data = dumps_compact(new_conf)
            try:
                await trio.to_thread.run_sync(self.state_dir.write_config, data)
            except OSError:
                self.listeners.abort(fresh)
                return _APPLY_FAILED
        self.listeners.commit(names, fresh)
        self._commit_tls(tls)
        self.conf = new_conf
        self.applied_count += 1
        return _DONE

    def _tls_plan(self, conf: object) -> dict[str, tuple[tuple[bytes, ...], ssl.SSLContext]]:
        """The TLS context of every TLS listener of ``conf`` that the emulator serves, with
        the bundles' contents it was made from (raises :class:`TLSSetupError`)."""
        plan = {}
        made: dict[tuple[bytes, ...], ssl.SSLContext] = {}
        for name, cert_names in tls_certificates(conf).items():
            if not self.listeners.binds(parse_listener(name)):
                continue
            bundles = [self.certs[c] for c in cert_names]
            key = tuple(b.pem for b in bundles)
            ctx = made.get(key) or self._tls_cache.get(key) or build_tls_context(bundles)
            made[key] = ctx
            plan[name] = (key, ctx)
        return plan

    def _commit_tls(self, plan: dict[str, tuple[tuple[bytes, ...], ssl.SSLContext]]) -> None:
        self._tls = {name: ctx for name, (_, ctx) in plan.items()}
        self._tls_cache = dict(plan.values())

    async def serve_listeners(
        self, *, read_timeout: float, task_status=trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve the configured listeners (see :mod:`.dataplane`) until cancelled."""

        async def handler(name: str, stream: trio.SocketStream) -> None:
            await serve_listener_connection(
                stream, name, self.conf, self._tls.get(name), timeout=read_timeout
            )

        await self.listeners.serve(handler, task_status=task_status)

    def _status(self, method: str, sub: str) -> Reply:
        if method != "GET":
            return _INVALID_METHOD
        try:
            return Reply(200, tree.get(self.status_tree(), tree.split_path(sub)))
        except tree.NotFound:
            return _error(404, "Invalid path.")

    def _control(self, method: str, sub: str) -> Reply:
        if method != "GET":
            return _NOT_ALLOWED
        tokens = tree.split_path(sub)
        if not tokens or len(tokens) != 3 or tokens[0] != "applications":
            return _NOT_FOUND
        if tokens[2] != "restart":
            return _NOT_FOUND
        apps = self.conf.get("applications") if isinstance(self.conf, dict) else None
        if not isinstance(apps, dict) or tokens[1] not in apps:
            return _NOT_FOUND
        return Reply(200, {"success": "Ok"})

    async def _certificates(self, method: str, sub: str, body: bytes) -> Reply:
        """``nxt_controller_process_cert``."""
        name, rest = _resource_path(sub)
        if method == "GET":
            if not name:
                return Reply(200, {n: b.info for n, b in self.certs.items()})
            if name not in self.certs:
                return _CERT_MISSING
            try:
                return Reply(200, tree.get(self.certs[name].info, tree.split_path(rest or "/")))
            except tree.NotFound:
                return _INVALID_PATH
        if not name or rest is not None:
            return _error(400, "Invalid certificate name.")
        if method not in ("PUT", "DELETE"):
            return _INVALID_METHOD
        async with self._lock:
            if method == "PUT":
                if name in self.certs:
                    return _error(400, "Certificate already exists.")
                try:
                    bundle = load_bundle(body)
                except InvalidCertificate:
                    return _error(400, "Invalid certificate.")
                if self.state_dir is not None:
                    try:
                        await trio.to_thread.run_sync(self.state_dir.write_certificate, name, body)
                    except OSError:
                        return _error(500, "Failed to store certificate.")
                self.certs[name] = bundle
                return Reply(200, {"success": "Certificate chain uploaded."})
            if name in cert_names_in_use(self.conf):
                return _error(400, "Certificate is used in the configuration.")
            if name not in self.certs:
                return _CERT_MISSING
            if self.state_dir is not None:
                try:
                    await trio.to_thread.run_sync(self.state_dir.delete_certificate, name)
                except OSError:
                    return _error(500, "Failed to delete certificate.")
            del self.certs[name]
            return Reply(200, {"success": "Certificate deleted."})

    def _script_in_use(self, name: str) -> bool:
        settings = self.conf.get("settings") if isinstance(self.conf, dict) else None
        used = settings.get("js_module") if isinstance(settings, dict) else None
        return name in used if isinstance(used, list) else name == used

    async def _js_modules(self, method: str, sub: str, body: bytes) -> Reply:
        """``nxt_controller_process_script``: a module's value is its text, as a string."""
        scripts = self.scripts
        assert scripts is not None
        name, rest = _resource_path(sub)
        if method == "GET":
            if not name:
                return Reply(200, dict(scripts))
            if name not in scripts:
                return _SCRIPT_MISSING
            if rest is not None:  # a sub-path of a string
                return _INVALID_PATH
            return Reply(200, scripts[name])
        if not name or rest is not None:
            return _error(400, "Invalid JS module name.")
        async with self._lock:
            if method == "PUT":
                if name in scripts:
                    return _error(400, "JS module already exists.")
                # Unit compiles the module with njs and refuses it with njs's message; the
                # emulator has no JavaScript compiler and takes any text.
                if self.state_dir is not None:
                    try:
                        await trio.to_thread.run_sync(self.state_dir.write_script, name, body)
                    except OSError:
                        return _error(500, "Failed to store script.")
                scripts[name] = body.decode("utf-8", "surrogateescape")
                return Reply(200, {"success": "JS module uploaded."})
            if method == "DELETE":
                if self._script_in_use(name):
                    return _error(400, "JS module is used in the configuration.")
                if name not in scripts:
                    return _SCRIPT_MISSING
                if self.state_dir is not None:
                    await trio.to_thread.run_sync(self.state_dir.delete_script, name)
                del scripts[name]
                return Reply(200, {"success": "JS module deleted."})
        return _INVALID_METHOD
