"""`python -m p2pchain`: run a node, or a wallet/query subcommand (see `--help`)."""

from p2pchain.cli import main

raise SystemExit(main())
