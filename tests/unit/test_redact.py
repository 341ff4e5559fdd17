"""classeg.redact: labels of object keys, scrubbed messages, the process-wide policy and the log filter."""
from __future__ import annotations

import hashlib
import logging

import pytest

from classeg import redact
from classeg.redact import KeyRedaction


def _h(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


POLICY = KeyRedaction(roots=("s3://bucket/archive", "/data/scans"))


@pytest.mark.parametrize("key, label", [
    ("s3://bucket/archive/DOE_JANE/1.dcm", f"s3://bucket/archive/key#{_h('DOE_JANE/1.dcm')}.dcm"),
    ("s3a://bucket/archive/DOE_JANE/1.dcm", f"s3a://bucket/archive/key#{_h('DOE_JANE/1.dcm')}.dcm"),
    ("DOE_JANE/1.dcm", f"key#{_h('DOE_JANE/1.dcm')}.dcm"),
    ("s3://bucket/archive", "s3://bucket/archive"),  # the root itself
    ("s3://other/p/DOE/v.nii.gz", f"s3://other/key#{_h('p/DOE/v.nii.gz')}.nii.gz"),
    # every spelling of a local root, the percent-encoded one decoded: one hash per key
    ("file:///data/scans/DOE%20JANE/a.png", f"file:///data/scans/key#{_h('DOE JANE/a.png')}.png"),
    ("file:/data/scans/DOE JANE/a.png", f"file:/data/scans/key#{_h('DOE JANE/a.png')}.png"),
    ("/data/scans/DOE JANE/a.png", f"/data/scans/key#{_h('DOE JANE/a.png')}.png"),
    ("/home/DOE/notes.txt", f"key#{_h('/home/DOE/notes.txt')}"),  # no root, no scan extension
])
def test_labels(key, label):
    assert POLICY.label(key) == label


def test_text_replaces_given_keys_and_paths_below_a_root():
    message = ("could not read 'file:/data/scans/DOE JANE/MRN1/a.dcm': not_found: no such file: "
               "file:///data/scans/DOE%20JANE/MRN1/a.dcm")
    label = f"key#{_h('DOE JANE/MRN1/a.dcm')}.dcm"
    assert POLICY.text(message) == (f"could not read 'file:/data/scans/{label}': not_found: no such file: "
                                    f"file:///data/scans/{label}")
    assert POLICY.text("DOE_JANE/1.dcm: unreadable", "DOE_JANE/1.dcm") == f"key#{_h('DOE_JANE/1.dcm')}.dcm: unreadable"
    assert POLICY.text("listed s3://bucket/archive: 5 objects") == "listed s3://bucket/archive: 5 objects"


def test_off_keeps_everything():
    off = KeyRedaction(enabled=False, roots=("/data/scans",))
    assert off.label("/data/scans/DOE/a.dcm") == "/data/scans/DOE/a.dcm"
    assert off.text("/data/scans/DOE/a.dcm: bad", "DOE/a.dcm") == "/data/scans/DOE/a.dcm: bad"
    assert off.value({"relpath": "DOE/a.dcm"}) == {"relpath": "DOE/a.dcm"}


def test_value_labels_uri_fields_and_scrubs_their_record():
    printed = POLICY.value({"output": "/out", "errors": [{"relpath": "DOE/a.dcm", "detail": "DOE/a.dcm: truncated"}]})
    label = f"key#{_h('DOE/a.dcm')}.dcm"
    assert printed == {"output": "/out", "errors": [{"relpath": label, "detail": f"{label}: truncated"}]}


def test_activate_and_the_log_filter():
    handler = logging.Handler()
    records = []
    handler.emit = records.append
    logger = logging.getLogger("classeg.test_redact")
    logger.addHandler(handler)
    previous = redact.activate(KeyRedaction(roots=("/data/scans",)))
    try:
        redact.install_log_filter([handler])
        redact.install_log_filter([handler])  # idempotent
        assert len(handler.filters) == 1
        logger.warning("skipping %s: gone", "/data/scans/DOE/a.dcm")
        assert records[-1].getMessage() == f"skipping /data/scans/key#{_h('DOE/a.dcm')}.dcm: gone"
        assert redact.label("DOE/a.dcm") == f"key#{_h('DOE/a.dcm')}.dcm"
    finally:
        redact.activate(previous)
        logger.removeHandler(handler)


def test_the_log_filter_scrubs_tracebacks():
    """What ``--log-level DEBUG`` prints for a failure: the traceback, whose exception messages name files."""
    import io

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("classeg.test_redact_traceback")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    previous = redact.activate(KeyRedaction(roots=("/data/scans",)))
    try:
        redact.install_log_filter([handler])
        try:
            try:
                open("/data/scans/DOE_JANE/MRN12345/a.dcm", "rb")
            except OSError as err:
                raise RuntimeError("task failed on /data/scans/DOE_JANE/MRN12345/a.dcm") from err
        except RuntimeError as err:
            logger.debug("classeg score failed", exc_info=err)
        logger.debug("where", stack_info=True)
    finally:
        redact.activate(previous)
        logger.removeHandler(handler)
    printed = stream.getvalue()
    assert "Traceback (most recent call last)" in printed and "FileNotFoundError" in printed
    assert "DOE_JANE" not in printed and "MRN12345" not in printed
    assert printed.count(f"/data/scans/key#{_h('DOE_JANE/MRN12345/a.dcm')}.dcm") >= 2  # messages and source lines


def test_from_config_reads_the_key_and_the_roots(base_config):
    cfg = base_config.replace(score__archive="s3://b/a", ingest__input="/data/in", score__redact_keys_in_logs=False)
    policy = redact.from_config(cfg)
    assert policy == KeyRedaction(enabled=False, roots=("s3://b/a", "/data/in"))
