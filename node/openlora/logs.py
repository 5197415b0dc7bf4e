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
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.captureWarnings(fmt == "json")
