"""Keep the server token out of every log line, at every verbosity.

`websockets` logs each request line and header at debug level (`-vv`), which is where a token sent as
`?token=`, `Authorization: Bearer` or an `openai-insecure-api-key.` subprotocol would show up; a failed
handshake can also quote a header in its exception. `RedactSecrets` rewrites a record's message and its
exception text before any handler formats it. No import of `websockets` here: the CLI installs it at start.
"""

from __future__ import annotations

import logging
import re

MASK = "[redacted]"
PATTERNS = (
    re.compile(r"(?i)([?&;]token=)[^&\s\"';]+"),
    re.compile(r"(?i)(bearer\s+)[^\s,\"';]+"),
    re.compile(r"(?i)(openai-insecure-api-key\.)[^\s,\"';]+"),
)
_secrets: set[str] = set()
# Loggers whose records may quote a request (logger-level filters only see records created there).
REQUEST_LOGGERS = ("websockets.server", "websockets.client", "websockets.asyncio.server")


def add_secret(secret: str | None) -> None:
    """Also mask this exact string wherever it appears (the configured token)."""
    if secret and len(secret) >= 4:
        _secrets.add(secret)


def redact(text: str) -> str:
    for pattern in PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    for secret in _secrets:
        text = text.replace(secret, MASK)
    return text


class RedactSecrets(logging.Filter):
    """A filter for loggers and handlers: formats the message once, masks tokens in it and in the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it for the handler to report
            return True
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FILTER = RedactSecrets()


def install(*handlers: logging.Handler) -> None:
    """Attach the filter to the request loggers and to `handlers` (idempotent)."""
    for name in REQUEST_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    for handler in handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
