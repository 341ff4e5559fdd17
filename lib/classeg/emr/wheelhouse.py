"""The wheelhouse: every wheel an EMR node needs, plus the bootstrap action, job scripts and EMR config overlay.

Layout (what ``emr/bootstrap.sh`` expects)::

    classeg-<version>-py3-none-any.whl      the project (pip wheel of the source checkout)
    torch-*.whl, torchvision-*.whl, ...     stage 1: requirements-torch.txt, with their dependencies
    pyspark-*.whl, petastorm-*.whl, ...     stage 2: requirements.txt under constraints.txt
    horovod-0.28.1-*.whl                    the prebuilt wheel from .cache/wheels (else build_horovod.sh and
                                            requirements-build.txt, and every node builds it: slow)
    requirements-torch.txt requirements.txt constraints.txt [requirements-build.txt]
    bootstrap.sh build_horovod.sh           the bootstrap action (cluster.yaml points at bootstrap.sh here)
    jobs/<job>.py conf/emr.yaml             what the spark-submit steps run
    MANIFEST.json                           classeg version, target platform, sha256 of every file

Dependencies are downloaded for the EMR target (CPython 3.11, manylinux x86_64, binary wheels only) whatever
machine builds the wheelhouse. The wheelhouse is the lock: nodes install with ``pip --no-index`` from it, so one
version of each package is all they can get.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from classeg import __version__

log = logging.getLogger(__name__)

# Installed first, in their own pip call (see the Makefile and DESIGN.md).
TORCH_REQUIREMENTS = ("torch==2.14.1", "torchvision==0.29.1")
HOROVOD_VERSION = "0.28.1"
BUILD_REQUIREMENTS = ("wheel", "cmake")
# Published as source only (PySpark ships no wheel on PyPI). Pure Python: a wheel built here installs anywhere.
SOURCE_ONLY = ("pyspark",)
PYTHON_VERSION = "3.11"
# EMR 7.x runs Amazon Linux 2023 (glibc 2.34). pip expands manylinux2014 to the older tags itself but not the
# manylinux_2_N names, so list those one by one.
TARGET_GLIBC = (2, 34)
PLATFORMS = tuple(f"manylinux_2_{minor}_x86_64" for minor in range(TARGET_GLIBC[1], 16, -1)) + ("manylinux2014_x86_64",)


class WheelhouseError(RuntimeError):
    """Building or uploading the wheelhouse failed; the message names the step."""


def repo_root() -> Path:
    """The source checkout this package runs from (setup.py beside lib/), for the default project paths."""
    root = Path(__file__).resolve().parents[3]
    if not (root / "setup.py").is_file():
        raise ValueError(f"no source checkout found at {root}: pass --project DIR (the classeg repository)")
    return root


def _requirement_lines(path: Path) -> tuple[str, ...]:
    if not path.is_file():
        raise FileNotFoundError(f"requirements file {path} does not exist")
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return tuple(line for line in lines if line)


@dataclass(frozen=True)
class WheelhouseSpec:
    """What goes into a wheelhouse. Everything is injectable so that a test can build a tiny one offline.

    ``requirements``/``constraints`` are requirement lines (default: the project's requirements.txt and
    constraints.txt); ``source_only`` names requirements that have no wheel and are built here (pure Python
    only, versions from the constraints); ``pip_options`` are extra ``pip download`` options (a mirror, or ``--no-index
    --find-links DIR``); ``horovod_dir`` is searched for a prebuilt ``horovod-0.28.1-*.whl``.
    """

    project_dir: Path
    requirements: tuple[str, ...]
    constraints: tuple[str, ...]
    torch_requirements: tuple[str, ...] = TORCH_REQUIREMENTS
    build_requirements: tuple[str, ...] = BUILD_REQUIREMENTS
    source_only: tuple[str, ...] = SOURCE_ONLY
    horovod_dir: Path | None = None
    pip_options: tuple[str, ...] = ()
    python_version: str = PYTHON_VERSION
    platforms: tuple[str, ...] = PLATFORMS
    python: str = field(default=sys.executable)

    @classmethod
    def for_project(cls, project_dir: str | Path | None = None, **overrides: Any) -> "WheelhouseSpec":
        """The spec of a source checkout: its requirements.txt, constraints.txt and .cache/wheels."""
        root = Path(project_dir).resolve() if project_dir else repo_root()
        if not (root / "setup.py").is_file():
            raise ValueError(f"--project {root} is not the classeg repository (no setup.py)")
        # Where tools/build_horovod.sh caches the wheel: the clone's .cache/wheels, or the one in the home dir.
        caches = [root / ".cache" / "wheels", Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                  / "classeg" / "wheels"]
        values: dict[str, Any] = {
            "project_dir": root,
            "requirements": _requirement_lines(root / "requirements.txt"),
            "constraints": _requirement_lines(root / "constraints.txt"),
            "horovod_dir": next((cache for cache in caches if any(cache.glob(f"horovod-{HOROVOD_VERSION}-*.whl"))),
                                caches[0]),
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)

    def horovod_wheel(self) -> Path | None:
        if self.horovod_dir is None or not self.horovod_dir.is_dir():
            return None
        wheels = sorted(self.horovod_dir.glob(f"horovod-{HOROVOD_VERSION}-*.whl"))
        return wheels[-1] if wheels else None


@dataclass(frozen=True)
class Action:
    """One step of building the wheelhouse; ``describe`` is what ``--dry-run`` shows."""

    describe: str
    run: Callable[[], Any] = field(compare=False, repr=False)


def _pip_download(spec: WheelhouseSpec, dest: Path, requirement_args: Sequence[str]) -> list[str]:
    argv = [spec.python, "-m", "pip", "download", "--dest", str(dest), "--only-binary=:all:",
            "--python-version", spec.python_version, "--implementation", "cp",
            "--abi", "cp" + spec.python_version.replace(".", "")]
    for platform in spec.platforms:
        argv += ["--platform", platform]
    return argv + list(spec.pip_options) + list(requirement_args)


def _run(argv: Sequence[str], what: str) -> None:
    log.info("%s: %s", what, " ".join(argv))
    # pip's progress goes to stderr so that stdout stays the command's JSON result.
    result = subprocess.run(list(argv), stdout=sys.stderr, stderr=sys.stderr, check=False)
    if result.returncode != 0:
        raise WheelhouseError(f"{what} failed (exit {result.returncode}): {' '.join(argv)}")


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def _copy(src: Path, dest: Path) -> None:
    if not src.is_file():
        raise FileNotFoundError(f"{src} does not exist")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dest)


def max_glibc(wheel: Path) -> tuple[int, int] | None:
    """The newest ``GLIBC_x.y`` symbol version any shared library in ``wheel`` needs (None: none found)."""
    newest: tuple[int, int] | None = None
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if ".so" not in name:
                continue
            for major, minor in re.findall(rb"GLIBC_(\d+)\.(\d+)", archive.read(name)):
                version = (int(major), int(minor))
                newest = version if newest is None or version > newest else newest
    return newest


def plan(spec: WheelhouseSpec, stage: Path) -> list[Action]:
    """The actions that fill ``stage`` (a local folder) with the wheelhouse, in order."""
    project = spec.project_dir
    actions = [Action(f"mkdir {stage}", lambda: stage.mkdir(parents=True, exist_ok=True))]
    files = {
        "requirements-torch.txt": spec.torch_requirements,
        "requirements.txt": spec.requirements,
        "constraints.txt": spec.constraints,
    }
    for name, lines in files.items():
        actions.append(Action(f"write {stage / name} ({len(lines)} lines)",
                              lambda name=name, lines=lines: _write_lines(stage / name, lines)))
    # --no-build-isolation: build with this venv's setuptools/wheel, so building needs no index access.
    wheel_argv = [spec.python, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir",
                  str(stage), str(project)]
    actions.append(Action(" ".join(wheel_argv), lambda: _run(wheel_argv, "building the classeg wheel")))
    if spec.source_only:
        source_argv = [spec.python, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir",
                       str(stage), "-c", str(stage / "constraints.txt"), *spec.pip_options, *spec.source_only]
        actions.append(Action(" ".join(source_argv),
                              lambda: _run(source_argv, f"building wheels of {', '.join(spec.source_only)}")))
    if spec.torch_requirements:
        torch_argv = _pip_download(spec, stage, ["-r", str(stage / "requirements-torch.txt")])
        actions.append(Action(" ".join(torch_argv), lambda: _run(torch_argv, "downloading torch/torchvision")))
    # --find-links STAGE: the wheels just built satisfy their requirements (petastorm needs pyspark).
    deps_argv = _pip_download(spec, stage, ["--find-links", str(stage), "-c", str(stage / "constraints.txt"),
                                            "-r", str(stage / "requirements.txt")])
    actions.append(Action(" ".join(deps_argv), lambda: _run(deps_argv, "downloading the pinned dependencies")))

    horovod = spec.horovod_wheel()
    if horovod is not None:
        actions.append(Action(f"copy {horovod} -> {stage / horovod.name}",
                              lambda: _check_and_copy_horovod(horovod, stage)))
    else:
        where = spec.horovod_dir or "(no cache folder)"
        log.warning("no horovod-%s wheel in %s: every node will build Horovod at bootstrap (about 15 minutes, "
                    "needs PyPI access); run `make setup` first to cache the wheel", HOROVOD_VERSION, where)
        actions.append(Action(f"write {stage / 'requirements-build.txt'} (no prebuilt Horovod in {where})",
                              lambda: _write_lines(stage / "requirements-build.txt", spec.build_requirements)))
        if spec.build_requirements:
            build_argv = _pip_download(spec, stage, list(spec.build_requirements))
            actions.append(Action(" ".join(build_argv), lambda: _run(build_argv, "downloading Horovod build tools")))

    copies = [(project / "emr" / "bootstrap.sh", stage / "bootstrap.sh"),
              (project / "tools" / "build_horovod.sh", stage / "build_horovod.sh"),
              (project / "conf" / "emr.yaml", stage / "conf" / "emr.yaml")]
    jobs = sorted((project / "jobs").glob("*.py"))
    if not jobs:
        log.warning("no job scripts in %s: EMR steps will fail until the wheelhouse has jobs/<job>.py",
                    project / "jobs")
    copies += [(job, stage / "jobs" / job.name) for job in jobs]
    for src, dest in copies:
        actions.append(Action(f"copy {src} -> {dest}", lambda src=src, dest=dest: _copy(src, dest)))
    actions.append(Action(f"write {stage / 'MANIFEST.json'}", lambda: write_manifest(spec, stage)))
    return actions


def _check_and_copy_horovod(wheel: Path, stage: Path) -> None:
    needed = max_glibc(wheel)
    if needed is not None and needed > TARGET_GLIBC:
        log.warning("%s needs glibc %d.%d but EMR 7.x (Amazon Linux 2023) has %d.%d: it will not load there. "
                    "Build it on Amazon Linux 2023 (or leave it out and let the bootstrap build it on the nodes)",
                    wheel.name, *needed, *TARGET_GLIBC)
    _copy(wheel, stage / wheel.name)


def write_manifest(spec: WheelhouseSpec, stage: Path) -> dict[str, Any]:
    """MANIFEST.json: what was built, for which target, and the sha256 of every file in ``stage``."""
    files = {}
    for path in sorted(p for p in stage.rglob("*") if p.is_file() and p.name != "MANIFEST.json"):
        files[path.relative_to(stage).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest = {
        "classeg_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python_version": spec.python_version,
        "platforms": list(spec.platforms),
        "torch_requirements": list(spec.torch_requirements),
        "horovod": next((name for name in files if name.startswith("horovod-")), None),
        "files": files,
    }
    (stage / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def upload(stage: Path, destination: str, s3_client) -> list[str]:
    """Upload every file under ``stage`` to ``destination`` (``s3://bucket/prefix``); returns the object URIs."""
    bucket, _, prefix = destination[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"--output must be s3://bucket/prefix or a local folder, got {destination!r}")
    prefix = prefix.strip("/")
    uris = []
    for path in sorted(p for p in stage.rglob("*") if p.is_file()):
        key = "/".join(part for part in (prefix, path.relative_to(stage).as_posix()) if part)
        log.info("upload %s -> s3://%s/%s", path.name, bucket, key)
        s3_client.upload_file(str(path), bucket, key)
        uris.append(f"s3://{bucket}/{key}")
    return uris


def build(spec: WheelhouseSpec, output: str, *, s3_client_factory: Callable[[], Any] | None = None,
          dry_run: bool = False) -> dict[str, Any]:
    """Build the wheelhouse into ``output`` (a local folder, ``file://`` URI, or ``s3://bucket/prefix``).

    For S3 it is built in a temporary folder and uploaded with the client ``s3_client_factory()`` returns.
    ``dry_run`` returns the planned actions without running any. Raises WheelhouseError when a step fails.
    """
    to_s3 = output.startswith("s3://")
    if not to_s3 and "://" in output and not output.startswith("file://"):
        raise ValueError(f"--output must be s3://bucket/prefix or a local folder, got {output!r}")
    if to_s3 and s3_client_factory is None:
        raise ValueError("an S3 client factory is needed to upload to S3")
    if dry_run:
        stage = Path("<temporary folder>") if to_s3 else Path(output.removeprefix("file://"))
        actions = [action.describe for action in plan(spec, stage)]
        if to_s3:
            actions.append(f"upload every file under {stage} to {output.rstrip('/')}/")
        return {"dry_run": True, "output": output, "actions": actions}
    with tempfile.TemporaryDirectory(prefix="classeg-wheelhouse-") as tmp:
        stage = Path(tmp) if to_s3 else Path(output.removeprefix("file://")).resolve()
        for action in plan(spec, stage):
            log.info("%s", action.describe)
            action.run()
        manifest = json.loads((stage / "MANIFEST.json").read_text(encoding="utf-8"))
        result: dict[str, Any] = {"output": output, "files": len(manifest["files"]) + 1,
                                  "horovod": manifest["horovod"],
                                  "wheels": sorted(name for name in manifest["files"] if name.endswith(".whl"))}
        if to_s3:
            from boto3.exceptions import S3UploadFailedError
            from botocore.exceptions import BotoCoreError, ClientError

            try:
                result["uploaded"] = len(upload(stage, output.rstrip("/"), s3_client_factory()))
            except (ClientError, BotoCoreError, S3UploadFailedError, OSError) as err:
                raise WheelhouseError(f"uploading the wheelhouse to {output} failed: {err}") from err
    return result
