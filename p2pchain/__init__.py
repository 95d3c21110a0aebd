"""p2pchain: a small peer-to-peer proof-of-work blockchain node."""

__version__ = "0.1.0"
