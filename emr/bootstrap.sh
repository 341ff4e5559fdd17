#!/usr/bin/env bash
# classeg EMR bootstrap action: install the project's Python environment on this node from a wheelhouse.
#
# EMR runs it on every node before applications start (see emr/templates/cluster.yaml). The wheelhouse,
# built by `classeg emr wheelhouse`, holds every wheel, so nodes install with `pip --no-index`: the set of
# packages is exactly the one that was verified, and a PyPI outage cannot break a cluster start.
#
# Usage:
#   bootstrap.sh --wheelhouse URI [--venv DIR] [--python BIN] [--log FILE] [--gpu-cgroup] [--force]
#     --wheelhouse URI  s3://bucket/prefix (copied with `aws s3 sync`), file:///dir or /dir  [$CLASSEG_WHEELHOUSE]
#     --venv DIR        virtualenv to create                         [$CLASSEG_VENV, /opt/classeg/venv]
#     --python BIN      Python 3.11 interpreter; on EMR 7.x (Amazon Linux 2023) installed with dnf if missing
#                                                                    [$CLASSEG_PYTHON, python3.11]
#     --log FILE        also append everything to FILE     [$CLASSEG_BOOTSTRAP_LOG, /var/log/classeg-bootstrap.log]
#     --gpu-cgroup      mount the cgroup v1 devices hierarchy YARN GPU isolation needs on EMR 7.x
#     --force           reinstall even if the marker file says this wheelhouse is installed
#
# Install order (same as the Makefile): torch and torchvision first (requirements-torch.txt; they declare
# setuptools>=77), then the rest under constraints.txt (petastorm pins setuptools<70) in a second pip call,
# then the prebuilt Horovod wheel and the classeg wheel without dependencies. One resolver pass over both sets
# is impossible; two passes end with a resolver warning and everything imports and runs.
#
# If the wheelhouse has no Horovod wheel, Horovod is built on the node with the wheelhouse's copy of
# tools/build_horovod.sh (needs internet access to PyPI, a C++ compiler and the CUDA toolkit; about 15 minutes
# per node), which is why `classeg emr wheelhouse` ships the prebuilt wheel whenever one is cached.
#
# A marker file in the venv records the installed wheelhouse; a rerun with the same wheelhouse does nothing.
set -euo pipefail

readonly PYTHON_MINOR=3.11
readonly HOROVOD_VERSION=0.28.1
readonly MARKER_NAME=.classeg-bootstrap
readonly GPU_CGROUP=/spark-rapids-cgroup

wheelhouse=${CLASSEG_WHEELHOUSE:-}
venv=${CLASSEG_VENV:-/opt/classeg/venv}
python=${CLASSEG_PYTHON:-python${PYTHON_MINOR}}
log_file=${CLASSEG_BOOTSTRAP_LOG:-/var/log/classeg-bootstrap.log}
gpu_cgroup=0
force=0

usage() {
  sed -n '/^# Usage:/,/^#     --force/p' "$0" | sed 's/^# \{0,1\}//'
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --wheelhouse) wheelhouse=${2:?--wheelhouse needs a URI}; shift 2 ;;
    --venv) venv=${2:?--venv needs a directory}; shift 2 ;;
    --python) python=${2:?--python needs an interpreter}; shift 2 ;;
    --log) log_file=${2:?--log needs a file}; shift 2 ;;
    --gpu-cgroup) gpu_cgroup=1; shift ;;
    --force) force=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "classeg-bootstrap: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done

# Files must be readable by the YARN container user, which is not the user running bootstrap actions.
umask 022

as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  else
    sudo "$@"
  fi
}

# The log file may need root to create (/var/log); the rest of the script runs as the invoking user.
if ! { mkdir -p "$(dirname "$log_file")" && touch "$log_file"; } 2>/dev/null; then
  as_root mkdir -p "$(dirname "$log_file")"
  as_root touch "$log_file"
  as_root chown "$(id -u):$(id -g)" "$log_file"
