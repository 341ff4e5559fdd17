"""`classeg emr wheelhouse` and emr/bootstrap.sh end to end, offline and fast: the wheelhouse is built from the
real project wheel plus tiny hand-made wheels standing in for torch, the pinned dependencies and Horovod
(served by `pip download --no-index --find-links`), uploaded to moto S3, synced back, and installed by the
bootstrap script into a fresh venv."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import boto3
import pytest

from classeg import __version__
from classeg.emr import wheelhouse

REPO = Path(__file__).resolve().parents[2]
BOOTSTRAP = REPO / "emr" / "bootstrap.sh"
BUCKET = "classeg-wheels"


def make_wheel(folder: Path, name: str, version: str, source: str | None = None) -> Path:
    """A minimal pure-Python wheel ``name-version-py3-none-any.whl`` holding module ``name``."""
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": source if source is not None else f"__version__ = {version!r}\n",
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: classeg-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = "\n".join(record) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def make_sdist(folder: Path, name: str, version: str) -> Path:
    """A minimal setuptools sdist ``name-version.tar.gz`` (a package published without wheels, like pyspark)."""
    files = {
        "PKG-INFO": f"Metadata-Version: 1.0\nName: {name}\nVersion: {version}\n",
        "setup.py": f"from setuptools import setup\nsetup(name={name!r}, version={version!r}, py_modules=[{name!r}])\n",
        f"{name}.py": f"__version__ = {version!r}\n",
    }
    folder.mkdir(parents=True, exist_ok=True)
    sdist = folder / f"{name}-{version}.tar.gz"
    with tarfile.open(sdist, "w:gz") as archive:
        for path, text in files.items():
            info = tarfile.TarInfo(f"{name}-{version}/{path}")
            info.size = len(text.encode())
            archive.addfile(info, io.BytesIO(text.encode()))
    return sdist


@pytest.fixture(scope="module")
def isolated_pip():
    """pip sees only what a test gives it: no machine-wide find-links or extra indexes."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PIP_CONFIG_FILE", os.devnull)
        for name in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX"):
            patch.delenv(name, raising=False)
        yield


@pytest.fixture(scope="module")
def emr_moto(moto_endpoint):
    """The session's moto server on 127.0.0.1 (EMR, Step Functions, Scheduler, S3; tests/conftest.py)."""
    return moto_endpoint


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory) -> Path:
    """A find-links folder: fake torch, two versions of a pinned dependency, one unpinned, Horovod build tools,
    and a source-only package in two versions."""
    index = tmp_path_factory.mktemp("index")
    make_wheel(index, "tinytorch", "2.0")
    make_wheel(index, "tinypinned", "1.0")
    make_wheel(index, "tinypinned", "2.0")
    make_wheel(index, "tinyfree", "0.3")
    make_wheel(index, "tinybuildtool", "1.0")
    make_sdist(index, "tinysdist", "1.0")
    make_sdist(index, "tinysdist", "1.1")
    return index


@pytest.fixture(scope="module")
def horovod_cache(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("horovod-cache")
    make_wheel(cache, "horovod", wheelhouse.HOROVOD_VERSION)
    return cache


def tiny_spec(index: Path, horovod_dir: Path) -> wheelhouse.WheelhouseSpec:
    return wheelhouse.WheelhouseSpec.for_project(
        REPO, requirements=("tinypinned", "tinyfree", "tinysdist"), constraints=("tinypinned==1.0", "tinysdist==1.0"),
        torch_requirements=("tinytorch==2.0",), build_requirements=("tinybuildtool",), source_only=("tinysdist",),
        horovod_dir=horovod_dir,
        pip_options=("--no-index", "--find-links", str(index)))


@pytest.fixture(scope="module")
def built(tmp_path_factory, isolated_pip, emr_moto, tiny_index, horovod_cache):
    """The tiny wheelhouse, built straight to moto S3 (the way `classeg emr wheelhouse` publishes it) and
    copied back the way the bootstrap's `aws s3 sync` would."""
    s3 = boto3.client("s3", endpoint_url=emr_moto, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    result = wheelhouse.build(tiny_spec(tiny_index, horovod_cache), f"s3://{BUCKET}/classeg/wheelhouse/",
                              s3_client_factory=lambda: s3)
    local = tmp_path_factory.mktemp("synced-wheelhouse")
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET, Prefix="classeg/wheelhouse/")["Contents"]]
    for key in keys:
        target = local / key[len("classeg/wheelhouse/"):]
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(BUCKET, key, str(target))
    return {"result": result, "keys": keys, "dir": local, "s3": s3}


