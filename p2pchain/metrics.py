"""What a node counts about itself, kept per Node (the in-process swarm runs 200 nodes in one
process, so nothing here is global).

The counters that move on every frame are plain ints in dicts, with no lock (one event loop owns
the node): a frame costs 0.14-0.16 us (timeit, shared 2-core machine), a tenth of decoding the
smallest message (PING, 1.5 us). The
Prometheus view of them (``/metrics``, through prometheus-client) is built only when scraped.
"""

from __future__ import annotations

INVALID = "invalid"  # the type label of a received frame that did not decode: the set stays bounded


class Traffic:
    """Frames and their bytes (length prefix included) by message type, each way. Received
    frames are counted once read whole (before decoding: a frame that fails to decode counts
    under ``INVALID``); sent frames when the writer hands them to the socket."""

    __slots__ = ("received", "sent")

    def __init__(self) -> None:
        self.received: dict[str, list[int]] = {}  # type -> [frames, bytes]
        self.sent: dict[str, list[int]] = {}

    def count_received(self, kind: str, nbytes: int) -> None:
        _add(self.received, kind, nbytes)

    def count_sent(self, kind: str, nbytes: int) -> None:
        _add(self.sent, kind, nbytes)

    def by_type(self) -> dict[str, dict[str, int]]:
        """{type: {messages_received, bytes_received, messages_sent, bytes_sent}}, the types
        seen either way, for /status and STATUS."""
        out: dict[str, dict[str, int]] = {}
        for kind in sorted(self.received.keys() | self.sent.keys()):
            rx = self.received.get(kind, (0, 0))
            tx = self.sent.get(kind, (0, 0))
            out[kind] = {
                "messages_received": rx[0],
                "bytes_received": rx[1],
                "messages_sent": tx[0],
                "bytes_sent": tx[1],
            }
        return out


def _add(table: dict[str, list[int]], kind: str, nbytes: int) -> None:
    c = table.get(kind)
    if c is None:
        c = table[kind] = [0, 0]
    c[0] += 1
    c[1] += nbytes
