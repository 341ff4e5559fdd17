"""Object keys in what classeg prints: a short stable hash instead of the key (``score.redact_keys_in_logs``).

Archive keys can hold identifiers (``scans/DOE_JANE/MRN12345/ax_t2.dcm``). With redaction on (the default),
every log line, progress message and error message shows such a key as a *label*: the configured root (the
archive or dataset root the user gave, which is not patient data) stays readable and the part below it is
replaced by ``key#`` and the first 8 hex digits of the SHA-256 of that part (UTF-8), followed by the file's
extension when it is a scan extension (for example ``s3://bucket/archive/key#3f9a1c2b.dcm``)::

    >>> KeyRedaction(roots=("s3://bucket/archive",)).label("s3://bucket/archive/DOE_JANE/1.dcm")
    's3://bucket/archive/key#a6d9a43b.dcm'

The same key always gets the same label (whichever form of the root it was written in: ``file:/a``,
``file:///a``, ``/a``), so log lines can be matched with the table rows by recomputing :func:`key_hash` of a
row's ``key`` (the scores table) or ``relpath`` (the ingest errors table). The tables themselves keep the
real URIs: they are the outputs users join on. The hash is a pseudonym for logs, not an anonymisation: 32
bits of an unkeyed hash, so anyone who can guess a key can confirm the guess.

A key below no configured root keeps its bucket (``s3://bucket/key#...``); a local path or a relative key
becomes ``key#...`` alone. Free text (an exception's message, a traceback line) is scrubbed by
:meth:`KeyRedaction.text`: the keys passed to it, and any path below a configured root, become labels.

The policy is process-wide, like the logging configuration: the CLI and the jobs :func:`activate` it on the
driver, and the Spark tasks activate the copy they were given. It starts enabled, with no roots.
"""
from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from classeg.decoded import ALL_EXTENSIONS

__all__ = ["HASH_DIGITS", "KeyRedaction", "LABEL_PREFIX", "RedactingFilter", "URI_FIELDS", "activate", "current",
           "from_config", "install_log_filter", "key_hash", "label", "scrub"]

LABEL_PREFIX = "key#"
HASH_DIGITS = 8
# Fields of printed summaries that hold object keys or URIs (the table columns of the same names keep them).
URI_FIELDS = frozenset({"source_uri", "uri", "key", "relpath", "slice_uri", "image_path", "mask_path",
                        "mask_source_uri", "series_key"})
# Characters that end a path in free text; a space does too, unless the next word goes on with a '/'.
_PATH_CHAR = r"[^\s'\"<>(){}\[\],;|]"
_REST = re.compile(rf"(?:{_PATH_CHAR}|\s(?={_PATH_CHAR}*/))+")
_TRAILING = ".:"


def key_hash(key: str) -> str:
    """The hash part of a label: the first :data:`HASH_DIGITS` hex digits of SHA-256 of ``key`` (UTF-8)."""
    return hashlib.sha256(str(key).encode("utf-8")).hexdigest()[:HASH_DIGITS]


def _extension(key: str) -> str:
    lower = key.lower()
    return next((ext for ext in sorted(ALL_EXTENSIONS, key=len, reverse=True) if lower.endswith(ext)), "")


def _hashed(relative: str) -> str:
    return f"{LABEL_PREFIX}{key_hash(relative)}{_extension(relative)}"


def _root_forms(root: str) -> list[tuple[str, bool]]:
    """The spellings of ``root`` that messages use, each with whether what follows it is percent-encoded."""
    from classeg.io.uri import parse_uri

    try:
        location = parse_uri(root)
    except ValueError:
        return [(str(root).rstrip("/"), False)]
    if location.scheme == "s3":
        prefix = (location.prefix or "").rstrip("/")
        return [(f"{scheme}://{location.bucket}" + (f"/{prefix}" if prefix else ""), False)
                for scheme in ("s3", "s3a", "s3n")]
    path = location.path.rstrip("/")
    return [(location.uri.rstrip("/"), True), ("file://" + path, False), ("file:" + path, False), (path, False)]


