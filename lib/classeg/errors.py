"""classeg's exceptions and the one vocabulary of per-object error kinds and row statuses.

Library code raises these; the CLI (``classeg.cli``) turns them into one line. Nothing here imports the rest
of classeg, so every module can import it.

Error texts
-----------
A bad object becomes data, not a crash: a row with ``status`` (one of :data:`STATUSES`) and an ``error`` text
``"<kind>: <detail>"`` made by :func:`format_error` and read back by :func:`error_kind`. Kinds are
:data:`ERROR_KINDS`; ``fetch_failed`` (the bytes could not be read: S3 kept failing, access denied) is the
only retryable one (:data:`RETRYABLE_ERROR_KINDS`): a later run tries that object again, every other kind is
permanent for that object version.
"""
from __future__ import annotations

__all__ = [
    "ArchiveError", "ConfigError", "DECODE_ERROR_KINDS", "ERROR_KINDS", "FETCH_ERROR_KINDS", "FetchError",
    "JobFailed", "RETRYABLE_ERROR_KINDS", "STATUSES", "error_kind", "format_error",
]

STATUSES = ("ok", "error", "skipped")
FETCH_ERROR_KINDS = ("not_found", "too_large", "fetch_failed")
# Why a file could not become an image (classeg.imaging.DecodeError.reason).
DECODE_ERROR_KINDS = ("empty", "unsupported", "undecodable", "truncated", "too_large", "bad_structure",
                      "unreadable")
ERROR_KINDS = tuple(dict.fromkeys(FETCH_ERROR_KINDS + DECODE_ERROR_KINDS))
RETRYABLE_ERROR_KINDS = frozenset({"fetch_failed"})


class ConfigError(ValueError):
    """A configuration key or value is not acceptable; the message names it."""


class JobFailed(RuntimeError):
    """A job ran but its outcome is a failure (error rate exceeded, nothing usable found)."""


class ArchiveError(ValueError):
    """A storage location cannot be used (missing, access denied, unreachable, unreadable file); the message
    names the URI and the reason."""


class FetchError(Exception):
    """One object could not be read. ``kind`` is one of :data:`FETCH_ERROR_KINDS`:

    * ``not_found``: the object (or its bucket) no longer exists;
    * ``too_large``: it is larger than ``max_bytes``;
    * ``fetch_failed``: reading failed (transient errors on every attempt, access denied, ...); retryable.

    ``str(err)`` is ``"<kind>: <message>"`` (:func:`format_error`), ready for an ``error`` column.
    """

    def __init__(self, kind: str, message: str, *, uri: str | None = None, attempts: int | None = None):
        if kind not in FETCH_ERROR_KINDS:
            raise ValueError(f"FetchError kind must be one of {FETCH_ERROR_KINDS}, got {kind!r}")
        super().__init__(kind, message)
        self.kind = kind
        self.message = message
        self.uri = uri
        self.attempts = attempts

    def __str__(self) -> str:
        return format_error(self.kind, self.message)


def format_error(kind: str, detail: str) -> str:
    """The ``error`` text of a row: ``format_error("too_large", "9 bytes")`` -> ``"too_large: 9 bytes"``."""
    if kind not in ERROR_KINDS:
        raise ValueError(f"error kind must be one of {ERROR_KINDS}, got {kind!r}")
    return f"{kind}: {detail}"


def error_kind(error: str | None) -> str | None:
    """The kind of an ``error`` text ``"<kind>: <detail>"``: ``"fetch_failed: 6 attempts..."`` -> ``"fetch_failed"``."""
    if error is None:
        return None
    return str(error).split(":", 1)[0].strip()
