"""The HTTP shim: aiohttp on the node's own event loop. Every endpoint is a call into the node."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiohttp import web

from p2pchain import limits

if TYPE_CHECKING:
    from p2pchain.node import Node

log = logging.getLogger(__name__)
NODE_KEY: web.AppKey[Node] = web.AppKey("node")


async def get_status(request: web.Request) -> web.Response:
    return web.json_response(request.app[NODE_KEY].status())


def make_app(node: Node) -> web.Application:
    app = web.Application(client_max_size=limits.HTTP_MAX_BODY_BYTES)
    app[NODE_KEY] = node
    app.router.add_get("/status", get_status)
    return app


async def start_http(node: Node, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(make_app(node), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("HTTP shim on http://%s:%d/", host, port)
    return runner
