"""An emulator of NGINX Unit 1.35's control API, for tests and demos. It is not a web server.

Real NGINX Unit is in no package registry the project can use, so tests, the local demo and the
container tests run this stand-in instead. It answers the control API the way the recorded
Unit 1.35.0 does (``shared/unit-fixtures``; checked by ``tests/emulator/test_contract.py``). Its
loopback listeners (every TCP listener with ``all_addresses``) are served thinly: TLS with the
configured bundles (SNI picks among several, as in Unit) and ``return`` actions; see
:mod:`.dataplane`.

Usage in a trio test::

    emulator = UnitEmulator(f"unix:{tmp_path}/control.sock")
    address = await nursery.start(emulator.serve)     # "unix:/.../control.sock"
    ...
    emulator.config          # a copy of the current configuration tree
    emulator.put_count       # PUT requests received on /config

From the command line: ``unit-p2p unit-emulator --control unix:/tmp/control.sock`` (see
:mod:`unit_p2p.unit.emulator.cli`).

What is modelled
    ``/config`` GET/PUT/POST/DELETE on any path (array indices, percent-decoded keys such as
    ``%2F``, query strings ignored, trailing slash ignored, PUT needs the parent, POST appends to
    arrays only); whole-configuration validation after every write with Unit's ``detail``
    sentences (see :mod:`.validate`); atomic rejection (a 400 or 500 leaves the old configuration
    in place); Unit's JSON dialect (comments, trailing commas, BOM, duplicate keys refused,
    error ``location``; see :mod:`.jsonparse`) and its byte-exact pretty printing; ``/status``
    (modules, zero counters, one entry per application); ``/`` ; ``/certificates`` (real PEM
    parsing with ``cryptography``, the same description Unit gives, in-use protection);
    ``/js_modules`` and ``settings.js_module`` (a Unit built with njs; ``njs=False`` for one
    without);
    ``/control/applications/<name>/restart``; HTTP framing quirks (1024-byte header limit, no
    keep-alive, body without ``Content-Length``, answers cut at the send buffer of a unix control
    socket); 500 "Failed to apply new configuration." when a
    loopback listener port cannot be bound or a unix listener's directory is missing (see
    :mod:`.listeners`); a state directory (``conf.json``, ``certs/`` and ``scripts/``, written
    atomically and reloaded at start).

Fault injection
    In process: ``emulator.fail_next_puts(n=1, status=500)`` makes the next ``n`` valid PUTs on
    ``/config`` fail with that status and "Failed to apply new configuration." (nothing changes,
    as when a port is taken); ``await emulator.stop_listening()`` closes the control socket (a
    unix socket file is removed, so clients see it vanish) and ``await
    emulator.start_listening()`` brings it back at the same path or port.

    Other processes: start with ``admin="unix:/path/admin.sock"`` (CLI ``--admin``) and use its
    JSON endpoints, one request per connection: ``GET /state`` (put_count, applied_count,
    listening, pending_failures, config), ``POST /fail-next-puts`` with ``{"n": 1, "status":
    500}``, ``POST /stop-listening``, ``POST /start-listening``. Each POST answers with the state.

Not modelled (known differences from Unit 1.35)
    Serving traffic beyond TLS and ``return`` actions (shares, proxies, applications never
    run: 503); application
    start failures (a PUT with a missing module file or application path is accepted, where
    Unit answers 500); validation of ``match`` patterns, ``settings`` (but ``js_module``),
    ``access_log``, language-specific application options, isolation and upstream servers
    (accepted as sent); compiling JS modules (any text is stored); ``/status`` counters and
    per-application request numbers (always zero); multiple versions of one language module;
    Unit's handling of ``.``/``..`` path segments; binding wildcard or non-loopback listener
    addresses (only with ``all_addresses``) and unix ones (a unix listener's directory must
    exist);
    ``max_body_size``-like limits (the emulator refuses bodies over 256 MiB by closing the
    connection); request timing (the emulator closes idle connections after 60 s).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unit_p2p.errors import EmulatorError

if TYPE_CHECKING:
    from unit_p2p.unit.emulator.server import UnitEmulator

__all__ = ["EmulatorError", "UnitEmulator"]


def __getattr__(name: str) -> Any:
    # Loaded on first use: ``unit-p2p --help`` and the agent import this package only for the
    # emulator subcommand's argument parser, and the server pulls in trio and cryptography.x509.
    if name == "UnitEmulator":
        from unit_p2p.unit.emulator.server import UnitEmulator

        return UnitEmulator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