@dataclass(frozen=True)
class KeyRedaction:
    """What classeg prints in place of object keys. ``enabled``: False prints keys as they are. ``roots``: the
    configured archive and dataset roots, kept readable in labels. Picklable: tasks get a copy."""

    enabled: bool = True
    roots: tuple[str, ...] = ()
    _forms: tuple[tuple[str, bool], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "roots", tuple(str(root) for root in self.roots if root))
        forms: dict[str, bool] = {}
        for root in self.roots:
            for form, encoded in _root_forms(root):
                if form:  # file:///a is both the encoded URI and the plain one: decoding wins
                    forms[form] = forms.get(form, False) or encoded
        object.__setattr__(self, "_forms", tuple(sorted(forms.items(), key=lambda item: -len(item[0]))))

    def label(self, key: Any) -> str:
        """``key`` (a URI, path or archive-relative key) as printed: itself when redaction is off or it is a
        root; else ``<root>/key#<hash><ext>`` below a configured root, ``s3://bucket/key#...`` on S3,
        ``key#...`` otherwise. The hash covers the part below the root (the bucket, or the whole path)."""
        text = str(key)
        if not self.enabled or not text:
            return text
        for form, encoded in self._forms:
            if text == form:
                return text
            if text.startswith(form + "/"):
                relative = text[len(form) + 1:]
                return f"{form}/{_hashed(unquote(relative) if encoded else relative)}"
        scheme, sep, rest = text.partition("://")
        if sep and scheme.lower() in ("s3", "s3a", "s3n"):
            bucket, _, object_key = rest.partition("/")
            return f"{scheme}://{bucket}/{_hashed(object_key)}" if object_key else text
        if text.startswith("file:"):
            from classeg.io.uri import parse_uri

            try:
                text = parse_uri(text).path
            except ValueError:
                pass
        return _hashed(text)

    def text(self, message: Any, *keys: Any) -> str:
        """``message`` with each of ``keys`` (longest first) and every path below a configured root replaced
        by its label; unchanged when redaction is off."""
        message = str(message)
        if not self.enabled:
            return message
        for key in sorted({str(k) for k in keys if k}, key=len, reverse=True):
            if key in message:
                message = message.replace(key, self.label(key))
        for form, _ in self._forms:
            if form + "/" in message:
                message = re.sub(re.escape(form + "/") + _REST.pattern, self._replace, message)
        return message

    def _replace(self, match: re.Match) -> str:
        found = match.group(0)
        if LABEL_PREFIX in found:  # already a label
            return found
        kept = len(found) - len(found.rstrip(_TRAILING))
        path, tail = (found[:-kept], found[-kept:]) if kept else (found, "")
        return self.label(path) + tail

    def value(self, value: Any) -> Any:
        """A printed summary (mappings, lists, strings) with :data:`URI_FIELDS` values labelled and every other
        string scrubbed by :meth:`text`."""
        if not self.enabled:
            return value
        return self._value(value, ())

    def _value(self, value: Any, keys: tuple) -> Any:
        if isinstance(value, Mapping):  # a record's own keys are scrubbed from its other fields
            own = keys + tuple(item for name, item in value.items() if name in URI_FIELDS and isinstance(item, str))
            return {name: (self.label(item) if name in URI_FIELDS and isinstance(item, str) else
                           self._value(item, own)) for name, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._value(item, keys) for item in value]
        if isinstance(value, str):
            return self.text(value, *keys)
        return value


_LOCK = threading.Lock()
_ACTIVE = KeyRedaction()


def activate(policy: KeyRedaction | None) -> KeyRedaction:
    """Make ``policy`` this process's (None: leave it); returns the one it replaces."""
    global _ACTIVE
    with _LOCK:
        previous = _ACTIVE
        if policy is not None:
            _ACTIVE = policy
        return previous


def current() -> KeyRedaction:
    """This process's policy."""
    return _ACTIVE


def label(key: Any) -> str:
    """:meth:`KeyRedaction.label` under this process's policy."""
    return _ACTIVE.label(key)


def scrub(message: Any, *keys: Any) -> str:
    """:meth:`KeyRedaction.text` under this process's policy."""
    return _ACTIVE.text(message, *keys)


def from_config(cfg: Any, *, extra_roots: Iterable[str] = ()) -> KeyRedaction:
    """The policy of a config: ``score.redact_keys_in_logs``, with the configured ``score.archive`` and
    ``ingest.input`` (and ``extra_roots``) as the roots kept readable."""
    roots = [getattr(cfg.score, "archive", None), getattr(cfg.ingest, "input", None), *extra_roots]
    return KeyRedaction(enabled=bool(cfg.score.redact_keys_in_logs), roots=tuple(r for r in roots if r))


class RedactingFilter(logging.Filter):
    """A handler filter scrubbing (:meth:`KeyRedaction.text`) every record's message of paths below the
    configured roots, whoever logged it: the net under the explicit labels of classeg's own log calls. A record's
    traceback (``exc_info``, as ``--log-level DEBUG`` logs a failure's) and stack are formatted here and scrubbed
    the same way: exception messages and executor tracebacks carried in them name files too."""

    def filter(self, record: logging.LogRecord) -> bool:
        policy = _ACTIVE
        if policy.enabled and policy.roots:
            message = record.getMessage()
            scrubbed = policy.text(message)
            if scrubbed != message:
                record.msg, record.args = scrubbed, None
            if record.exc_info and not record.exc_text:
                # Formatters use exc_text when it is set, so the handler prints this text, not a fresh one.
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = policy.text(record.exc_text)
            if record.stack_info:
                record.stack_info = policy.text(record.stack_info)
        return True


def install_log_filter(handlers: Iterable[logging.Handler] | None = None) -> None:
    """Add one :class:`RedactingFilter` to each of ``handlers`` (default: the root logger's)."""
    for handler in logging.getLogger().handlers if handlers is None else handlers:
        if not any(isinstance(item, RedactingFilter) for item in handler.filters):
            handler.addFilter(RedactingFilter())
