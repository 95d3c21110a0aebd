"""`python -m p2pchain`: run a node, or a wallet/query subcommand (see `--help`)."""

import sys

# asyncio imports ssl at its own import only to offer TLS, which neither a node nor the wallet
# commands speak (peers, clients and the HTTP shim are plain TCP): the ssl module costs a start
# about 5 ms and its memory about 1 MB. asyncio is imported with ssl hidden, then ssl is
# importable again for whatever wants it later (aiohttp, with --http-port, imports its own).
if "asyncio" not in sys.modules:
    sys.modules["ssl"] = None  # type: ignore[assignment]  # import ssl raises ImportError meanwhile
    try:
        import asyncio  # noqa: F401
    finally:
        del sys.modules["ssl"]

from p2pchain.cli import main

raise SystemExit(main())
