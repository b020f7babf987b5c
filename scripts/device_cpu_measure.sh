#!/usr/bin/env bash
# CPU measurements on the GPU machine's 16 cores (issue 28): the BF16 head bounds
# (task_heads::measure_the_head_bounds_across_strata, the CPU suite binary) and `power` for
# the mixed and packed families at f32 and f16 (as results/power-cpu/ measured the strata),
# all on the CPU backend, side by side, each stopped by one SIGINT at its time limit (power
# then writes its report marked incomplete). Files land flat in OUT.
#   bash scripts/device_cpu_measure.sh OUT [SECONDS]
# Needs gpu/esmfuzz-cpu.xz, gpu/suite-cpu.xz (xz of target/debug/deps/suite-*) and
# gpu/shared/{models,corpus,reference}.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?OUT}
limit=${2:-540}
mkdir -p "$out" /tmp/esmfuzz-bin
xz -d -c gpu/esmfuzz-cpu.xz > /tmp/esmfuzz-bin/esmfuzz && chmod +x /tmp/esmfuzz-bin/esmfuzz
xz -d -c gpu/suite-cpu.xz > /tmp/esmfuzz-bin/suite && chmod +x /tmp/esmfuzz-bin/suite
[ -e ../shared ] || ln -s "$PWD/gpu/shared" ../shared
bin=/tmp/esmfuzz-bin/esmfuzz
log="$out/device-cpu.log"
{ date -u; lscpu | grep -E "Model name|^CPU\(s\)"; } >>"$log" 2>&1
started=$SECONDS
ESMFUZZ_REPO=$PWD ESMFUZZ_BIN=$bin timeout --foreground -s INT "$limit" /tmp/esmfuzz-bin/suite \
  task_heads::measure_the_head_bounds_across_strata --exact --ignored --nocapture \
  >"$out/heads-bf16.log" 2>&1 &
power() {  # NAME [power flags]
  local name=$1; shift
  timeout --foreground -s INT "$limit" "$bin" power --families mixed-up-to-short,packed-up-to-short \
    --trials 10 --counts 8,32 --seed 1 --out "/tmp/power-$name" "$@" >"/tmp/power-$name.stderr" 2>&1
  echo "== power $name: exit $? at $((SECONDS - started)) s" >>"$log"
  tail -4 "/tmp/power-$name.stderr" >>"$log"
  cp "/tmp/power-$name/power.md" "$out/power-$name.md"
  cp "/tmp/power-$name/power.json" "$out/power-$name.json"
}
power f32 --precision f32 \
  --degradations scale-layer-output,perturb-weights,scale-attention-logits,round-to-f16 \
  --sizes 1e-5,3e-5,1e-4,1e-3 &
power f16 --precision f16 --degradations scale-layer-output,perturb-weights,scale-attention-logits \
  --sizes 1e-3,1e-2,1e-1,1 &
wait
echo "== all done at $((SECONDS - started)) s" >>"$log"
