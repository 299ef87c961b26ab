"""The libp2p mesh: host, trust, guards, gossip, liveness and discovery (docs/mesh.md)."""

from .mesh import ChannelEvents, Mesh, MeshEvents, MeshTuning, PeerInfo
from .stream import Stream
from .trust import TrustPolicy

__all__ = ["ChannelEvents", "Mesh", "MeshEvents", "MeshTuning", "PeerInfo", "Stream", "TrustPolicy"]
