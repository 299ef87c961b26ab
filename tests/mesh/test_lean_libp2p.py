"""The agent's lean py-libp2p import (unit_p2p/lean_libp2p.py), checked in a fresh interpreter.

The hook changes how a whole process imports libp2p, so each check runs in its own subprocess
(the test process itself imports libp2p normally, for the in-process peers of other tests).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from unit_p2p.lean_libp2p import FULL_ENV

PRELUDE = """
import sys
from unit_p2p import lean_libp2p
assert lean_libp2p.install()
"""


def run_python(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != FULL_ENV}
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_agent_host_builds_without_the_subsystems_it_never_runs():
    out = run_python("""
        from libp2p.crypto.ed25519 import create_new_key_pair
        from unit_p2p.mesh.host import build_host
        from unit_p2p.mesh.trust import TrustPolicy
        import unit_p2p.mesh, unit_p2p.sync.reconciler, unit_p2p.api.server
        from libp2p.peer.id import ID
        kp = create_new_key_pair()
        own = ID.from_pubkey(kp.public_key).to_base58()
        host = build_host(kp, TrustPolicy("any", [], own))
        assert host.get_id().to_base58().startswith("12D3KooW")
        real = [m for m, mod in sys.modules.items()
                if m.split(".")[0] in ("aioquic", "httpx", "websockets", "trio_websocket")
                and not isinstance(mod, lean_libp2p._AbsentModule)]
        assert not real, real
        assert isinstance(sys.modules["libp2p.transport.quic"], lean_libp2p._AbsentModule)
        print(len(sys.modules))
    """)
    assert int(out.strip()) < 1200


def test_placeholders_fail_loudly_but_import_annotate_and_except_cleanly():
    run_python("""
        from libp2p.transport.quic.exceptions import QUICStreamResetError
        from libp2p.transport.quic.stream import QUICStream
        try:
            raise ValueError("a real error passes through an except naming a placeholder")
        except (QUICStreamResetError, KeyError):
            raise SystemExit("a placeholder matched a real exception")
        except ValueError:
            pass
        assert not isinstance(object(), QUICStream)
        for use in (lambda: QUICStream(), lambda: QUICStream.from_bytes(b"x")):
            try:
                use()
            except lean_libp2p.AbsentFeatureError as exc:
                assert "libp2p.transport.quic.stream.QUICStream" in str(exc), exc
            else:
                raise SystemExit("calling a placeholder did not raise")
    """)


def test_package_init_still_runs_when_a_name_from_it_is_needed():
    run_python("""
        import libp2p.pubsub.pb
        assert "libp2p.pubsub.floodsub" not in sys.modules  # libp2p.pubsub's __init__ not run
        from libp2p.pubsub.pb import rpc_pb2  # defined by the subpackage's __init__
        assert rpc_pb2.RPC().__class__.__name__ == "RPC"
        from libp2p.bitswap.cid import parse_cid  # runs on the DHT's key path: real
        assert callable(parse_cid) and not isinstance(parse_cid, lean_libp2p._Placeholder)
    """)


def test_full_env_turns_the_hook_off():
    env = dict(os.environ, **{FULL_ENV: "1"})
    proc = subprocess.run(
        [sys.executable, "-c",
         "from unit_p2p import lean_libp2p; assert not lean_libp2p.install(); "
         "import libp2p; from libp2p import new_host; print('ok')"],
        capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_deferred_modules_load_on_first_use_and_then_behave_as_published():
    run_python("""
        from libp2p.crypto.ed25519 import create_new_key_pair
        from unit_p2p.mesh.host import build_host
        from unit_p2p.mesh.trust import TrustPolicy
        import unit_p2p.mesh, unit_p2p.sync.reconciler, unit_p2p.api.server
        from libp2p.peer.id import ID
        kp = create_new_key_pair()
        host = build_host(kp, TrustPolicy("any", [], ID.from_pubkey(kp.public_key).to_base58()))
        heavy = ("dns", "Crypto", "coincurve", "psutil", "cbor2")
        loaded = [m for m, mod in sys.modules.items() if m.split(".")[0] in heavy
                  and not isinstance(mod, lean_libp2p._DeferredModule)]
        assert not loaded, loaded
        # Noise runs on PyNaCl (lean_noise.py): cryptography's Rust extension is never loaded.
        assert "cryptography.hazmat.bindings._rust" not in sys.modules
        assert not sys.modules["cryptography.exceptions"].__dict__.get("_unit_p2p_loaded")
        import noise.backends.default
        assert noise.backends.default.noise_backend.__class__.__name__ == "NaclNoiseBackend"

        # A peer with a secp256k1 or RSA key: its key deserializes as with the full library.
        from libp2p.crypto.serialization import deserialize_public_key
        from libp2p.crypto import secp256k1, rsa
        assert not isinstance(object(), secp256k1.Secp256k1PublicKey)  # nothing loaded yet
        for module in (secp256k1, rsa):
            pub = module.create_new_key_pair().public_key
            back = deserialize_public_key(pub.serialize())
            assert back == pub and type(back).__name__ == type(pub).__name__, back
            assert isinstance(back, getattr(module, type(pub).__name__))
        from libp2p.peer.id import ID
        assert ID.from_pubkey(pub).to_base58()

        # The swarm's resolver is built on first use, by the real dnspython.
        resolver = host.get_network().dns_resolver
        assert "dns.asyncresolver" not in sys.modules
        assert type(resolver._resolver).__module__ == "dns.asyncresolver"
        assert callable(resolver.resolve)

        # cryptography's own modules get real names from its deferred ones (their except
        # clauses must match), loading them when they first ask; foreign code got stand-ins.
        import noise.connection
        assert isinstance(noise.connection.InvalidTag, lean_libp2p._DeferredName)
        from cryptography.hazmat.primitives.asymmetric import ec as crypto_ec
        assert not isinstance(crypto_ec.UnsupportedAlgorithm, lean_libp2p._DeferredName)
        import cryptography.exceptions
        assert cryptography.exceptions.UnsupportedAlgorithm is crypto_ec.UnsupportedAlgorithm

        import psutil, cbor2
        assert psutil.net_if_addrs() and cbor2.loads(cbor2.dumps({"a": 1})) == {"a": 1}
        try:
            psutil.no_such_name()
        except AttributeError:
            pass
        else:
            raise SystemExit("a name the real module lacks did not raise AttributeError")
    """)
