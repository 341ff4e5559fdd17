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

Failures as one line
--------------------
:func:`root_cause` turns any exception, however deep (a Py4JJavaError holding an executor's Python traceback,
a chain of ``raise ... from err``), into the one line the CLI prints.
"""
from __future__ import annotations

import re
import traceback

__all__ = [
    "ArchiveError", "ConfigError", "DECODE_ERROR_KINDS", "ERROR_KINDS", "FETCH_ERROR_KINDS", "FetchError",
    "JobFailed", "MAX_CAUSE_CHARS", "RETRYABLE_ERROR_KINDS", "STATUSES", "error_kind", "format_error",
    "python_failures", "root_cause",
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


# ------------------------------------------------------------------------------------------- root causes
MAX_CAUSE_CHARS = 400
# Exceptions that only carry another one: the JVM's (py4j) and Spark's Python wrappers, torchrun's summary.
_WRAPPER_PACKAGES = ("py4j", "pyspark")
_WRAPPER_NAMES = frozenset({"Py4JJavaError", "PythonException", "ChildFailedError"})
_TRACEBACK = "Traceback (most recent call last):"
_FRAME = re.compile(r'^\s+File "(?P<path>[^"]+)", line (?P<line>\d+), in (?P<name>\S+)')
# "ValueError: boom", "pyspark.errors.exceptions.base.PySparkRuntimeError: [X] y", "KeyboardInterrupt"
_EXCEPTION_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.$]*)(?::\s?(?P<message>.*))?$")
# A message that already names a failure ("training failed on rank 1: KeyError: 'label'") needs no other.
_NAMES_AN_EXCEPTION = re.compile(r"\b[A-Z]\w*(?:Error|Exception|Exit|Interrupt): ")
_CLASSEG_PATH = re.compile(r"(?:^|[/\\])classeg[/\\]")


def root_cause(err: BaseException, *, limit: int = MAX_CAUSE_CHARS) -> str:
    """One line (at most ``limit`` characters) naming why ``err`` happened.

    - classeg's own exceptions (``ConfigError``, ``JobFailed``, ...) give their message; any other gives
      ``"<Type>: <message>"``, followed by ``(at classeg/<module>.py:<line> in <function>)``, the innermost
      classeg frame, when it was raised outside classeg (in a library classeg called).
    - Spark's and py4j's exceptions (``Py4JJavaError``, ``PythonException``, ``AnalysisException``, ...) give
      the failure they carry: the last Python exception line of the executor's traceback in their text
      (``"ValueError: boom"``), else the JVM exception's (the innermost ``Caused by:``), else their first line.
    - A chain (``raise ... from``, or raised while handling another) gives its outermost exception, which
      classeg writes to name the bad value, followed by ``: <executor failure>`` when a Spark exception further
      down the chain carries one and the message names no exception (``... : KeyError: 'label'``) itself.
    """
    chain = _chain(err)
    wrapper = next((item for item in chain if _is_wrapper(item)), None)
    executor = _carried_failure(wrapper) if wrapper is not None else None
    if _is_wrapper(chain[0]):
        line = executor
    else:
        line = _own_line(chain[0])
        if executor and not _NAMES_AN_EXCEPTION.search(_one_line(_text(chain[0]))):
            line = f"{line}: {executor}"
    return _cap(line, limit)


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and the exceptions behind it, outermost first (``__cause__``, else an unsuppressed
    ``__context__``), each once."""
    chain, seen = [], set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        chain.append(current)
        seen.add(id(current))
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return chain


def _is_wrapper(err: BaseException) -> bool:
    return type(err).__module__.split(".")[0] in _WRAPPER_PACKAGES or type(err).__name__ in _WRAPPER_NAMES


def _text(err: BaseException) -> str:
    try:
        return str(err)
    except Exception as failed:  # a Py4JJavaError asks the JVM for its text; a dead JVM cannot answer
        return f"{type(err).__name__} (its text is unavailable: {type(failed).__name__})"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _cap(line: str, limit: int) -> str:
    return line if len(line) <= limit else line[: max(limit - 4, 1)].rstrip() + " ..."


def _is_classeg(path: str) -> bool:
    return bool(_CLASSEG_PATH.search(path))


def _location(frames: list[tuple[str, int, str]]) -> str:
    """`` (at classeg/x.py:12 in f)``: the innermost classeg frame, when the failure was raised outside classeg;
    "" when it was raised in classeg or no classeg frame is known."""
    if not frames or _is_classeg(frames[-1][0]):
        return ""
    for path, line, name in reversed(frames):
        if _is_classeg(path):
            at = path.replace("\\", "/")
            return f" (at {at[at.rfind('classeg/'):]}:{line} in {name})"
    return ""


def _own_line(err: BaseException) -> str:
    message = _one_line(_text(err))
    if type(err).__module__.split(".")[0] == "classeg" and message:
        return message
    frames = [(frame.filename, frame.lineno, frame.name) for frame in traceback.extract_tb(err.__traceback__)]
    name = type(err).__name__
    return (f"{name}: {message}" if message else name) + _location(frames)


def _carried_failure(err: BaseException) -> str:
    """The failure a Spark/py4j exception carries (see :func:`root_cause`)."""
    text = _text(err)
    failures = python_failures(text)
    if failures:
        real = [failure for failure in failures if failure[0] not in _WRAPPER_NAMES] or failures
        name, message, frames = real[-1]
        return (f"{name}: {message}" if message else name) + _location(frames)
    java = [line.strip() for line in text.splitlines() if line.strip() and not line[0].isspace()]
    caused = [line[len("Caused by:"):].strip() for line in java if line.startswith("Caused by:")]
    lines = caused or [line[1:].strip() for line in java if line.startswith(": ")] or java
    if not lines:
        return type(err).__name__
    match = _EXCEPTION_LINE.match(lines[-1] if caused else lines[0])
    if match and match.group("message") is not None and "." in match.group("type"):  # a JVM class name
        return f"{match.group('type').rsplit('.', 1)[-1]}: {_one_line(match.group('message'))}"
    return f"{type(err).__name__}: {_one_line(lines[-1] if caused else lines[0])}"


def python_failures(text: str) -> list[tuple[str, str, list[tuple[str, int, str]]]]:
    """The Python tracebacks printed in ``text``, in order: ``(exception name, first line of its message,
    frames as (path, line, function))``. Spark puts an executor's traceback in the text of the exception the
    driver sees."""
    lines, found, index = text.splitlines(), [], 0
    while index < len(lines):
        if not lines[index].rstrip().endswith(_TRACEBACK):
            index += 1
            continue
        frames, index = [], index + 1
        while index < len(lines) and lines[index][:1].isspace() and lines[index].strip():
            frame = _FRAME.match(lines[index])
            if frame:
                frames.append((frame.group("path"), int(frame.group("line")), frame.group("name")))
            index += 1
        match = _EXCEPTION_LINE.match(lines[index].strip()) if index < len(lines) else None
        if match:
            message = _one_line(match.group("message") or "")
            found.append((match.group("type").rsplit(".", 1)[-1], message, frames))
    return found
