#!/usr/bin/env bash
# fuzz --deployment on the GPU machine (issue 26): a random-weight ESM-2 of a published size
# written by HF transformers, served by the HF adapter (SDPA, padded, FP16) and by the packed
# varlen adapter, each fuzzed by esmfuzz against its FP32 oracle (on this machine's CPU: the
# binary is the CPU build), and one deliberately wrong adapter option (rotary angles in FP16)
# that the identity probe does not stop. Reports land flat in OUT (the device tool brings back
# 8 files at most).
#   bash scripts/gpu_deployment.sh OUT [PRESET] [MAX_STRATUM] [CASES]
# Needs gpu/esmfuzz-cpu.xz (staged by hand: xz -c target/debug/esmfuzz > gpu/esmfuzz-cpu.xz).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?OUT}
preset=${2:-esm2_t33_650M_UR50D}
max=${3:-medium}
cases=${4:-4}
mkdir -p "$out" /tmp/esmfuzz-bin
xz -d -c gpu/esmfuzz-cpu.xz > /tmp/esmfuzz-bin/esmfuzz && chmod +x /tmp/esmfuzz-bin/esmfuzz
bin=/tmp/esmfuzz-bin/esmfuzz
log="$out/deployment-gpu.log"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
  nproc
} >>"$log" 2>&1
model=/tmp/model-$preset
[ -d "$model" ] || python3 scripts/hf_random_checkpoint.py "$preset" "$model" >>"$log" 2>&1
campaign() {  # NAME SECONDS DEPLOYMENT [extra fuzz flags]: SIGINT after SECONDS (incomplete report)
  local name=$1 limit=$2 deployment=$3; shift 3
  mkdir -p "/tmp/reg-$name" && rm -rf "/tmp/fuzz-$name"
  local started=$SECONDS
  timeout -s INT "$limit" "$bin" fuzz --weights "$model" --deployment "$deployment" --max-stratum "$max" --cases "$cases" \
    --seed 1 --regressions "/tmp/reg-$name" --out "/tmp/fuzz-$name" --first-call-timeout 600 "$@" \
    >"/tmp/fuzz-$name.stderr" 2>&1
  local rc=$?
  echo "== $name: exit $rc in $((SECONDS - started)) s" >>"$log"
  grep -v " run [0-9]* at " "/tmp/fuzz-$name.stderr" | tail -40 >>"$log"
  cp "/tmp/fuzz-$name/report.md" "$out/$name.report.md" 2>/dev/null
  cp "/tmp/fuzz-$name/report.json" "$out/$name.report.json" 2>/dev/null
}
[ -n "${ONLY_NOMASK:-}" ] || campaign hf-f16 170 "python3 scripts/deployment_hf.py --model $model --dtype float16 --device cuda"
[ -n "${ONLY_NOMASK:-}" ] || campaign varlen-f16 170 "python3 scripts/deployment_varlen.py --model $model --dtype float16 --device cuda"
# Rotary angles in FP16 pass f16's fixed bounds (measured at 8M on the CPU, results/deployment-cpu):
# the twin judge on very long proteins is what sees it.
# Forgetting attention_mask: one protein alone (the identity probe) is right, batch-mates
# attend to each other's padding.
campaign hf-nomask-f16 200 "python3 scripts/deployment_hf.py --model $model --dtype float16 --device cuda --no-attention-mask" \
  --families stratum-short,mixed-up-to-short,isolation-up-to-short --shrink-seconds 60
[ -n "${NO_ROTARY:-}" ] && exit 0
max=very-long cases=2
campaign hf-rotary-f16 200 "python3 scripts/deployment_hf.py --model $model --dtype float16 --device cuda --rotary-fp16" \
  --families stratum-very-long --twin-judge --shrink-seconds 90
