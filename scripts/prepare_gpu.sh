#!/usr/bin/env bash
# Builds the CUDA binary here and stages what the GPU machine needs in gpu/ (ignored by git,
# carried to the GPU machine by the device tool: name `gpu` in `carry`).
#   bash scripts/prepare_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/gpu/' .git/info/exclude 2>/dev/null || echo '/gpu/' >> .git/info/exclude
cargo build --release --features cuda --target-dir target/cuda
mkdir -p gpu/shared
gzip -c target/cuda/release/esmfuzz > gpu/esmfuzz.gz
for d in models corpus reference; do
  rm -rf "gpu/shared/$d" && cp -r "../shared/$d" "gpu/shared/$d" && chmod -R u+w "gpu/shared/$d"
done
du -sh gpu
