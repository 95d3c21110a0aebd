"""explorer_browser: the node's pages in a real headless Chromium (tests/browser.py), against
node processes on loopback. Few and fast: one browser per module, nodes at test difficulty."""

from __future__ import annotations

from typing import Any

from harness import NodeProc


def test_browser_opens_a_node_page(nodes: Any, browser: Any) -> None:
    """The tooling works end to end: Chromium loads a page from a node's HTTP shim."""
    a: NodeProc = nodes("a").start()
    browser.get(f"http://127.0.0.1:{a.http_port}/status")
    assert a.addr.split(":")[1] in browser.find_element("tag name", "body").text
