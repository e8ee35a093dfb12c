#!/usr/bin/env bash
# Puts NVRTC, CUDA 13's run-time compiler (libnvrtc.so.13), under
# target/nvrtc/lib and prints that folder, for LD_LIBRARY_PATH. It is
# NVIDIA's redistributable wheel from PyPI (nvidia-cuda-nvrtc 13.0.88),
# pinned by its sha256. NVRTC needs no GPU and no driver, so with it the
# kernel compile tests in tests/gpu.rs run on any machine; .ci/run installs
# it so that CI compiles every bundled kernel.
#
#   export LD_LIBRARY_PATH="$(scripts/install-nvrtc.sh)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
set -euo pipefail
cd "$(dirname "$0")/.."
url=https://files.pythonhosted.org/packages/c3/68/483a78f5e8f31b08fb1bb671559968c0ca3a065ac7acabfc7cee55214fd6/nvidia_cuda_nvrtc-13.0.88-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.whl
sha256=ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575
dir=$PWD/target/nvrtc
if [ ! -e "$dir/lib/libnvrtc.so.13" ] || [ ! -e "$dir/lib/libnvrtc-builtins.so.13.0" ]; then
  need=()
  command -v curl >/dev/null 2>&1 || need+=(curl ca-certificates)
  command -v unzip >/dev/null 2>&1 || need+=(unzip)
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
  fi
  rm -rf "$dir" && mkdir -p "$dir/lib"
  curl -fsSL --retry 3 -o "$dir/nvrtc.whl" "$url"
  echo "$sha256  $dir/nvrtc.whl" | sha256sum -c --quiet - >&2
  unzip -q -j -o "$dir/nvrtc.whl" nvidia/cu13/lib/libnvrtc.so.13 nvidia/cu13/lib/libnvrtc-builtins.so.13.0 -d "$dir/lib"
  rm "$dir/nvrtc.whl"
fi
echo "$dir/lib"
