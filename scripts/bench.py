"""p2pchain benchmarks: one entry point, one subcommand per area.

    .venv/bin/python scripts/bench.py ledger [--seconds 1.5] [--json]

Each subcommand prints a readable table; with --json the last line of stdout is one JSON object
holding its figures at the top level, plus "subcommand", "seconds" and "machine". Every
measurement runs for a bounded time (--seconds), so a subcommand finishes in seconds.

The subcommands live in scripts/benchlib/, one module each, around benchlib/common.py (timing
loops, the machine's description, the table, the Subcommand record) and benchlib/nodes.py (node
processes on loopback, for the subcommands that run real nodes). To add a subcommand NAME:
  1. write scripts/benchlib/NAME.py with ``def bench_NAME(args) -> Figures`` and
     ``COMMAND = Subcommand(bench_NAME, "help line", NOTES, add_arguments)``, NOTES giving each
     figure its unit and what it measures (add_arguments: its own flags, optional);
  2. add "NAME" to SUBCOMMANDS below (the order of the help text).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time

from benchlib.common import Subcommand, machine_info, print_table  # scripts/benchlib/ (beside this file)

# each is the module benchlib.NAME
SUBCOMMANDS = (
    "ledger",
    "net",
    "swarm",
    "fuzz",
    "hostile",
    "soak",
    "explorer",
    "edges",
    "light",
    "consensus",
    "relay",
    "bigchain",
    "retarget",
)


def load(name: str) -> Subcommand:
    command = importlib.import_module(f"benchlib.{name}").COMMAND
    if not isinstance(command, Subcommand):
        raise TypeError(f"benchlib.{name}.COMMAND is not a Subcommand")
    return command


def main(argv: list[str] | None = None) -> int:
    commands = {name: load(name) for name in SUBCOMMANDS}
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="subcommand", required=True)
    for name, command in commands.items():
        p = sub.add_parser(name, help=command.help)
        p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
        p.add_argument("--seconds", type=float, default=1.5, help="duration of each measurement")
        if command.add_arguments:
            command.add_arguments(p)
    args = parser.parse_args(argv)
    command = commands[args.subcommand]
    machine = machine_info()
    started = time.perf_counter()
    figures = command.run(args)
    took = time.perf_counter() - started
    print_table(
        f"p2pchain bench {args.subcommand}: {machine['cpu']}, {machine['cpus_usable']} cpus, {machine['python']}",
        figures,
        command.notes,
    )
    print(f"  ({took:.1f} s)")
    if args.json:
        print(json.dumps({"subcommand": args.subcommand, **figures, "seconds": round(took, 2), "machine": machine}))
    return 0


if __name__ == "__main__":  # the guard also keeps MinerPool's spawned workers from running main()
    sys.exit(main())
