"""Load only the parts of py-libp2p 0.8.1 that a TCP + Noise + yamux agent runs.

``import libp2p`` costs ~81 MiB RSS, ~1,250 modules and ~0.6 s: the package's ``__init__``
(and its subpackages' ``__init__`` files) eagerly import QUIC (aioquic, service_identity),
TLS with ACME (httpx), WebSocket, circuit relay, bitswap, UPnP and the DNS stack of every
transport, whether or not a host ever uses them. The agent never does (docs/mesh.md), so its
process installs this import hook before anything imports libp2p:

1. **Package ``__init__`` files run on demand.** A libp2p package is created with its real
   ``__path__`` (so its submodules import normally) and its ``__init__`` runs only when code
   asks the package for a name no submodule import has set, e.g. ``from libp2p.pubsub.pb
   import rpc_pb2`` still works; ``import libp2p.peer.id`` no longer drags in all of libp2p.
2. **Subsystems the agent never runs are absent** (:data:`ABSENT`). Modules we do run import
   them at module level, for type annotations, ``isinstance`` checks, ``except`` clauses or
   features behind flags we keep off (``custom_types`` imports ``QUICStream`` for a ``Union``;
   ``net_stream`` catches ``QUICStreamResetError``; ``basic_host`` imports the ACME client, UPnP
   and bootstrap discovery). They get a placeholder module whose every name is a placeholder
   exception class: importing, annotating and ``except`` clauses work and never match,
   ``isinstance`` is always False (no such object can exist here), and calling it or anything
   read from it raises :class:`AbsentFeatureError` naming it, so a path we missed fails loudly
   instead of quietly doing something else. A module whose *functions* run on our paths is not
   absent, however little it seems to do (``kad_dht`` calls ``libp2p.bitswap.cid.parse_cid``).

Set ``UNIT_P2P_FULL_LIBP2P=1`` to load py-libp2p as published (for debugging; costs the RSS
above). Only the agent process installs the hook (``unit-p2p agent``); library users and the
test suite's in-process peers import libp2p normally, so the real-process tests cover the lean
agent and the in-process tests cover the full library.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import threading
import types
from collections.abc import Sequence

#: Subsystems a TCP + Noise + yamux + gossipsub + Kademlia agent never runs. Each one is only
#: imported, at module level, by modules we do run; see the module doc.
ABSENT: tuple[str, ...] = (
    "aioquic",
    "libp2p.transport.quic",
    "libp2p.transport.websocket",
    "libp2p.security.tls",
    "libp2p.relay",
    "libp2p.discovery.bootstrap",
    "libp2p.discovery.mdns",
    "libp2p.discovery.upnp",
)

#: Modules that do run, but rarely or never in a healthy fleet: loaded on first use instead of
#: at import. Each maps to the names whose *construction* is deferred as well (see
#: :class:`_DeferredModule`). Their exception classes must not be caught by modules loaded
#: before them (an ``except`` clause cannot match a placeholder's real class).
DEFERRED: dict[str, frozenset[str]] = {
    # Key types other than Ed25519 (pycryptodome, coincurve): only a peer with such a key
    # needs them, and the trust check refuses it right after the handshake anyway.
    "libp2p.crypto.rsa": frozenset(),
    "libp2p.crypto.secp256k1": frozenset(),
    # Private networks (pycryptodome's Salsa20): the host runs without a pre-shared key.
    "libp2p.security.pnet.psk_conn": frozenset(),
    # dnspython (with asyncio): the swarm builds a resolver it uses only for /dns addresses.
    "multiaddr.resolvers.dns": frozenset({"DNSResolver"}),
    # psutil: the resource manager builds a process handle for memory limits that py-libp2p
    # 0.8.1 never checks; multiaddr lists network interfaces with it for wildcard addresses.
    "psutil": frozenset({"Process"}),
    # IPNS records, which the DHT validates only when someone stores one.
    "cbor2": frozenset(),
    # BLAKE3 multihashes (a Rust extension): peer IDs and keys use SHA-256 and identity hashes.
    "blake3": frozenset(),
    # cryptography (a Rust extension with its own OpenSSL, ~9 MiB): Noise's crypto comes from
    # lean_noise.py (SUBSTITUTED); these are imported for an ``except`` clause Noise's own error
    # replaces, the ACME client's certificates and the encoding constants of key objects.
    "cryptography.exceptions": frozenset(),
    "cryptography.hazmat.primitives.serialization": frozenset(),
    "cryptography.x509": frozenset(),
    "cryptography.x509.oid": frozenset(),
}

#: Packages whose deferred modules give their *own* modules the real names (loading them): once
#: code of the package runs, the package is in use, and its ``except`` clauses must match its
#: own exceptions. (py-libp2p's deferred modules are there for py-libp2p's own importers.)
LOADED_FOR_OWN_MODULES = frozenset({"cryptography"})

#: Modules served by one of ours that provides the same names: Noise's X25519,
#: ChaCha20-Poly1305 and SHA-256 on PyNaCl and hashlib (``lean_noise.py``).
SUBSTITUTED: dict[str, str] = {
    "noise.backends.default": "unit_p2p.lean_noise",
    "noise.backends.default.keypairs": "unit_p2p.lean_noise",
    "libp2p.crypto.x25519": "unit_p2p.lean_noise",
}

FULL_ENV = "UNIT_P2P_FULL_LIBP2P"

_LOAD_LOCK = threading.RLock()


def is_absent(name: str, absent: Sequence[str] = ABSENT) -> bool:
    """True if module ``name`` is (inside) one of the ``absent`` subsystems."""
    return any(name == a or name.startswith(a + ".") for a in absent)


class AbsentFeatureError(RuntimeError):
    """A py-libp2p feature that the lean agent does not load was used."""


class _Placeholder(type):
    """Metaclass of the placeholder classes served by absent modules."""

    def __call__(cls, *args: object, **kwargs: object) -> object:
        raise AbsentFeatureError(
            f"{cls.__module__}.{cls.__qualname__} is not loaded: unit-p2p's agent runs "
            f"py-libp2p with TCP + Noise + yamux only (set {FULL_ENV}=1 to load everything)"
        )

    def __instancecheck__(cls, instance: object) -> bool:
        return False

    def __getattr__(cls, name: str) -> object:
        # A class attribute read at import time (e.g. into a dispatch table) must not fail;
        # calling it does.
        if name.startswith("__"):
            raise AttributeError(name)

        def absent(*args: object, **kwargs: object) -> object:
            return cls()

        absent.__qualname__ = f"{cls.__qualname__}.{name}"
        return absent


class _AbsentModule(types.ModuleType):
    def __getattr__(self, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        # An Exception subclass, so ``except (ValueError, Placeholder):`` is valid Python.
        placeholder = _Placeholder(
            name, (Exception,), {"__module__": self.__name__, "__qualname__": name}
        )
        setattr(self, name, placeholder)
        return placeholder


class _OnDemandPackage(types.ModuleType):
    """A package whose ``__init__`` runs the first time a name it defines is asked for."""

    def __getattr__(self, name: str) -> object:
        namespace = self.__dict__
        if name.startswith("__") or namespace.get("_unit_p2p_init_ran"):
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        namespace["_unit_p2p_init_ran"] = True
        loader = namespace["_unit_p2p_real_loader"]
        code = loader.get_code(self.__name__)
        if code is not None:
            exec(code, namespace)
        try:
            return namespace[name]
        except KeyError:
            raise AttributeError(
                f"module {self.__name__!r} has no attribute {name!r}"
            ) from None


class _DeferredModule(types.ModuleType):
    """A module loaded the first time something from it is used, not when it is imported.

    Names read from it before then are stand-ins: calling one, or reading an attribute from it
    and calling that, loads the real module into this same module object and forwards; an
    ``isinstance`` check is False until the module is loaded (none of its objects exist yet).
    Calling a name listed in :data:`DEFERRED` returns an object that builds the real one on
    first use, for a class that is constructed eagerly but used rarely (the swarm's resolver).
    In a package of :data:`LOADED_FOR_OWN_MODULES`, the package's own modules get real names,
    loading the module if need be.
    """

    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        namespace = self.__dict__
        if namespace.get("_unit_p2p_loaded"):
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        package = self.__name__.partition(".")[0]
        if package in LOADED_FOR_OWN_MODULES and _importing_package() == package:
            self._unit_p2p_load()
            return getattr(self, name)
        stand_in = _DeferredName(
            name, (Exception,), {"__module__": self.__name__, "__qualname__": name}
        )
        setattr(self, name, stand_in)
        return stand_in

    def _unit_p2p_load(self) -> None:
        namespace = self.__dict__
        # One lock for all: a worker thread may be first to use one (psutil, dnspython).
        with _LOAD_LOCK:
            if namespace.get("_unit_p2p_loaded"):
                return
            namespace["_unit_p2p_loaded"] = True
            spec = namespace["_unit_p2p_real_spec"]
            self.__spec__ = spec
            self.__loader__ = spec.loader
            self.__file__ = spec.origin
            self.__package__ = (
                spec.parent if spec.submodule_search_locations is None else spec.name
            )
            if spec.submodule_search_locations is not None:
                self.__path__ = list(spec.submodule_search_locations)
            try:
                spec.loader.exec_module(self)
            except BaseException:
                namespace["_unit_p2p_loaded"] = False  # the next use fails the same way
                raise


def _importing_package() -> str:
    """Top-level package of the code that asked a deferred module for a name."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name != __name__ and not name.startswith(("importlib", "_frozen_importlib")):
            return name.partition(".")[0]
        frame = frame.f_back
    return ""


class _DeferredName(type):
    """Metaclass of the stand-ins a :class:`_DeferredModule` serves before it is loaded."""

    def _unit_p2p_real(cls) -> object:
        module = sys.modules[cls.__module__]
        module._unit_p2p_load()
        real = module.__dict__[cls.__name__]
        if isinstance(real, _DeferredName):
            raise AttributeError(f"module {cls.__module__!r} has no attribute {cls.__name__!r}")
        return real

    def __call__(cls, *args: object, **kwargs: object) -> object:
        if cls.__name__ in DEFERRED.get(cls.__module__, ()):
            return _BuiltOnFirstUse(cls, args, kwargs)
        return cls._unit_p2p_real()(*args, **kwargs)

    def __instancecheck__(cls, instance: object) -> bool:
        if not sys.modules[cls.__module__].__dict__.get("_unit_p2p_loaded"):
            return False
        real = cls._unit_p2p_real()
        return isinstance(real, type) and isinstance(instance, real)

    def __getattr__(cls, name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)

        def forward(*args: object, **kwargs: object) -> object:
            return getattr(cls._unit_p2p_real(), name)(*args, **kwargs)

        forward.__qualname__ = f"{cls.__qualname__}.{name}"
        return forward


class _BuiltOnFirstUse:
    """An instance of a deferred class, built when one of its attributes is first read."""

    def __init__(self, cls: _DeferredName, args: tuple, kwargs: dict) -> None:
        object.__setattr__(self, "_unit_p2p_pending", (cls, args, kwargs))
        object.__setattr__(self, "_unit_p2p_real", None)

    def __getattr__(self, name: str) -> object:
        real = object.__getattribute__(self, "_unit_p2p_real")
        if real is None:
            cls, args, kwargs = object.__getattribute__(self, "_unit_p2p_pending")
            real = cls._unit_p2p_real()(*args, **kwargs)
            object.__setattr__(self, "_unit_p2p_real", real)
        return getattr(real, name)


class _DeferredLoader(importlib.abc.Loader):
    def __init__(self, real: importlib.machinery.ModuleSpec) -> None:
        self.real = real

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _DeferredModule(spec.name)
        module.__dict__["_unit_p2p_real_spec"] = self.real
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


class _SubstituteLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        source = importlib.import_module(self.target)
        module = types.ModuleType(spec.name, source.__doc__)
        module.__dict__.update(
            (k, v) for k, v in vars(source).items() if not k.startswith("__")
        )
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


class _AbsentLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _AbsentModule(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        module.__path__ = []  # a package, so ``import absent.sub`` lands here too


class _OnDemandLoader(importlib.abc.Loader):
    def __init__(self, real: importlib.machinery.SourceFileLoader) -> None:
        self.real = real

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _OnDemandPackage(spec.name)
        module.__dict__["_unit_p2p_real_loader"] = self.real
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


class LeanFinder(importlib.abc.MetaPathFinder):
    """Serves libp2p packages on demand and :data:`ABSENT` modules as placeholders."""

    def __init__(
        self,
        absent: Sequence[str] = ABSENT,
        deferred: Sequence[str] = tuple(DEFERRED),
        substituted: dict[str, str] | None = None,
    ) -> None:
        self.absent = tuple(absent)
        self.deferred = frozenset(deferred)
        self.substituted = dict(SUBSTITUTED if substituted is None else substituted)

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if is_absent(fullname, self.absent):
            return importlib.machinery.ModuleSpec(fullname, _AbsentLoader(), is_package=True)
        if fullname in self.substituted:
            target = self.substituted[fullname]
            # A package, so its submodules (served here too) can be imported.
            return importlib.machinery.ModuleSpec(
                fullname, _SubstituteLoader(target), is_package=True
            )
        if fullname in self.deferred:
            real = importlib.machinery.PathFinder.find_spec(fullname, path)
            if real is None or not isinstance(real.loader, importlib.machinery.SourceFileLoader):
                return real
            package = real.submodule_search_locations is not None
            deferred = importlib.machinery.ModuleSpec(
                fullname, _DeferredLoader(real), is_package=package
            )
            # A submodule imported directly (``import psutil._common``) loads on its own.
            deferred.submodule_search_locations = real.submodule_search_locations
            return deferred
        if fullname != "libp2p" and not fullname.startswith("libp2p."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if (
            spec is None
            or spec.submodule_search_locations is None
            or not isinstance(spec.loader, importlib.machinery.SourceFileLoader)
        ):
            return spec
        lean = importlib.machinery.ModuleSpec(
            fullname, _OnDemandLoader(spec.loader), origin=spec.origin, is_package=True
        )
        lean.submodule_search_locations = spec.submodule_search_locations
        lean.has_location = True
        return lean


def install() -> bool:
    """Install the hook (idempotent). False if disabled or libp2p is already imported."""
    if os.environ.get(FULL_ENV, "") not in ("", "0"):
        return False
    if any(isinstance(f, LeanFinder) for f in sys.meta_path):
        return True
    if "libp2p" in sys.modules:
        return False
    sys.meta_path.insert(0, LeanFinder())
    return True