def test_wheelhouse_contents(built):
    result, folder = built["result"], built["dir"]
    wheels = sorted(path.name for path in folder.glob("*.whl"))
    assert wheels == sorted([f"classeg-{__version__}-py3-none-any.whl", "horovod-0.28.1-py3-none-any.whl",
                             "tinyfree-0.3-py3-none-any.whl", "tinypinned-1.0-py3-none-any.whl",
                             "tinysdist-1.0-py3-none-any.whl", "tinytorch-2.0-py3-none-any.whl"])
    assert result["wheels"] == wheels and result["horovod"] == "horovod-0.28.1-py3-none-any.whl"
    assert (folder / "requirements-torch.txt").read_text() == "tinytorch==2.0\n"
    assert (folder / "requirements.txt").read_text() == "tinypinned\ntinyfree\ntinysdist\n"
    assert (folder / "constraints.txt").read_text() == "tinypinned==1.0\ntinysdist==1.0\n"
    assert not (folder / "requirements-build.txt").exists()  # Horovod is prebuilt
    assert (folder / "bootstrap.sh").read_bytes() == BOOTSTRAP.read_bytes()
    assert (folder / "build_horovod.sh").read_bytes() == (REPO / "tools" / "build_horovod.sh").read_bytes()
    assert (folder / "conf" / "emr.yaml").read_bytes() == (REPO / "conf" / "emr.yaml").read_bytes()
    jobs = sorted(path.name for path in (REPO / "jobs").glob("*.py"))
    assert sorted(path.name for path in (folder / "jobs").glob("*.py")) == jobs
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    assert manifest["classeg_version"] == __version__
    assert manifest["python_version"] == "3.11"
    assert "manylinux_2_34_x86_64" in manifest["platforms"] and "manylinux2014_x86_64" in manifest["platforms"]
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    assert len(built["keys"]) == result["uploaded"] == len(manifest["files"]) + 1


def test_wheelhouse_dry_run_builds_nothing(tmp_path, tiny_index):
    out = tmp_path / "wh"
    no_horovod = tmp_path / "no-horovod"
    plan = wheelhouse.build(tiny_spec(tiny_index, no_horovod), str(out), dry_run=True)
    assert plan["dry_run"] is True and not out.exists()
    actions = plan["actions"]
    assert any("pip wheel --no-deps --no-build-isolation" in action and action.endswith(str(REPO))
               for action in actions)
    assert any("pip wheel --no-deps --no-build-isolation" in action and action.endswith(" tinysdist")
               for action in actions)
    downloads = [action for action in actions if " pip download " in action]
    assert len(downloads) == 3  # torch, pinned deps, Horovod build tools (no prebuilt Horovod given)
    assert all("--only-binary=:all: --python-version 3.11 --implementation cp --abi cp311" in action
               for action in downloads)
    assert any(action.startswith("copy ") and action.endswith("bootstrap.sh") for action in actions)
    s3_plan = wheelhouse.build(tiny_spec(tiny_index, no_horovod), "s3://bucket/wh", s3_client_factory=object,
                               dry_run=True)
    assert s3_plan["actions"][-1] == "upload every file under <temporary folder> to s3://bucket/wh/"


def test_wheelhouse_rejects_bad_output(tmp_path, tiny_index):
    with pytest.raises(ValueError, match="--output must be s3://bucket/prefix or a local folder"):
        wheelhouse.build(tiny_spec(tiny_index, tmp_path), "gs://bucket/wh", dry_run=True)


def test_wheelhouse_download_failure_names_the_step(tmp_path, isolated_pip, tiny_index):
    spec = tiny_spec(tiny_index, tmp_path / "no-horovod")
    spec = wheelhouse.WheelhouseSpec(**{**spec.__dict__, "requirements": ("no-such-package-xyz",)})
    with pytest.raises(wheelhouse.WheelhouseError, match="downloading the pinned dependencies failed"):
        wheelhouse.build(spec, str(tmp_path / "wh"))


def test_max_glibc(tmp_path):
    wheel = tmp_path / "x-1.0-cp311-cp311-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("x/lib.so", b"\x7fELF..GLIBC_2.17\x00GLIBC_2.35\x00GLIBC_2.4\x00")
        archive.writestr("x/__init__.py", "GLIBC_9.9 in a .py file does not count")
    assert wheelhouse.max_glibc(wheel) == (2, 35)
    assert wheelhouse.max_glibc(make_wheel(tmp_path, "pure", "1.0")) is None


# --- bootstrap.sh ---------------------------------------------------------------------------------------------


def bootstrap(tmp_path: Path, wheelhouse_uri: str, *extra: str, env: dict | None = None):
    return subprocess.run(
        ["bash", str(BOOTSTRAP), "--wheelhouse", wheelhouse_uri, "--venv", str(tmp_path / "opt" / "venv"),
         "--python", sys.executable, "--log", str(tmp_path / "bootstrap.log"), *extra],
        capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})}, check=False)


