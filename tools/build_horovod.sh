#!/usr/bin/env bash
# Build Horovod 0.28.1 from its sdist against the venv's torch, once, and cache the wheel.
# Horovod's sdist hard-codes C++14; torch 2.14 headers need C++20, so the standard is raised in both
# CMakeLists.txt files. A CUDA build of torch makes Horovod's build require the CUDA toolkit.
set -euo pipefail
venv=${1:?usage: build_horovod.sh VENV CACHE_DIR}
cache=${2:?usage: build_horovod.sh VENV CACHE_DIR}
version=0.28.1
home_cache=${XDG_CACHE_HOME:-$HOME/.cache}/classeg/wheels
mkdir -p "$cache"
if ls "$cache"/horovod-"$version"-*.whl >/dev/null 2>&1; then
  echo "horovod: using cached wheel $(ls "$cache"/horovod-"$version"-*.whl)"
  exit 0
fi
# A second cache outside the clone, so a fresh clone on the same machine (CI) skips the 15-minute build.
if ls "$home_cache"/horovod-"$version"-*.whl >/dev/null 2>&1; then
  cp "$home_cache"/horovod-"$version"-*.whl "$cache"/
  echo "horovod: using wheel cached in $home_cache"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "horovod: fetching sdist $version"
"$venv/bin/pip" download --no-deps --no-binary :all: --no-build-isolation -d "$work" "horovod==$version"
tar -xzf "$work"/horovod-"$version".tar.gz -C "$work"
src="$work/horovod-$version"
sed -i -E 's/(CMAKE_CXX_STANDARD[ ]+)1[147]/\120/' "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
grep -n "CMAKE_CXX_STANDARD" "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
# CUDA_HOME too: torch's cpp_extension otherwise derives it from `which nvcc` (/usr/local here) and Horovod's
# FindPytorch then cannot find libcudart.
cuda_home=${HOROVOD_CUDA_HOME:-/usr/local/cuda}
echo "horovod: building wheel (10-15 minutes on 2 cores), CUDA at $cuda_home"
env CUDA_HOME="$cuda_home" HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 \
  HOROVOD_WITHOUT_MXNET=1 HOROVOD_BUILD_CUDA_CC_LIST=80,90 HOROVOD_CUDA_HOME="$cuda_home" \
  MAKEFLAGS="-j$(nproc)" \
  "$venv/bin/pip" wheel --no-deps --no-build-isolation -w "$work/dist" "$src"
cp "$work"/dist/horovod-*.whl "$cache"/
mkdir -p "$home_cache" && cp "$work"/dist/horovod-*.whl "$home_cache"/
echo "horovod: cached $(ls "$cache"/horovod-*.whl)"
