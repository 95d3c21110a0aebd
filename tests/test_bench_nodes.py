"""benchlib.nodes (scripts/benchlib/nodes.py): what the benches that run node processes rely on.

free_ports never hands out one port twice in a process: bench relay draws both networks' ports
before starting either, and a port drawn twice left its second node unable to listen while the
bench's client reached the first node in its place (wait_linked then failed a minute later, about
one run in 40).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from benchlib.nodes import free_ports


def test_free_ports_never_hands_out_a_port_twice_in_a_process() -> None:
    """Draws that overlap often without the rule (1,200 of some 16,000 ports: dozens of repeats)."""
    drawn = [port for _ in range(4) for port in free_ports(300)]
    assert len(drawn) == 1200
    assert len(set(drawn)) == len(drawn)
