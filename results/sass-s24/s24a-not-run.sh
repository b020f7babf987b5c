# Session 24, call A, NOT RUN (no device machine was lent all session): the flash kernels' K/V
# prefetch without its integer work (e2baa25; default path) and the opt-in block bound
# (ESMFUZZ_FLASH_MIN_BLOCKS=4), and session 23's ESMFUZZ_FLASH_ROTATES_Q=1, never run on a GPU.
# Build: this session's head (bash scripts/prepare_gpu.sh); base build: f51e2aa in
# gpu/esmfuzz-base.xz (/tmp/esmfuzz-f51e2aa.xz may still exist).
# Carry: gpu/esmfuzz.xz gpu/esmfuzz-base.xz gpu/shared gpu/cubecl-autotune.tar.gz gpu/calls.
# Run as: CEIL=<seconds> bash gpu/calls/s24a.sh (copy it there). Priority order; a step is
# skipped (and says so) when too little of the call is left for it.
# 1. Bits, 650M random weights (head dim 64), f16 and bf16: base = this build under
#    ESMFUZZ_FLASH_ROTATES_Q=1 = this build, then base = this build under
#    ESMFUZZ_FLASH_MIN_BLOCKS=4 = this build; 8M (head dim 16) f16 and bf16, padded and
#    packed, default = ESMFUZZ_FLASH_ROTATES_Q=1 = ESMFUZZ_SCALAR_PREPASS=1.
# 2. Speed against the base: basebench 650M FP16, alternating (the prefetch change alone).
# 3. Speed of the switches alone on this build (the bound; q rotated in the flash kernel).
# 4. Bits at head dim 32 (150M random weights, f16), never run before.
# 5. 650M FP16 against packed torch.compile, same batches.
export CACHE_CARRY_MB=0
g=scripts/gpu_run.sh
left() { [ $((SECONDS + $1)) -le ${CEIL:-480} ] || { echo "SKIPPED at $SECONDS s: $2"; return 1; }; }
BASE_SYNTH=esm2_t33_650M_UR50D BASE_ENV=ESMFUZZ_FLASH_ROTATES_Q=1 BASE_EXPECT_IDENTICAL=2 \
  BASE_PRECISIONS="f16 bf16" BASE_ATTENTION=fused \
  SAME_ENVS="ESMFUZZ_FLASH_ROTATES_Q=1 ESMFUZZ_SCALAR_PREPASS=1" SAME_PRECISIONS="f16 bf16" \
  bash $g $OUT/1-bits base same
BASE_SYNTH=esm2_t33_650M_UR50D BASE_ENV=ESMFUZZ_FLASH_MIN_BLOCKS=4 BASE_EXPECT_IDENTICAL=2 \
  BASE_PRECISIONS="f16 bf16" BASE_ATTENTION=fused bash $g $OUT/1-bits-bound base
echo "bits done at $SECONDS s"
left 110 basebench && BENCH_MODELS=esm2_t33_650M_UR50D BASEBENCH_ROUNDS=2 BENCH_REPEAT=5 \
  STEP_SECONDS_BENCH=30 bash $g $OUT/2-basebench basebench
echo "basebench done at $SECONDS s"
left 90 switches && BENCH_MODELS=esm2_t33_650M_UR50D BENCH_REPEAT=5 STEP_SECONDS_BENCH=30 \
  SAME_ENVS="ESMFUZZ_FLASH_MIN_BLOCKS=4 ESMFUZZ_FLASH_ROTATES_Q=1" bash $g $OUT/3-switches switches
echo "switches done at $SECONDS s"
left 25 bits150 && BASE_SYNTH=esm2_t30_150M_UR50D BASE_ENV=ESMFUZZ_FLASH_ROTATES_Q=1 \
  BASE_EXPECT_IDENTICAL=2 BASE_PRECISIONS="f16" BASE_ATTENTION=fused bash $g $OUT/4-bits150 base
echo "bits150 done at $SECONDS s"
left 140 torch && BENCH_MODELS=esm2_t33_650M_UR50D TORCH_MODES=packed-compiled TORCH_PRECISIONS=f16 \
  BENCH_PRECISIONS=f16 BENCH_ATTENTION=fused BENCH_REPEAT=5 \
  STEP_SECONDS_TORCH=$((${CEIL:-480} - SECONDS - 35)) TORCH_MODE_SECONDS=125 STEP_SECONDS_BENCH=30 \
  bash $g $OUT/5-torch torchbench
echo "s24a.sh done at $SECONDS s"
