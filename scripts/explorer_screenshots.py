#!/usr/bin/env python3
"""Take the README's screenshots of the explorer and the swarm map (docs/img/*.png).

    .venv/bin/python scripts/explorer_screenshots.py [--out docs/img]

Starts two nodes on free loopback ports in a temporary directory (A mines through /mine and
pays a few coins to a made-up address, B peers with A), then a 5-node swarm with --web; opens
each page in headless Chromium (tests/browser.py: Debian's chromium and chromium-driver) and
saves a 1280x900 PNG. Every process started is stopped before the script exits.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from browser import chromium, wait_for  # type: ignore[import-not-found]  # noqa: E402  (tests/ helpers)
from harness import NodeProc, free_port, wait_until  # type: ignore[import-not-found]  # noqa: E402

BOB = "7b29f078dc96c29b07f3fabd2cea703ebf650774"
SETTLE_S = 1.5  # ok: for the page's fade-in highlight and the swarm's first blocks, not synchronisation


def explorer_shots(out: Path, root: Path) -> None:
    a = NodeProc(root, "a", bits=14)
    b = NodeProc(root, "b", bits=14)
    try:
        a.start()
        b.start(["--peer", a.addr])
        for _ in range(24):
            a.http("GET", "/mine")
        for amount in (5, 3, 2):
            a.http("POST", "/transactions/new", {"recipient": BOB, "amount": amount, "fee": 1})
            a.http("GET", "/mine")
        a.http("POST", "/transactions/new", {"recipient": BOB, "amount": 4, "fee": 1})  # stays pending
        wait_until(lambda: b.height() == a.height(), 30, "B to follow A")
        with chromium() as driver:
            for name, path in (("explorer-home", "/explorer/"), ("explorer-address", f"/explorer/address/{BOB}")):
                driver.get(f"http://127.0.0.1:{a.http_port}{path}")
                wait_for(driver, lambda d: d.find_element("id", "conn").text == "live", 15, "the event stream")
                if name == "explorer-home":
                    a.http("GET", "/mine")  # one block arriving live: the feed shows it
                    wait_for(driver, lambda d: "block" in d.find_element("id", "feed").text, 15, "the live block")
                time.sleep(SETTLE_S)  # ok: see SETTLE_S
                driver.save_screenshot(str(out / f"{name}.png"))
    finally:
        for node in (a, b):
            node.stop()


def swarm_shot(out: Path, root: Path) -> None:
    port = free_port()
    args = ["--nodes", "5", "--miners", "2", "--difficulty", "18", "--duration", "20", "--web", str(port)]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "swarm.py"), *args, "--run-dir", str(root / "swarm")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: (root / "swarm" / "swarm.json").exists(), 60, "the swarm to start")
        with chromium() as driver:
            driver.get(f"http://127.0.0.1:{port}/")
            wait_for(driver, lambda d: "AGREED" in d.find_element("id", "headline").text, 30, "the swarm to agree")
            time.sleep(SETTLE_S * 4)  # ok: a few blocks, so the block list fills
            driver.save_screenshot(str(out / "swarm-map.png"))
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="p2pchain-shots-") as tmp:
        explorer_shots(a.out, Path(tmp))
        swarm_shot(a.out, Path(tmp))
    print(f"screenshots in {a.out}")


if __name__ == "__main__":
    main()