def venv_python(tmp_path: Path, code: str) -> str:
    return subprocess.run([str(tmp_path / "opt" / "venv" / "bin" / "python"), "-c", code], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_bootstrap_installs_then_is_a_no_op(tmp_path, built):
    uri = f"file://{built['dir']}"
    first = bootstrap(tmp_path, uri)
    assert first.returncode == 0, first.stdout + first.stderr
    versions = venv_python(tmp_path, "import classeg, horovod, tinypinned, tinyfree, tinysdist, tinytorch; "
                                     "print(classeg.__version__, horovod.__version__, tinypinned.__version__, "
                                     "tinyfree.__version__, tinysdist.__version__, tinytorch.__version__)")
    assert versions == f"{__version__} 0.28.1 1.0 0.3 1.0 2.0"  # held at 1.0 by constraints.txt
    marker = tmp_path / "opt" / "venv" / ".classeg-bootstrap"
    lines = marker.read_text().splitlines()
    assert lines[:2] == [f"wheelhouse={uri}", f"classeg={__version__}"]
    log = (tmp_path / "bootstrap.log").read_text()
    # The two-step order of the Makefile: torch first, the rest under constraints, then Horovod and classeg.
    order = [log.index("-r " + str(built["dir"] / "requirements-torch.txt")),
             log.index("-c " + str(built["dir"] / "constraints.txt")),
             log.index("horovod-0.28.1-py3-none-any.whl"),
             log.index(f"classeg-{__version__}-py3-none-any.whl")]
    assert order == sorted(order)
    assert f"classeg {__version__} installed" in first.stdout and "done: marker" in first.stdout

    marker_before = marker.read_text()
    second = bootstrap(tmp_path, uri)
    assert second.returncode == 0, second.stderr
    assert "nothing to do" in second.stdout
    assert "pip install" not in second.stdout
    assert marker.read_text() == marker_before


def test_bootstrap_without_wheelhouse_fails_clearly(tmp_path):
    missing = tmp_path / "no-such-wheelhouse"
    result = bootstrap(tmp_path, f"file://{missing}")
    assert result.returncode == 1
    assert f"wheelhouse file://{missing} not found: {missing} is not a directory" in result.stderr
    assert not (tmp_path / "opt" / "venv").exists()
    assert "ERROR" in (tmp_path / "bootstrap.log").read_text()

    unset = subprocess.run(["bash", str(BOOTSTRAP), "--log", str(tmp_path / "b.log")], capture_output=True,
                           text=True, check=False, env={k: v for k, v in os.environ.items()
                                                        if k != "CLASSEG_WHEELHOUSE"})
    assert unset.returncode == 1 and "no wheelhouse given" in unset.stderr

    empty = tmp_path / "empty"
    empty.mkdir()
    result = bootstrap(tmp_path, str(empty))
    assert result.returncode == 1 and "has no classeg-*.whl" in result.stderr


def test_bootstrap_builds_horovod_when_the_wheelhouse_lacks_it(tmp_path, built, tiny_index):
    """Without a prebuilt wheel the node runs the wheelhouse's build_horovod.sh VENV CACHE (here a stand-in
    that writes a tiny wheel instead of compiling for 15 minutes) after installing the build tools."""
    folder = tmp_path / "wheelhouse"
    shutil.copytree(built["dir"], folder)
    (folder / "horovod-0.28.1-py3-none-any.whl").unlink()
    shutil.copy(tiny_index / "tinybuildtool-1.0-py3-none-any.whl", folder)
    (folder / "requirements-build.txt").write_text("tinybuildtool\n")
    make_wheel(tmp_path / "built-by-script", "horovod", "0.28.1", source="__version__ = 'built on the node'\n")
    (folder / "build_horovod.sh").write_text(
        "#!/usr/bin/env bash\nset -euo pipefail\n"
        '"$1/bin/python" -c "import tinybuildtool"  # the build tools are installed first\n'
        f'mkdir -p "$2" && cp {tmp_path / "built-by-script"}/horovod-0.28.1-*.whl "$2"/\n')
    result = bootstrap(tmp_path, str(folder))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "building it on this node" in result.stdout
    assert venv_python(tmp_path, "import horovod; print(horovod.__version__)") == "built on the node"
    assert (tmp_path / "opt" / "wheels" / "horovod-0.28.1-py3-none-any.whl").is_file()


@pytest.mark.skipif(shutil.which("aws") is None, reason="the aws CLI is not installed on this machine")
def test_bootstrap_syncs_an_s3_wheelhouse(tmp_path, built, emr_moto):
    """The s3:// branch with the real aws CLI against moto (AWS_ENDPOINT_URL points every AWS client at it)."""
    uri = f"s3://{BUCKET}/classeg/wheelhouse"
    result = bootstrap(tmp_path, uri, env={"AWS_ENDPOINT_URL": emr_moto})
    assert result.returncode == 0, result.stdout + result.stderr
    copy = tmp_path / "opt" / "wheelhouse"
    wheels = len(list(built["dir"].glob("*.whl")))
    assert f"wheelhouse {uri} -> {copy}: {wheels} wheels" in result.stdout
    assert not copy.exists()  # removed once installed: the root volume is for the venv
    assert venv_python(tmp_path, "import classeg, tinysdist; print(classeg.__version__, tinysdist.__version__)") \
        == f"{__version__} 1.0"
