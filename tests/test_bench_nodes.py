"""benchlib.nodes (scripts/benchlib/nodes.py): what the benches that run node processes rely on.

free_ports never hands out one port twice in a process: bench relay draws both networks' ports
before starting either, and a port drawn twice left its second node unable to listen while the
bench's client reached the first node in its place (wait_linked then failed a minute later, about
one run in 40). embedded_node gives a Node made in the bench's process the interpreter settings
of a node process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from benchlib.nodes import free_ports

from p2pchain import limits

ROOT = Path(__file__).resolve().parent.parent


def test_free_ports_never_hands_out_a_port_twice_in_a_process() -> None:
    """Draws that overlap often without the rule (1,200 of some 16,000 ports: dozens of repeats)."""
    drawn = [port for _ in range(4) for port in free_ports(300)]
    assert len(drawn) == 1200
    assert len(set(drawn)) == len(drawn)


EMBED = """\
import gc, sys
from pathlib import Path
sys.path.insert(0, "scripts")
from benchlib.nodes import embedded_node
from p2pchain.node import Node, NodeConfig
node = embedded_node(NodeConfig(data_dir=Path(sys.argv[1]), port=0, discover=False))
print(type(node) is Node, sys.getswitchinterval(), gc.get_threshold()[0])
"""


def test_a_node_a_bench_embeds_runs_with_the_node_commands_interpreter_settings(tmp_path: Path) -> None:
    """In a child process: the settings are process-wide, and this one's are Python's defaults."""
    proc = subprocess.run([sys.executable, "-c", EMBED, str(tmp_path / "n")], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["True", str(limits.GIL_SWITCH_INTERVAL_S), str(limits.GC_YOUNG_THRESHOLD)]
    assert sys.getswitchinterval() != limits.GIL_SWITCH_INTERVAL_S  # (so the child's settings are not the default)
