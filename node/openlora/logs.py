"""Log output of the node daemon: human text lines or one JSON object per line, on stderr.

    log.info("fetched %s", cid, extra={"cid": cid, "bytes": 5242880})
      text  2026-11-29 16:10:42,123 INFO openlora.api.swarm_link: fetched bafk…
      json  {"time": "2026-11-29T16:10:42.123Z", "level": "info", "logger": "openlora.api.swarm_link",
             "message": "fetched bafk…", "cid": "bafk…", "bytes": 5242880}

JSON lines suit log shippers (Loki, Elasticsearch, ``jq``): every ``extra=`` field becomes a key of its
own, so callers pass the numbers they log as ``extra`` too. Only the standard library is used.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

#: The ``text`` format (the node's format before JSON logs existed).
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
# Attributes every LogRecord has; anything else on a record came from ``extra=``. uvicorn adds
# ``color_message``, the message again with ANSI colour codes: noise in a JSON line.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "color_message"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line.

    Keys: ``time`` (ISO-8601 UTC, milliseconds, ``Z``), ``level`` (lower case), ``logger``, ``message``
    (arguments applied), then every ``extra=`` field (values JSON cannot hold are written with ``str``;
    a field named like one of the four keys above is dropped, they always win), then ``exc_info`` /
    ``stack_info`` (the formatted traceback, a string) when the record has one.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line (no trailing newline; the handler adds it)."""
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc_info"] = record.exc_text
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(level: str, fmt: str, stream: TextIO | None = None) -> None:
    """Route every logger's records at ``level`` and above to ``stream`` in format ``fmt``.

    Replaces the root logger's handlers (a daemon configures logging once, at start). With ``json``,
    Python warnings are logged too (logger ``py.warnings``), so stderr stays one object per line.

    Args:
        level: ``debug``, ``info``, ``warning`` or ``error`` (any case).
        fmt: ``text`` (:data:`TEXT_FORMAT`) or ``json`` (:class:`JsonFormatter`), any case.
        stream: where lines go; default ``sys.stderr``.

    Raises:
        ValueError: an unknown level or format (the message lists the known ones).
    """
    if level.lower() not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(OneLineLibp2pRecords())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.captureWarnings(fmt == "json")
    adopt_libp2p_logging()


#: py-libp2p's root logger; its records concern one peer connection, never the node as a whole
LIBP2P_LOGGER = "libp2p"


def adopt_libp2p_logging() -> None:
    """Send py-libp2p's records through the root handler at WARNING and above.

    Importing libp2p detaches its logger (no handler, ``propagate = False``), so its warnings reached stderr
    through ``logging.lastResort``: bare messages without time, level or logger. Call this after libp2p is
    imported (:func:`configure_logging` calls it; ``openlora-node start`` imports libp2p first).
    """
    lp = logging.getLogger(LIBP2P_LOGGER)
    lp.handlers.clear()
    lp.propagate = True
    lp.setLevel(logging.WARNING)


class OneLineLibp2pRecords(logging.Filter):
    """Keeps py-libp2p's WARNING and worse, each as one line at WARNING.

    A peer that closes its connection early (every ``openlora nodes --swarm`` probe does: it asks for the node
    table and leaves) makes py-libp2p log a seven-line ERROR; one line per event keeps a log greppable and a JSON
    log one object per line, and a peer's failure is not the node's error.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Drops libp2p records below WARNING (some of its modules set their own logger to INFO, which the
        ``libp2p`` logger's level does not override) and rewrites the others in place."""
        if record.name == LIBP2P_LOGGER or record.name.startswith(LIBP2P_LOGGER + "."):
            if record.levelno < logging.WARNING:
                return False
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                message = f"{message}: {type(exc).__name__}: {exc}"
                record.exc_info, record.exc_text, record.msg, record.args = None, None, message, None
            if "\n" in message:
                record.msg, record.args = "; ".join(part.strip() for part in message.splitlines() if part.strip()).replace(":; ", ": "), None
            if record.levelno > logging.WARNING:
                record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return True
