"""http_heavy: whole-chain requests (/chain, /nodes/resolve) are capped in number (issue 12,
finding 10: they had no cap; each streams the whole chain or asks every peer and waits).

In-process: the HTTP app over a Node, served by aiohttp's test server on loopback; the node's
resolve is held open so that requests pile up. Beyond HTTP_HEAVY_MAX, a request gets 503 busy at
once; once the held ones end, requests are served again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from node_helpers import app_client, idle_node

from p2pchain import limits


def test_whole_chain_requests_beyond_the_cap_are_refused_at_once(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[int], int, int]:
        release = asyncio.Event()
        entered: list[None] = []

        async def held_resolve(timeout: float = 0.0) -> bool:
            entered.append(None)
            await release.wait()
            return False

        async with idle_node(tmp_path) as node:
            node.resolve = held_resolve  # type: ignore[method-assign]
            async with app_client(node, tmp_path) as client:
                try:
                    held = [asyncio.create_task(client.get("/nodes/resolve")) for _ in range(limits.HTTP_HEAVY_MAX)]
                    async with asyncio.timeout(20):
                        while len(entered) < limits.HTTP_HEAVY_MAX:
                            await asyncio.sleep(0.01)  # poll
                    over = await client.get("/chain")
                    over_code = over.status
                    over.release()
                    release.set()
                    codes = []
                    for task in held:
                        response = await task
                        codes.append(response.status)
                        response.release()
                    after = await client.get("/chain")
                    after_code = after.status
                    after.release()
                    return codes, over_code, after_code
                finally:
                    release.set()

    held, over, after = asyncio.run(scenario())
    assert held == [200] * limits.HTTP_HEAVY_MAX
    assert over == 503, "a request past the cap was not refused"
    assert after == 200
