"""The live map of a swarm (``scripts/swarm.py --web PORT``): a page on 127.0.0.1:PORT that
draws every node as a circle and every connection as a line, a node's colour being the tip it
is on (so forks show as colours), animates each new block as it reaches node after node (at
the launcher's own arrival timings, slowed down to be seen), shows the launcher's table beside
it, and links each node to its own explorer.

The launcher hands this module what it already has: each refresh's statuses (``publish_state``)
and each block arrival it timestamps (``arrival``); both go to the browsers as Server-Sent
Events through the same bounded EventHub as the node's explorer, so a slow browser never slows
the launcher. The page is served with the explorer's Content-Security-Policy; its script and
style are p2pchain/explorer_static/swarm.{js,css}. Everything shown is set as text by the script.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from p2pchain.events import EventHub, sse_frame
from p2pchain.explorer import SECURITY_HEADERS, serve_events, static_file

log = logging.getLogger("swarm.web")
HUB: web.AppKey[SwarmWeb] = web.AppKey("swarm_web")


@dataclass(frozen=True)
class NodeInfo:
    """What the map shows of one node: from the launcher's member and its last status."""

    index: int
    name: str
    port: int
    explorer: str | None  # URL of its explorer, if it serves HTTP
    mining: bool
    state: str  # mining, relay, DEAD, no answer
    height: int | None
    tip: str | None
    peers: list[int]  # indices of the swarm nodes it has an outbound or inbound link to
    row: list[str]  # its row of the launcher's table


class SwarmWeb:
    """The map's web server and its event hub."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.hub = EventHub()
        self.state: dict[str, Any] = {"nodes": [], "links": [], "headline": "starting", "columns": []}
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    async def start(self) -> None:
        app = web.Application()
        app[HUB] = self
        app.router.add_get("/", page)
        app.router.add_get("/state", state)
        app.router.add_get("/events", events)
        app.router.add_get("/static/{name}", static)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.25)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.host, self.port).start()

    async def stop(self) -> None:
        self.hub.close()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def publish_state(self, headline: str, columns: Sequence[str], nodes: Sequence[NodeInfo], final: bool) -> None:
        """A refresh of the launcher's view: every node, its links and its table row. ``final``:
        the run ended and this is the view the summary was made from."""
        links = sorted({(min(n.index, p), max(n.index, p)) for n in nodes for p in n.peers if p != n.index})
        self.state = {
            "headline": headline,
            "columns": list(columns),
            "nodes": [node_json(n) for n in nodes],
            "links": [list(pair) for pair in links],
            "final": final,
        }
        self.hub.publish("state", self.state)

    def arrival(self, node: int, block_hash: str, height: int, ms_after_first: float) -> None:
        """Block ``block_hash`` became node ``node``'s tip, ``ms_after_first`` after the first node."""
        self.hub.publish("block", {"node": node, "hash": block_hash, "height": height, "ms": round(ms_after_first, 3)})


def node_json(n: NodeInfo) -> dict[str, Any]:
    return {
        "index": n.index,
        "name": n.name,
        "port": n.port,
        "explorer": n.explorer,
        "mining": n.mining,
        "state": n.state,
        "height": n.height,
        "tip": n.tip,
        "row": n.row,
    }


async def page(request: web.Request) -> web.Response:
    web_ = request.app[HUB]
    text = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>p2pchain swarm map</title>
<link rel="icon" href="/static/favicon.svg">
<link rel="stylesheet" href="/static/swarm.css">
<script src="/static/swarm.js" defer></script>
</head>
<body>
<header><span class="brand">p2pchain swarm map</span>
<span id="headline">{html.escape(str(web_.state.get("headline", "")))}</span>
<span id="conn" class="conn">static page</span></header>
<div class="wrap">
<svg id="map" viewBox="-500 -500 1000 1000" role="img" aria-label="swarm map">
<g id="links"></g><g id="pulses"></g><g id="nodes"></g></svg>
<aside><h2>Nodes</h2><table id="table"><thead></thead><tbody></tbody></table>
<p class="muted">Colour: the tip a node is on (nodes on a fork show another colour). Rings: a
block reaching node after node, at the launcher's measured times, slowed down. Click a node for
its explorer.</p>
<h2>Blocks</h2><ol id="blocks"></ol></aside></div>
<noscript>The map is drawn by JavaScript; the launcher's terminal shows the same table.</noscript>
</body></html>
"""
    return web.Response(text=text, content_type="text/html", charset="utf-8", headers=SECURITY_HEADERS)


async def state(request: web.Request) -> web.Response:
    return web.json_response(request.app[HUB].state, headers=SECURITY_HEADERS)


async def events(request: web.Request) -> web.StreamResponse:
    web_ = request.app[HUB]
    return await serve_events(request, web_.hub, sse_frame("state", web_.state))


async def static(request: web.Request) -> web.Response:
    resp = static_file(request.match_info["name"])
    if resp is None:
        return web.Response(status=404, text="no such file\n")
    resp.headers.update(SECURITY_HEADERS)
    return resp
