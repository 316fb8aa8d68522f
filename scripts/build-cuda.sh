#!/usr/bin/env bash
# Builds charlab with the `cuda` feature on a machine without a GPU (or without a CUDA install):
# fetches CUDA 13.0 (nvcc, runtime, cuBLAS, cuRAND, NVRTC) from PyPI into .cuda/, makes it look
# like a normal CUDA root, adds a stub libcuda.so for linking (the real one comes with the GPU
# driver), and builds into target/cuda/release/charlab. Keep nvcc at 13.0: PTX from a newer nvcc
# does not load on a CUDA 13.0 driver. CUDA_COMPUTE_CAP defaults to 90 (H100/H200).
#   scripts/build-cuda.sh
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$PWD/.cuda
root=$dir/nvidia/cu13
if [ ! -x "$root/bin/nvcc" ]; then
  python3 -m pip install -q --disable-pip-version-check --no-deps --target "$dir" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
    nvidia-curand==10.4.0.35 nvidia-cublas==13.0.0.19
fi
# Unversioned names the linker looks for, and the lib64 some build scripts expect.
for lib in cudart cublas cublasLt curand nvrtc; do
  real=$(ls "$root"/lib/lib$lib.so.* 2>/dev/null | sort | head -n1 || true)
  [ -n "$real" ] && ln -sf "$(basename "$real")" "$root/lib/lib$lib.so"
done
[ -e "$root/lib64" ] || ln -s lib "$root/lib64"
# A stub driver library exporting every symbol cudarc's driver bindings name (link time only).
if [ ! -e "$root/lib/stubs/libcuda.so" ]; then
  cargo fetch --locked -q
  sys=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-*/src/driver/sys 2>/dev/null | sort | tail -n1)
  [ -n "$sys" ] || { echo "error: cudarc sources not found after cargo fetch" >&2; exit 1; }
  mkdir -p "$root/lib/stubs"
  grep -rhoE '\bcu[A-Z][A-Za-z0-9_]*\b' "$sys" | sort -u \
    | sed 's/.*/int &(void) { return 100; }/' > "$root/lib/stubs/cuda_stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$root/lib/stubs/libcuda.so" "$root/lib/stubs/cuda_stub.c"
  ln -sf libcuda.so "$root/lib/stubs/libcuda.so.1"
fi
export CUDA_ROOT=$root CUDA_PATH=$root PATH=$root/bin:$PATH
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export LIBRARY_PATH=$root/lib:$root/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}
cargo build --release --locked --features cuda --target-dir target/cuda
# The release profile keeps line tables for profiling; stripped, the binary (~57 MB) fits the 64 MiB a
# GPU machine accepts.
strip --strip-all target/cuda/release/charlab
ls -l target/cuda/release/charlab
