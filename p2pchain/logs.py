"""The node's log on stderr: text (the default) or ``--log-format json``, one JSON object a line
for log shippers (Loki, Elasticsearch, journald's JSON export):

    {"time": "2026-11-30T08:55:00.123Z", "level": "INFO", "logger": "p2pchain.node",
     "message": "connected peer 10.0.0.2:7000 (out): p2pchain/0.1.0, height 80",
     "peer": "10.0.0.2:7000", "height": 80}

Besides the four keys every line has, a line carries the fields its message has: ``peer`` (the
address of a peer among the message's arguments), ``height`` (a "height N" in the message),
``reason`` (why a peer was dropped or banned, given by the caller as ``extra={"reason": ...}``),
any other ``extra`` field named in EXTRA_FIELDS, and ``exc`` (the traceback) after an exception.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
EXTRA_FIELDS = ("peer", "height", "reason", "block", "txid", "addr")  # taken from ``extra={...}``
# a "height N" in a message: re.search compiles it once, at the first JSON line (not at every
# node's start: only --log-format json reads it)
_HEIGHT = r"\bheight (\d+)\b"


def _peer_of(args: Any) -> str | None:
    """The address of the first peer-like argument (an object with ``addr`` and ``inbound``)."""
    for arg in args if isinstance(args, tuple) else ():
        addr = getattr(arg, "addr", None)
        if isinstance(addr, str) and hasattr(arg, "inbound"):
            return addr
    return None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        doc: dict[str, Any] = {
            "time": f"{seconds}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        peer = _peer_of(record.args)
        if peer is not None:
            doc["peer"] = peer
        height = re.search(_HEIGHT, message)
        if height is not None:
            doc["height"] = int(height.group(1))
        for name in EXTRA_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                doc[name] = value if isinstance(value, int | float | bool | str) else str(value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def setup(level: str, fmt: str = "text") -> None:
    """Log at ``level`` and above to stderr, as text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])  # no-op where logging is set up already (tests)
    logging.captureWarnings(True)  # Python's warnings as log records too: every line stays one format
