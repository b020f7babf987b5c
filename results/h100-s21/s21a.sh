# Session 21, call A. Steps in priority order; a step is skipped (and says so) when too little
# of the 600 s call is left for it.
# 1. Bits: the flash kernel with 32 query rows a warp (ESMFUZZ_FLASH_WARP_ROWS=32) against
#    f4265f2 and this build's default at 650M shapes (head dim 64), and against the default at
#    8M (head dim 16).
# 2. Speed: that switch and the pipelined read at 650M FP16.
# 3. Where the time goes: esmfuzz's 650M FP16 packed pass, then packed torch.compile's, both
#    under ncu with real clocks on the same batches.
# 4. 8M at 16,384-token batches, this build against f4265f2 in alternating rounds.
export CACHE_CARRY_MB=0
g=scripts/gpu_run.sh
left() { [ $((SECONDS + $1)) -le ${CEIL:-585} ] || { echo "SKIPPED at $SECONDS s: $2"; return 1; }; }
BASE_SYNTH=esm2_t33_650M_UR50D BASE_ENV=ESMFUZZ_FLASH_WARP_ROWS=32 BASE_EXPECT_IDENTICAL=2 \
  BASE_PRECISIONS="f16 bf16" BASE_ATTENTION=fused SAME_ENVS=ESMFUZZ_FLASH_WARP_ROWS=32 \
  SAME_PRECISIONS="f16 bf16" bash $g $OUT/1-bits base same
echo "bits done at $SECONDS s"
left 100 speed && BENCH_MODELS=esm2_t33_650M_UR50D \
  SAME_ENVS="ESMFUZZ_FLASH_WARP_ROWS=32 ESMFUZZ_PIPELINED_READ=1" BENCH_REPEAT=5 STEP_SECONDS_BENCH=60 \
  bash $g $OUT/2-switches switches
echo "speed done at $SECONDS s"
left 200 profiles && PROFILE_NCU_ARGS="--clock-control none --target-processes application-only" PROFILE_ATTENTION=fused PROFILE_LAYOUTS=packed \
  STEP_SECONDS_PROFILE=90 STEP_SECONDS_BENCH=40 STEP_SECONDS_TORCH=$((${CEIL:-585} - SECONDS - 110)) \
  TORCH_MODE_SECONDS=$((${CEIL:-585} - SECONDS - 160)) bash $g $OUT/3-profile profile torchprofile
left 60 basebench && BENCH_MODELS="8M@16384" STEP_SECONDS_BENCH=40 bash $g $OUT/4-basebench basebench
echo "s21a.sh done at $SECONDS s"