fi

log() {
  printf '%s classeg-bootstrap: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" | tee -a "$log_file"
}

die() {
  printf '%s classeg-bootstrap: ERROR: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" | tee -a "$log_file" >&2
  exit 1
}

# Run a command, logging it and its output (pipefail keeps the command's exit status).
run() {
  log "+ $*"
  "$@" 2>&1 | tee -a "$log_file"
}

log "start: wheelhouse=${wheelhouse:-<unset>} venv=$venv python=$python gpu_cgroup=$gpu_cgroup"
[[ -n $wheelhouse ]] || die "no wheelhouse given: pass --wheelhouse s3://bucket/prefix (or set CLASSEG_WHEELHOUSE)"

# --- GPU cgroup (outside the marker check: a mount does not survive a reboot, the venv does) -----------------
if [[ $gpu_cgroup -eq 1 ]]; then
  if mountpoint -q "$GPU_CGROUP/devices" 2>/dev/null; then
    log "cgroup v1 devices hierarchy already mounted at $GPU_CGROUP/devices"
  else
    run as_root mkdir -p "$GPU_CGROUP/devices"
    run as_root mount -t cgroup -o devices cgroupv1-devices "$GPU_CGROUP/devices"
    run as_root chmod a+rwx -R "$GPU_CGROUP"
  fi
fi

marker="$venv/$MARKER_NAME"
if [[ $force -eq 0 && -f $marker ]] && grep -qxF "wheelhouse=$wheelhouse" "$marker"; then
  log "already installed from $wheelhouse (marker $marker): nothing to do"
  exit 0
fi

# --- Fetch the wheelhouse -----------------------------------------------------------------------------------
case "$wheelhouse" in
  s3://*)
    local_wheelhouse="$(dirname "$venv")/wheelhouse"
    mkdir -p "$local_wheelhouse" 2>/dev/null || { as_root mkdir -p "$local_wheelhouse" && as_root chown "$(id -u):$(id -g)" "$local_wheelhouse"; }
    command -v aws >/dev/null 2>&1 || die "the aws CLI is needed to copy $wheelhouse (it is on every EMR node)"
    run aws s3 sync --only-show-errors "${wheelhouse%/}/" "$local_wheelhouse/" \
      || die "could not copy wheelhouse $wheelhouse to $local_wheelhouse"
    ;;
  file://*) local_wheelhouse=${wheelhouse#file://} ;;
  *) local_wheelhouse=$wheelhouse ;;
esac
[[ -d $local_wheelhouse ]] || die "wheelhouse $wheelhouse not found: $local_wheelhouse is not a directory"

