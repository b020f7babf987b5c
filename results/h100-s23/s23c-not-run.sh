# Session 23, call C, NOT RUN (no device time left): the flash kernel rotating q itself
# (esm_flash_rq + esm_rope_kv_v8, the pre-pass a third lighter), behind
# ESMFUZZ_FLASH_ROTATES_Q=1. Base build: 130b655 (put its build in gpu/esmfuzz-base.xz).
# Priority order; a step is skipped (and says so) when too little of the call is left for it.
# Run as: CEIL=<seconds> bash gpu/calls/s23c.sh (copy it there).
# 1. Bits: base = this build under ESMFUZZ_FLASH_ROTATES_Q=1 = this build, 650M random
#    weights f16 and bf16 (head dim 64); 8M (head dim 16) f16 and bf16, padded and packed,
#    default = ESMFUZZ_FLASH_ROTATES_Q=1 = ESMFUZZ_SCALAR_PREPASS=1.
# 2. 650M FP16 against packed torch.compile, same batches (add ESMFUZZ_FLASH_ROTATES_Q=1 to
#    the bench once step 3 shows it faster; as written it times the default).
# 3. Speed of the switch alone: default and ESMFUZZ_FLASH_ROTATES_Q=1.
# 4. Bits at head dim 32 (150M random weights, f16), never run before.
export CACHE_CARRY_MB=0
g=scripts/gpu_run.sh
left() { [ $((SECONDS + $1)) -le ${CEIL:-400} ] || { echo "SKIPPED at $SECONDS s: $2"; return 1; }; }
BASE_SYNTH=esm2_t33_650M_UR50D BASE_ENV=ESMFUZZ_FLASH_ROTATES_Q=1 BASE_EXPECT_IDENTICAL=2 \
  BASE_PRECISIONS="f16 bf16" BASE_ATTENTION=fused \
  SAME_ENVS="ESMFUZZ_FLASH_ROTATES_Q=1 ESMFUZZ_SCALAR_PREPASS=1" SAME_PRECISIONS="f16 bf16" \
  bash $g $OUT/1-bits base same
echo "bits done at $SECONDS s"
left 145 torch && BENCH_MODELS=esm2_t33_650M_UR50D TORCH_MODES=packed-compiled TORCH_PRECISIONS=f16 \
  BENCH_PRECISIONS=f16 BENCH_ATTENTION=fused BENCH_REPEAT=5 STEP_SECONDS_TORCH=135 \
  TORCH_MODE_SECONDS=125 STEP_SECONDS_BENCH=35 bash $g $OUT/2-torch torchbench
echo "torch done at $SECONDS s"
left 30 switches && BENCH_MODELS=esm2_t33_650M_UR50D BENCH_REPEAT=5 STEP_SECONDS_BENCH=30 \
  SAME_ENVS="ESMFUZZ_FLASH_ROTATES_Q=1" bash $g $OUT/3-switches switches
echo "switches done at $SECONDS s"
left 25 bits150 && BASE_SYNTH=esm2_t30_150M_UR50D BASE_ENV=ESMFUZZ_FLASH_ROTATES_Q=1 \
  BASE_EXPECT_IDENTICAL=2 BASE_PRECISIONS="f16" BASE_ATTENTION=fused bash $g $OUT/4-bits150 base
echo "s23c.sh done at $SECONDS s"
