"""Secrets never leave the process: credentials inside URIs (``scheme://user:password@host``,
``?token=...``) are masked in every message, log line, MLflow param and file ajpq writes, and
quoted values are cut to a readable length."""

from __future__ import annotations

import re

__all__ = ["MASK", "quote", "redact"]

MASK = "***"
_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*):[^/\s@]*@")
_QUERY = re.compile(
    r"([?&;](?:[A-Za-z0-9_-]*(?:password|passwd|secret|token|key|signature|credential|sig))=)"
    r"[^&;#\s'\"]*",
    re.IGNORECASE,
)


def redact(text: object) -> str:
    """``text`` with every URI password and secret-looking query value masked."""
    masked = _USERINFO.sub(rf"\1:{MASK}@", str(text))
    return _QUERY.sub(rf"\1{MASK}", masked)


def quote(value: object, limit: int = 80) -> str:
    """``repr(value)``, redacted and cut to ``limit`` characters (an error message never
    renders an unbounded value)."""
    text = redact(repr(value))
    if len(text) <= limit:
        return text
    tail = f"... ({len(text)} chars)"
    return text[: max(0, limit - len(tail))] + tail
