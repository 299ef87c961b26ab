"""The agent's one settings object.

Loaded from a YAML file (``safe_load`` only), then overridden by ``UNIT_P2P_*`` environment
variables, then by command-line flags; validated up front so a bad value fails at start with one
clear line (file, key, problem) and exit code 2, never a traceback at some later point.

(Loader, env/flag overrides and validation: to be completed in this module.)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CONFIG_FILE = Path("/etc/unit-p2p/agent.yaml")
DEFAULT_API = "unix:/run/unit-p2p/api.sock"
DEFAULT_UNIT = "unix:/var/run/control.unit.sock"
DEFAULT_STATE_DIR = Path("/var/lib/unit-p2p")
# Loopback only by default: nothing listens beyond loopback unless configured.
DEFAULT_LISTEN = "/ip4/127.0.0.1/tcp/9461"


@dataclass(frozen=True)
class Settings:
    #: mesh name: agents only sync with agents of the same mesh (gossip topic, DHT key, signatures)
    mesh: str = "default"
    #: libp2p listen multiaddrs (TCP only)
    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    #: NGINX Unit control API: ``unix:/path`` or ``http://127.0.0.1:PORT``
    unit: str = DEFAULT_UNIT
    #: seconds for one call to Unit's control API
    unit_timeout: float = 10.0
    #: the agent's local API: ``unix:/path``
    api: str = DEFAULT_API
    #: group that may use the API socket (mode 0660); None keeps the process's group
    api_group: str | None = None
    #: optional loopback TCP listener for the API, ``127.0.0.1:PORT``; requires api_token_file
    api_tcp: str | None = None
    #: file holding the bearer token for api_tcp
    api_token_file: Path | None = None
    #: where the head, the last K configs and (by default) the identity key live
    state_dir: Path = DEFAULT_STATE_DIR
    #: Ed25519 identity key file; default ``<state_dir>/identity.key``
    key: Path | None = None
    #: multiaddrs with /p2p/<peer id> dialled at start and redialled with backoff
    bootstrap: tuple[str, ...] = ()
    #: LAN discovery by mDNS
    mdns: bool = True
    #: Kademlia DHT rendezvous on a key derived from the mesh name
    dht: bool = True
    #: "allowlist" (only trusted_peers) or "any" (demos only; warned at start)
    trust: str = "allowlist"
    #: peer IDs allowed to connect, announce, serve and report
    trusted_peers: tuple[str, ...] = ()
    #: JSON pointers kept host-local on apply and left out of the digest, e.g. /listeners
    exclusions: tuple[str, ...] = ()
    #: how many applied configs to keep on disk
    keep_configs: int = 10
    #: largest config document accepted (bytes of canonical JSON)
    max_config_bytes: int = 8 * 1024 * 1024
    #: seconds between anti-entropy re-announcements of the head
    announce_interval: float = 10.0
    #: debug, info, warning, error
    log_level: str = "info"
    #: "text" (journald-friendly key=value) or "json"
    log_format: str = "text"

    @property
    def key_file(self) -> Path:
        return self.key if self.key is not None else self.state_dir / "identity.key"

    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes)


SETTING_NAMES = tuple(f.name for f in dataclasses.fields(Settings))
_ = field  # keep the import for the loader that follows