shopt -s nullglob
classeg_wheels=("$local_wheelhouse"/classeg-*.whl)
horovod_wheels=("$local_wheelhouse"/horovod-"$HOROVOD_VERSION"-*.whl)
shopt -u nullglob
[[ ${#classeg_wheels[@]} -ge 1 ]] \
  || die "wheelhouse $wheelhouse has no classeg-*.whl: build it with 'classeg emr wheelhouse --output $wheelhouse'"
[[ -f $local_wheelhouse/requirements.txt ]] || die "wheelhouse $wheelhouse has no requirements.txt"
[[ -f $local_wheelhouse/constraints.txt ]] || die "wheelhouse $wheelhouse has no constraints.txt"
log "wheelhouse $wheelhouse -> $local_wheelhouse: $(find "$local_wheelhouse" -maxdepth 1 -name '*.whl' | wc -l) wheels"

# --- Python 3.11 --------------------------------------------------------------------------------------------
if ! command -v "$python" >/dev/null 2>&1; then
  command -v dnf >/dev/null 2>&1 || die "$python not found and no dnf to install it with"
  # EMR 7.x runs Amazon Linux 2023, whose system Python is 3.9; its repositories carry 3.11.
  run as_root dnf install -y -q "python${PYTHON_MINOR}" "python${PYTHON_MINOR}-devel" \
    || die "could not install python${PYTHON_MINOR} with dnf"
fi
"$python" -c "import sys; sys.exit(0 if sys.version_info[:2] == (${PYTHON_MINOR/./, }) else 1)" \
  || die "$python is Python $("$python" -c 'import platform; print(platform.python_version())'), the wheelhouse needs $PYTHON_MINOR"

# --- Virtualenv and packages --------------------------------------------------------------------------------
venv_parent=$(dirname "$venv")
if ! mkdir -p "$venv_parent" 2>/dev/null || [[ ! -w $venv_parent ]]; then
  run as_root mkdir -p "$venv_parent"
  run as_root chown "$(id -u):$(id -g)" "$venv_parent"
fi
if [[ -x $venv/bin/python ]]; then
  log "reusing virtualenv $venv"
else
  run "$python" -m venv "$venv" || die "could not create the virtualenv $venv with $python"
fi

# Only the wheelhouse counts: ignore any pip configuration or index settings of the node.
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
unset PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_NO_INDEX

pip_install() {
  run "$venv/bin/python" -m pip install --no-index --no-cache-dir --find-links "$local_wheelhouse" "$@"
}

if [[ -s $local_wheelhouse/requirements-torch.txt ]]; then
  pip_install -r "$local_wheelhouse/requirements-torch.txt" || die "installing torch/torchvision failed"
else
  log "no requirements-torch.txt in the wheelhouse: skipping the torch step"
fi
pip_install -c "$local_wheelhouse/constraints.txt" -r "$local_wheelhouse/requirements.txt" \
  || die "installing the pinned dependencies failed"

if [[ ${#horovod_wheels[@]} -ge 1 ]]; then
  pip_install --no-deps "${horovod_wheels[-1]}" || die "installing ${horovod_wheels[-1]} failed"
elif [[ -f $local_wheelhouse/build_horovod.sh ]]; then
  log "no horovod-$HOROVOD_VERSION wheel in the wheelhouse: building it on this node (slow, needs PyPI access)"
  if [[ -s $local_wheelhouse/requirements-build.txt ]]; then
    pip_install -r "$local_wheelhouse/requirements-build.txt" || die "installing Horovod build tools failed"
  fi
  if ! command -v g++ >/dev/null 2>&1 && command -v dnf >/dev/null 2>&1; then
    run as_root dnf install -y -q gcc-c++ make || die "could not install a C++ compiler with dnf"
  fi
  wheel_cache="$venv_parent/wheels"
  run bash "$local_wheelhouse/build_horovod.sh" "$venv" "$wheel_cache" || die "building Horovod failed"
  shopt -s nullglob
  built=("$wheel_cache"/horovod-"$HOROVOD_VERSION"-*.whl)
  shopt -u nullglob
  [[ ${#built[@]} -ge 1 ]] || die "build_horovod.sh left no horovod-$HOROVOD_VERSION wheel in $wheel_cache"
  pip_install --no-deps "${built[-1]}" || die "installing ${built[-1]} failed"
else
  die "wheelhouse $wheelhouse has neither a horovod-$HOROVOD_VERSION wheel nor build_horovod.sh"
fi

pip_install --no-deps --force-reinstall "${classeg_wheels[-1]}" || die "installing ${classeg_wheels[-1]} failed"

run "$venv/bin/python" -m pip list --format=freeze
version=$("$venv/bin/python" -c "import classeg; print(classeg.__version__)") \
  || die "the new environment cannot import classeg"
log "classeg $version installed in $venv"

if [[ $wheelhouse == s3://* ]]; then
  # The copy is only needed while installing; the root volume is better left to the venv and logs.
  run rm -rf "$local_wheelhouse"
fi

{
  echo "wheelhouse=$wheelhouse"
  echo "classeg=$version"
  echo "installed=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"$marker"
log "done: marker $marker written"
