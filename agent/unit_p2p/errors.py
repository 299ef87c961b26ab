"""The exceptions unit-p2p raises, in one small hierarchy.

Lower-layer errors (requests, OSError, libp2p, yaml) are translated into these once, at the
boundary of the component that talks to that layer, so the rest of the agent handles a handful
of named errors instead of every library's own.

    UnitP2PError
    ├── SettingsError          bad settings file, variable or flag (CLI exits 2)
    ├── IdentityError          key file missing, unreadable, malformed or with loose permissions
    ├── UnitError              NGINX Unit's control API (see unit_p2p.unit.client)
    │   ├── UnitUnreachable        socket missing, connection refused, timeout
    │   ├── UnitShortAnswer        Unit's answer was cut short and could not be read in pieces
    │   └── UnitRejected           Unit answered with an error status
    │       ├── UnitInvalidJSON        400 "Invalid JSON."
    │       ├── UnitInvalidConfig      400 "Invalid configuration."
    │       ├── UnitPathNotFound       404 "Value doesn't exist." / "Invalid path."
    │       ├── UnitMethodNotAllowed   405
    │       └── UnitApplyFailed        500 "Failed to apply new configuration."
    ├── WireError              a malformed, oversized or unsupported wire message
    ├── MeshError              the mesh could not do what was asked: start or listen, dial,
    │                          open or use a stream, publish, or take a bad address or peer ID
    ├── SyncError              a revision could not be fetched, verified or applied
    │   ├── SyncRetryLater         nobody can serve it right now: kept and retried later
    │   ├── BadDocument            a peer served bytes that are not the announced document
    │   ├── RevisionRejected       this host cannot apply it (Unit refused, read-back differs,
    │   │                          disk): given up until a newer revision arrives
    │   ├── PublishRefused         a publish refused by a guard before anything changed (too
    │   │                          large; this host behind the mesh or holding an older config;
    │   │                          a blank config or one removing most of the head)
    │   └── UnknownRevision        a wait names a revision this host has never heard of; a
    │                              show/diff/rollback one it has no record or kept document of
    ├── ApiError               the agent's local API answered with an error (docs/api.md)
    ├── AgentUnreachable       the agent's API socket is missing, refused or timed out
    └── EmulatorError          the Unit emulator cannot start as asked
"""

from __future__ import annotations


class UnitP2PError(Exception):
    """Base class of every error unit-p2p raises on purpose."""


class SettingsError(UnitP2PError):
    """Settings are invalid. ``str(err)`` is one line naming the source, the key and the problem."""

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None):
        self.source = source
        self.key = key
        self.problem = message
        where = ": ".join(p for p in (source, key) if p)
        super().__init__(f"{where}: {message}" if where else message)


class IdentityError(UnitP2PError):
    """The identity key cannot be used."""


class UnitError(UnitP2PError):
    """NGINX Unit's control API failed."""


class UnitUnreachable(UnitError):
    """Unit's control socket is missing, refused the connection, or did not answer in time."""


class UnitShortAnswer(UnitError):
    """Unit answered, but with fewer body bytes than its Content-Length, and reading the value
    in smaller pieces did not work either. Unit is reachable: this is not an outage."""

    def __init__(self, message: str, *, path: str = "", received: int = 0, expected: int = 0):
        self.path = path
        self.received = received
        self.expected = expected
        super().__init__(message)


class UnitRejected(UnitError):
    """Unit answered with an error status. Carries Unit's own ``error``/``detail``/``location``."""

    status: int = 0

    def __init__(
        self,
        status: int,
        error: str,
        detail: str | None = None,
        location: dict | None = None,
        *,
        method: str = "",
        path: str = "",
    ):
        self.status = status
        self.error = error
        self.detail = detail
        self.location = location
        self.method = method
        self.path = path
        text = f"Unit {status} on {method} {path}: {error}".replace("  ", " ")
        if detail:
            text += f" {detail}"
        if location:
            text += f" (line {location.get('line')}, column {location.get('column')})"
        super().__init__(text)


class UnitInvalidJSON(UnitRejected):
    """400 "Invalid JSON." (with ``location``)."""


class UnitInvalidConfig(UnitRejected):
    """400 "Invalid configuration." (with ``detail``)."""


class UnitPathNotFound(UnitRejected):
    """404: the path does not exist."""


class UnitMethodNotAllowed(UnitRejected):
    """405: the method is not allowed on that path."""


class UnitApplyFailed(UnitRejected):
    """500 "Failed to apply new configuration.": valid, but Unit could not apply it (port taken,
    application failed to start). Unit keeps the old configuration."""


class WireError(UnitP2PError):
    """A wire message is malformed, oversized, of an unknown version or fails the schema."""

    def __init__(self, reason: str, message: str):
        #: a short machine-readable reason, used as a metrics label
        self.reason = reason
        #: the message without the reason, where the reason is shown apart (logs, API errors)
        self.detail = message
        super().__init__(f"{reason}: {message}")


class MeshError(UnitP2PError):
    """A mesh operation failed: the libp2p host could not start or listen, a dial, stream send,
    half-close or receive failed or timed out, a publish failed or was too large, or an address
    or peer ID given to the mesh is unusable. py-libp2p's own exceptions are translated into
    this once, where the mesh calls it, with the original as ``__cause__``."""


class SyncError(UnitP2PError):
    """A revision could not be fetched, verified or applied."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        #: the message without the reason, where the reason is shown apart (logs, API errors)
        self.detail = message
        super().__init__(f"{reason}: {message}")


class SyncRetryLater(SyncError):
    """Transient: no holder could serve the revision now; the reconciler keeps it and retries."""


class BadDocument(SyncError):
    """Not a shared config: not JSON, not an object, not representable in RFC 8785 JSON, or
    (served by a peer) another digest than announced. A peer that served it is refused and the
    next holder tried; a publish of it is refused (422)."""


class RevisionRejected(SyncError):
    """This host cannot apply the revision; it reports it failed and waits for a newer one."""


class PublishRefused(SyncError):
    """A publish was refused before anything changed: the config is larger than
    ``max_config_bytes`` (``too_large``), or publishing this host's Unit config would undo a
    newer revision (``behind_mesh``, ``stale_config``), or the config serves nothing
    (``blank_config``) or removes more than ``max_removed_share`` of the head's listeners,
    routes or applications (``shrink``); ``force`` publishes anyway, except ``too_large``."""


class UnknownRevision(SyncError):
    """A wait names a revision newer than anything this host has heard of (waiting on it would
    report a convergence that never happened), or a revision asked for by name (show, diff,
    rollback) is not in this host's history or its document is no longer kept."""


class ApiError(UnitP2PError):
    """The agent's local API answered with an error status and ``{"error", "detail"}``."""

    def __init__(self, status: int, error: str, detail: str | None = None):
        self.status = status
        #: the API's short code, e.g. "unit_rejected", "bad_request"
        self.error = error
        self.detail = detail
        super().__init__(f"agent API {status} {error}" + (f": {detail}" if detail else ""))


class AgentUnreachable(UnitP2PError):
    """The agent's API socket is missing, refused the connection or did not answer in time."""

    def __init__(self, message: str, *, kind: str = "failed"):
        #: "missing", "denied", "refused", "timeout", "closed" or "failed" (see httpunix)
        self.kind = kind
        super().__init__(message)


class EmulatorError(UnitP2PError):
    """The Unit emulator cannot start as asked (bad control address, unusable state directory)."""
