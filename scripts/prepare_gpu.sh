#!/usr/bin/env bash
# Builds the CUDA binary here and stages what the GPU machine needs in gpu/ (ignored by .gitignore,
# carried to the GPU machine by the device tool: name `gpu` in `carry`).
#   bash scripts/prepare_gpu.sh            # the binary
#   WITH_SUITE=1 bash scripts/prepare_gpu.sh   # and the integration suite built for CUDA
#                                               # (gpu/suite.xz, run by `gpu_run.sh OUT suite`)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --features cuda --target-dir target/cuda
mkdir -p gpu/shared
# xz, not gzip: both binaries and ../shared must fit the device tool's 64 MiB with the
# checkout (gzip: 16.1 + 13.6 MB; xz: 10.7 + 8.7 MB).
rm -f gpu/esmfuzz.gz gpu/suite.gz
xz -T0 -6 -c target/cuda/release/esmfuzz > gpu/esmfuzz.xz
if [ -n "${WITH_SUITE:-}" ]; then
  suite=$(cargo test --release --features cuda --target-dir target/cuda --test suite --no-run \
    --message-format=json | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "suite" and m.get("executable"):
        print(m["executable"])')
  xz -T0 -6 -c "$suite" > gpu/suite.xz
fi
for d in models corpus reference; do
  rm -rf "gpu/shared/$d" && cp -r "../shared/$d" "gpu/shared/$d" && chmod -R u+w "gpu/shared/$d"
done
# Seed the GPU machine's autotune cache with the H100 results saved by earlier runs (a fresh
# machine then compiles only the winning kernels: first FP32 corpus pass 34 s instead of 237 s).
[ -f gpu/cubecl-autotune.tar.gz ] || cp results/h100/cubecl-autotune.tar.gz gpu/
du -sh gpu
