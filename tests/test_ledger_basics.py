"""Ledger types: canonical bytes, ids and the genesis block are deterministic."""

from p2pchain.ledger.block import HEADER_BYTES, Block
from p2pchain.params import NetworkParams


def test_genesis_is_deterministic_and_parameter_bound():
    a, b = NetworkParams(), NetworkParams()
    assert a.network_id == b.network_id
    assert NetworkParams(bits=12).network_id != a.network_id
    assert NetworkParams(reward=2).network_id != a.network_id
    assert len(a.genesis.header.raw) == HEADER_BYTES == 92


def test_block_wire_round_trip():
    g = NetworkParams().genesis
    assert Block.from_wire(g.to_wire()) == g
    assert Block.from_wire(g.to_wire()).hash == g.hash
