"""unit-p2p: a peer-to-peer control plane for NGINX Unit."""

__version__ = "0.1.0"
