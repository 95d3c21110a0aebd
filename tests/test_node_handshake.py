"""node handshake: only a node of the same network and a supported protocol version, that says
HELLO first, becomes a peer.

A node started with another --difficulty (so another genesis, another network id) is refused at
HELLO by both sides: each logs it and neither lists the other in /status. A raw TCP peer that
sends another message before HELLO, or a HELLO with a version older than we support, is disconnected
(it reads EOF) and the node still serves an honest client.
"""

from __future__ import annotations

import asyncio

import pytest
from conftest import NodeFactory
from harness import TEST_BITS, NodeProc, run, wait_until
from node_helpers import TEST_PARAMS, status

from p2pchain import limits, wire


def test_node_of_another_difficulty_is_refused_at_hello(nodes: NodeFactory) -> None:
    ours, other = nodes("ours"), nodes("other", bits=TEST_BITS + 1)
    ours.start()
    other.start(["--peer", ours.addr])
    for node in (ours, other):

        def logged(node: NodeProc = node) -> bool:
            return "another network" in node.log_path.read_text()

        wait_until(logged, 20, f"{node.name} to log the refusal")
    assert status(ours)["peers"] == []
    assert status(other)["peers"] == []
    assert status(other)["network"] != status(ours)["network"]


async def dropped_after(node: NodeProc, first: wire.Message) -> bool:
    """Connect, read the node's HELLO, send ``first``: True if the node then closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    try:
        hello = wire.decode_message(await wire.read_frame(reader))
        assert isinstance(hello, wire.Hello)
        writer.write(first.encode())
        await writer.drain()
        async with asyncio.timeout(10):
            while True:  # whatever the node sends before it hangs up is read and ignored
                await wire.read_frame(reader)
    except asyncio.IncompleteReadError:
        return True
    except TimeoutError:
        return False
    finally:
        writer.close()


def bad_hello(version: int) -> wire.Hello:
    net = TEST_PARAMS.network_id
    return wire.Hello(version, net, b"\x01" * 16, 0, 0, net, 0, "test")


@pytest.mark.parametrize(
    "first",
    [wire.Ping(1), bad_hello(limits.MIN_PROTOCOL_VERSION - 1)],
    ids=["ping-before-hello", "too-old-version"],
)
def test_peer_that_breaks_the_handshake_is_dropped(nodes: NodeFactory, first: wire.Message) -> None:
    node = nodes("node")
    node.start()
    assert run(dropped_after(node, first)), f"the node kept a peer that sent {first.TYPE} first"
    assert status(node)["peers"] == []
    assert run(dropped_after(node, wire.GetPeers())), "the node no longer accepts connections"
    assert status(node)["height"] == 0
