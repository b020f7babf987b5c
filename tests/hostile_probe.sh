#!/usr/bin/env bash
# Hostile-input probe (issue 28): runs the built esmfuzz on hostile and mistaken inputs, each
# in a fresh temporary folder, and prints a Markdown table: the input, the subcommand, the exit
# code, files destroyed that the run did not create (inputs, the user's files, symlink targets,
# device nodes: byte- and type-compared before and after), exit 0 on incomplete or unjudged
# work, panics, and unbounded reads (killed by the address-space limit or the time limit).
# Builds nothing. Exit 0 when every column is 0.
#
#   cargo build && tests/hostile_probe.sh target/debug/esmfuzz
#
# Needs: bash, coreutils (timeout, sha256sum, mknod as root), python3 (JSON edits), and the
# tiny fixture model in tests/fixtures/tiny; `../shared` only for the rows check judges.
set -u
BIN=$(realpath "${1:?usage: hostile_probe.sh ESMFUZZ_BINARY}")
REPO=$(cd "$(dirname "$0")/.." && pwd)
TINY=$REPO/tests/fixtures/tiny
LIMIT_KB=${PROBE_LIMIT_KB:-3000000}   # 3 GB of address space per run
TIMEOUT=${PROBE_TIMEOUT:-120}         # seconds per run
ROOT=$(mktemp -d)
cleanup() { rm -rf "$ROOT"; }
trap cleanup EXIT

N=0; DESTROYED=0; EXIT0=0; PANICS=0; UNBOUNDED=0
ROWS=""

# Runs the binary in $T with ARGS, bounded; stdin is $PIPE_TEXT through a pipe when set, else
# /dev/null; sets RC.
run_bin() {
  if [ -n "${PIPE_TEXT:-}" ]; then
    printf "$PIPE_TEXT" | ( cd "$T" && ulimit -v "$LIMIT_KB" && exec timeout -s KILL "$TIMEOUT" "$BIN" "$@" ) \
      > "$T/.probe-out" 2> "$T/.probe-err"
    RC=${PIPESTATUS[1]}
  else
    ( cd "$T" && ulimit -v "$LIMIT_KB" && exec timeout -s KILL "$TIMEOUT" "$BIN" "$@" ) \
      < /dev/null > "$T/.probe-out" 2> "$T/.probe-err"
    RC=$?
  fi
}

# The fingerprint of a path: its type, and its bytes' sha256 when a regular file (a symlink
# as the link and its target's fingerprint).
fingerprint() {
  local p=$1
  if [ -L "$p" ]; then
    printf 'link:%s:' "$(readlink "$p")"; fingerprint_target "$p"
  elif [ -e "$p" ]; then
    fingerprint_target "$p"
  else
    echo missing
  fi
}
fingerprint_target() {
  local p=$1
  if [ -f "$p" ]; then echo "file:$(sha256sum < "$p" | cut -c1-16)"
  elif [ -d "$p" ]; then echo "dir:$(ls -A "$p" | sort | sha256sum | cut -c1-16)"
  elif [ -c "$p" ]; then echo "chardev:$(stat -L -c %t:%T "$p")"
  elif [ -p "$p" ]; then echo fifo
  else echo missing; fi
}

# probe NAME SUBCOMMAND MUST_FAIL: runs case function $CASE (which sets up $T, fills
# PRECIOUS and ARGS, and may set CUSTOM to a function that runs it), then records a row.
probe() {
  local name=$1 sub=$2 must_fail=$3
  N=$((N + 1))
  T=$ROOT/case$N; mkdir -p "$T"
  PRECIOUS=(); ARGS=(); CUSTOM=""; PIPE_TEXT=""; EXTRA_BAD=0
  "$CASE"
  local before=() p
  for p in "${PRECIOUS[@]}"; do before+=("$(fingerprint "$p")"); done
  if [ -n "$CUSTOM" ]; then "$CUSTOM"; else run_bin "${ARGS[@]}"; fi
  local destroyed=0 i=0
  for p in "${PRECIOUS[@]}"; do
    if [ "$(fingerprint "$p")" != "${before[$i]}" ]; then
      destroyed=$((destroyed + 1))
      echo "case $N ($name): $p changed: ${before[$i]} -> $(fingerprint "$p")" >&2
    fi
    i=$((i + 1))
  done
  local exit0=0 panic=0 unbounded=0
  if [ "$must_fail" = 1 ] && [ "$RC" = 0 ]; then exit0=1; fi
  exit0=$((exit0 + EXTRA_BAD))
  if grep -q "panicked at" "$T/.probe-err" || [ "$RC" = 101 ] || [ "$RC" = 134 ] \
     || [ "$RC" = 139 ]; then panic=1; fi
  if [ "$RC" = 137 ] || grep -q "memory allocation of" "$T/.probe-err"; then unbounded=1; fi
  DESTROYED=$((DESTROYED + destroyed)); EXIT0=$((EXIT0 + exit0))
  PANICS=$((PANICS + panic)); UNBOUNDED=$((UNBOUNDED + unbounded))
  local said
  said=$(grep -v '^\s*$' "$T/.probe-err" | grep -iv '^loaded\|^policy:\|^seed:\|^reference:\|^under test\|^warning' \
         | tail -1 | tr -d '\000' | cut -c1-90 | sed 's/|/\\|/g')
  ROWS="$ROWS| $N | $name | $sub | $RC | $destroyed | $exit0 | $panic | $unbounded | ${said:-} |"$'\n'
}

fasta2() { printf '>a\nMKTAYIAKQR\n>b\nGSHMLE\n' > "$1"; }
mknode() { mknod "$1" c 1 3; }

# A finished campaign of the tiny model (four families, one case each), copied per case.
BASE=$ROOT/base-campaign; mkdir -p "$ROOT/reg"
"$BIN" fuzz --weights "$TINY" --max-stratum tiny --cases 1 --seed 5 \
  --regressions "$ROOT/reg" --out "$BASE" > /dev/null 2>&1
campaign() { cp -a "$BASE" "$1"; }
FUZZ=(fuzz --weights "$TINY" --max-stratum tiny --seed 5 --regressions "$ROOT/reg")
edit_json() { python3 - "$@" <<'PY'
import json, sys
path, code = sys.argv[1], sys.argv[2]
r = json.load(open(path)); exec(code); json.dump(r, open(path, "w"))
PY
}

# ---------------------------------------------------------------- embed
c1() { fasta2 "$T/x.npy.partial"; PRECIOUS=("$T/x.npy.partial")
  ARGS=(embed --weights "$TINY" --fasta x.npy.partial --out x.npy); }
CASE=c1 probe "OUT.partial is the --fasta" embed 1
c2() { cp "$TINY/config.json" "$T/x.npy.partial"; fasta2 "$T/in.fasta"; PRECIOUS=("$T/x.npy.partial")
  ARGS=(embed --weights "$TINY/model.safetensors" --config x.npy.partial --fasta in.fasta --out x.npy); }
CASE=c2 probe "OUT.partial is the --config" embed 1
c3() { mkdir "$T/w"; cp "$TINY/config.json" "$T/w/"; cp "$TINY/model.safetensors" "$T/w/model.safetensors"
  cp "$TINY/model.safetensors" "$T/x.npy.partial"; fasta2 "$T/in.fasta"; PRECIOUS=("$T/x.npy.partial")
  ARGS=(embed --weights x.npy.partial --config w/config.json --fasta in.fasta --out x.npy); }
CASE=c3 probe "OUT.partial is the --weights" embed 1
c4() { echo notes > "$T/x.npy.partial"; fasta2 "$T/in.fasta"; PRECIOUS=("$T/x.npy.partial")
  ARGS=(embed --weights "$TINY" --fasta in.fasta --out x.npy); }
CASE=c4 probe "OUT.partial is a file of the user's" embed 1
c5() { echo keep > "$T/precious"; ln -s precious "$T/x.npy.partial"; fasta2 "$T/in.fasta"
  PRECIOUS=("$T/precious" "$T/x.npy.partial"); ARGS=(embed --weights "$TINY" --fasta in.fasta --out x.npy); }
CASE=c5 probe "OUT.partial is a symlink" embed 1
c6() { echo old > "$T/real.npy"; ln -s real.npy "$T/link.npy"; fasta2 "$T/in.fasta"
  PRECIOUS=("$T/in.fasta"); ARGS=(embed --weights "$TINY" --fasta in.fasta --out link.npy)
  CUSTOM=c6run; }
c6run() { run_bin "${ARGS[@]}"; [ -L "$T/link.npy" ] || EXTRA_BAD=1; }
CASE=c6 probe "--out is a symlink (kept, target written)" embed 0
c7() { mknode "$T/out.npy"; fasta2 "$T/in.fasta"; PRECIOUS=("$T/out.npy")
  ARGS=(embed --weights "$TINY" --fasta in.fasta --out out.npy); }
CASE=c7 probe "--out is a device node" embed 1
c8() { fasta2 "$T/in.fasta"; PRECIOUS=("$T/in.fasta"); ARGS=(embed --weights "$TINY" --fasta in.fasta --out in.fasta); }
CASE=c8 probe "--out is the --fasta" embed 1
c9() { ARGS=(embed --weights "$TINY" --fasta /dev/zero --out x.npy); }
CASE=c9 probe "--fasta /dev/zero (no newline)" embed 1
c10() { PIPE_TEXT='>a\nMKTAYIAKQR\n'; ARGS=(embed --weights "$TINY" --fasta /dev/stdin --out x.npy); }
CASE=c10 probe "--fasta from a pipe" embed 0
c11() { printf 'MKTAYIAKQR\n>a\nMK\n' > "$T/in.fasta"; ARGS=(embed --weights "$TINY" --fasta in.fasta --out x.npy); }
CASE=c11 probe "FASTA with text before the first header" embed 1
c12() { printf '>a\0b\nMK\0V\n' > "$T/in.fasta"; ARGS=(embed --weights "$TINY" --fasta in.fasta --out x.npy)
  CUSTOM=c12run; }
c12run() { run_bin "${ARGS[@]}"; if grep -qP '\x00' "$T/.probe-err"; then EXTRA_BAD=1; fi; }
CASE=c12 probe "FASTA with NUL bytes (message escaped)" embed 1
c13() { { echo '>big'; head -c 200000 /dev/zero | tr '\0' 'A'; echo; } > "$T/in.fasta"
  ARGS=(embed --weights "$TINY" --fasta in.fasta --out x.npy); }
CASE=c13 probe "a record of 200,000 residues" embed 1
c14() { { printf '>'; head -c 100000 /dev/zero | tr '\0' 'h'; printf '\nMK\n'; } > "$T/in.fasta"
  ARGS=(embed --weights "$TINY" --fasta in.fasta --out x.npy); }
CASE=c14 probe "a header of 100 KB" embed 1
c15() { fasta2 "$T/a.fasta"; gzip -c "$T/a.fasta" > "$T/in.fasta"; ARGS=(embed --weights "$TINY" --fasta in.fasta --out x.npy); }
CASE=c15 probe "a gzip FASTA" embed 1
c16() { : > "$T/in.fasta"; ARGS=(embed --weights "$TINY" --fasta in.fasta --out x.npy); }
CASE=c16 probe "an empty FASTA" embed 1
c17() { fasta2 "$T/in.fasta"; ARGS=(embed --weights "$TINY" --fasta in.fasta --out no/such/x.npy); }
CASE=c17 probe "--out in a folder that does not exist" embed 1
c18() { mkdir "$T/w"; cp "$TINY/config.json" "$T/w/"
  python3 - "$T/w/model.safetensors" <<'PY'
import json, struct, sys
h = json.dumps({"embeddings.word_embeddings.weight": {"dtype": "F32", "shape": [33, 32], "data_offsets": [0, 64]}}).encode()
open(sys.argv[1], "wb").write(struct.pack("<Q", len(h)) + h + bytes(64))
PY
  fasta2 "$T/in.fasta"; ARGS=(embed --weights w --fasta in.fasta --out x.npy); }
CASE=c18 probe "safetensors header lying about a shape" embed 1
c19() { fasta2 "$T/in.fasta"; ARGS=(embed --weights /dev/zero --preset esm2_t6_8M_UR50D --fasta in.fasta --out x.npy); }
CASE=c19 probe "--weights /dev/zero" embed 1
c20() { for i in $(seq 400); do printf '>r%d\nMKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQ\n' "$i"; done > "$T/big.fasta"
  fasta2 "$T/small.fasta"; ARGS=(embed --weights "$TINY" --fasta small.fasta --out x.npy); CUSTOM=c20run; }
c20run() {
  ( cd "$T" && exec "$BIN" embed --weights "$TINY" --fasta big.fasta --out x.npy ) > /dev/null 2>&1 &
  local first=$! k=0
  while [ ! -e "$T/x.npy.partial" ] && [ $k -lt 500 ]; do sleep 0.01; k=$((k + 1)); done
  run_bin "${ARGS[@]}"
  wait "$first"; local first_rc=$?
  # The second run must fail; the first must hold its own 400 rows.
  if [ "$RC" = 0 ] || [ "$first_rc" != 0 ] || ! head -c 128 "$T/x.npy" | grep -q "(400, 32)"; then
    EXTRA_BAD=1; fi
}
CASE=c20 probe "two embed runs on one --out" embed 1

# ---------------------------------------------------------------- cases
c21() { campaign "$T/camp"; PRECIOUS=("$T/camp/report.json"); ARGS=(cases --cases 1 --out camp/report.fasta); }
CASE=c21 probe "--out into a campaign (writes report.json)" cases 1
c22() { mknode "$T/c.fasta"; mknode "$T/c.json"; PRECIOUS=("$T/c.fasta" "$T/c.json")
  ARGS=(cases --strata tiny --cases 2 --out c.fasta); }
CASE=c22 probe "--out is a device node (written in place)" cases 0
c23() { echo old > "$T/real.fasta"; ln -s real.fasta "$T/c.fasta"; ARGS=(cases --strata tiny --cases 2 --out c.fasta)
  CUSTOM=c23run; }
c23run() { run_bin "${ARGS[@]}"; [ -L "$T/c.fasta" ] || EXTRA_BAD=1; }
CASE=c23 probe "--out is a symlink (kept)" cases 0
c24() { ARGS=(cases --cases 1 --out c.json); }
CASE=c24 probe "--out whose listing is itself (.json)" cases 1
c25() { ARGS=(cases --cases 0 --out c.fasta); }
CASE=c25 probe "--cases 0" cases 1
c26() { ARGS=(cases --strata tiny,tiny --cases 1 --out c.fasta); }
CASE=c26 probe "a stratum named twice" cases 1

# ---------------------------------------------------------------- check
c27() { campaign "$T/camp"; fasta2 "$T/in.fasta"; echo x > "$T/e.npy"; PRECIOUS=("$T/camp/report.json")
  ARGS=(check --weights "$TINY" --fasta in.fasta --embeddings e.npy --report camp/report.json); }
CASE=c27 probe "--report into a campaign" check 1
c28() { fasta2 "$T/in.fasta"; ARGS=(check --weights "$TINY" --fasta in.fasta --embeddings /dev/zero); }
CASE=c28 probe "--embeddings /dev/zero" check 1
c29() { fasta2 "$T/in.fasta"; "$BIN" embed --weights "$TINY" --fasta "$T/in.fasta" --out "$T/e.npy" 2>/dev/null
  printf '>only\nMK\n' > "$T/one.fasta"; ARGS=(check --weights "$TINY" --fasta one.fasta --embeddings e.npy); }
CASE=c29 probe "embeddings of another shape" check 1
c30() { fasta2 "$T/in.fasta"; "$BIN" embed --weights "$TINY" --fasta "$T/in.fasta" --out "$T/e.npy" 2>/dev/null
  PRECIOUS=("$T/in.fasta"); ARGS=(check --weights "$TINY" --fasta in.fasta --embeddings e.npy --report in.fasta); }
CASE=c30 probe "--report is the --fasta" check 1
c31() { fasta2 "$T/in.fasta"
  python3 - "$T/z.npy" <<'PY'
import struct, sys
d = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 32), }"
d += " " * ((64 - (10 + len(d) + 1) % 64) % 64) + "\n"
open(sys.argv[1], "wb").write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(d)) + d.encode() + bytes(256))
PY
  ARGS=(check --weights "$TINY" --fasta in.fasta --embeddings z.npy); }
CASE=c31 probe "all-zero rows" check 1
c32() { echo x > "$T/e.npy"; ARGS=(check --weights "$TINY" --fasta /dev/zero --embeddings e.npy); }
CASE=c32 probe "--fasta /dev/zero" check 1

# ---------------------------------------------------------------- fuzz
c33() { mkdir "$T/mine"; echo notes > "$T/mine/report.md"; echo '<svg/>' > "$T/mine/fig.svg"
  PRECIOUS=("$T/mine"); ARGS=("${FUZZ[@]}" --cases 1 --out mine); }
CASE=c33 probe "--out a folder of the user's files" fuzz 1
c34() { mkdir "$T/mine"; echo notes > "$T/mine/report.md"; PRECIOUS=("$T/mine")
  ARGS=("${FUZZ[@]}" --cases 1 --overwrite --out mine); }
CASE=c34 probe "--overwrite a folder of the user's files" fuzz 1
c35() { mkdir "$T/out"; echo keep > "$T/precious"; ln -s ../precious "$T/out/.esmfuzz.lock"
  PRECIOUS=("$T/precious"); ARGS=("${FUZZ[@]}" --cases 1 --out out); }
CASE=c35 probe "a symlinked .esmfuzz.lock" fuzz 1
c36() { campaign "$T/camp"; rm "$T/camp/.esmfuzz-manifest"; PRECIOUS=("$T/camp")
  ARGS=("${FUZZ[@]}" --cases 1 --overwrite --out camp); }
CASE=c36 probe "--overwrite a campaign without a manifest" fuzz 1
c37() { campaign "$T/camp"; printf '>mine\nMKTAYIAKQR\n' > "$T/camp/stratum-mine.fasta"
  PRECIOUS=("$T/camp/stratum-mine.fasta"); ARGS=("${FUZZ[@]}" --cases 1 --overwrite --fasta camp/stratum-mine.fasta --out camp); }
CASE=c37 probe "--overwrite with a --fasta kept in the folder" fuzz 0
c38() { campaign "$T/camp"; mkdir "$T/d"; printf '>a\nMKTAYIAKQR\n' > "$T/d/x.fasta"
  "$BIN" "${FUZZ[@]}" --cases 1 --fasta "$T/d/x.fasta" --overwrite --out "$T/camp" > /dev/null 2>&1
  edit_json "$T/camp/report.json" 'r["families"] = [f for f in r["families"] if f["family"] != "stratum-tiny"]; r["complete"] = False'
  printf '>b\nWWWWCCCC\n>c\nGG\n' > "$T/d/x.fasta"; ARGS=("${FUZZ[@]}" --fasta d/x.fasta --resume camp); }
CASE=c38 probe "--resume with another file of the same name" fuzz 1
c39() { campaign "$T/camp"
  edit_json "$T/camp/report.json" 'r["families"] = r["families"][:-1]; r["complete"] = False'
  : > "$T/camp/cases.jsonl"; ARGS=("${FUZZ[@]}" --resume camp); }
CASE=c39 probe "--resume with cases.jsonl emptied" fuzz 1
c40() { ARGS=("${FUZZ[@]}" --cases 0 --out o); }
CASE=c40 probe "--cases 0" fuzz 1
c41() { echo keep > "$T/o"; PRECIOUS=("$T/o"); ARGS=("${FUZZ[@]}" --cases 1 --out o); }
CASE=c41 probe "--out is a file" fuzz 1
c42() { ARGS=("${FUZZ[@]}" --cases 1 --fasta /dev/zero --out o); }
CASE=c42 probe "--fasta /dev/zero" fuzz 1
c43() { PIPE_TEXT='>a\nMK\n'; ARGS=("${FUZZ[@]}" --cases 1 --fasta /dev/stdin --out o); }
CASE=c43 probe "--fasta from a pipe (hashed: refused)" fuzz 1
c44() { ARGS=("${FUZZ[@]}" --cases 100000 --out o); CUSTOM=c44run; }
c44run() {
  ( cd "$T" && exec "$BIN" "${ARGS[@]}" ) > "$T/.probe-out" 2> "$T/.probe-err" &
  local pid=$! k=0
  while [ ! -s "$T/o/cases.jsonl" ] && [ $k -lt 3000 ]; do sleep 0.01; k=$((k + 1)); done
  kill -STOP "$pid"; kill -INT "$pid"; kill -TERM "$pid"; kill -CONT "$pid"
  wait "$pid"; RC=$?
  grep -q "second signal" "$T/.probe-err" || EXTRA_BAD=1
}
CASE=c44 probe "two signals (SIGINT, SIGTERM) mid-campaign" fuzz 1
c45() { mkdir "$T/empty"; ARGS=("${FUZZ[@]}" --resume empty); }
CASE=c45 probe "--resume a folder with no campaign" fuzz 1
c46() { ARGS=("${FUZZ[@]}" --cases 1 --devices 0,1 --out o); }
CASE=c46 probe "--devices on the CPU" fuzz 1
c47() { ARGS=("${FUZZ[@]}" --cases 1 --shard 50/99 --out o); }
CASE=c47 probe "a shard that owns no family" fuzz 1
c48() { campaign "$T/camp"; PRECIOUS=("$T/camp/report.json" "$T/camp/cases.jsonl")
  ARGS=("${FUZZ[@]}" --cases 1 --out camp); }
CASE=c48 probe "--out a campaign (no --resume/--overwrite)" fuzz 1

# ---------------------------------------------------------------- merge
c49() { campaign "$T/s0"; mkdir "$T/m"; echo notes > "$T/m/report.md"; PRECIOUS=("$T/m/report.md")
  ARGS=(merge s0 --out m); }
CASE=c49 probe "--out a folder holding the user's report.md" merge 1
c50() { campaign "$T/s0"; PRECIOUS=("$T/s0/report.json"); ARGS=(merge s0 --out s0); }
CASE=c50 probe "--out is a shard" merge 1
c51() { for i in 0 1; do "$BIN" "${FUZZ[@]}" --cases 1 --shard $i/2 --out "$T/s$i" > /dev/null 2>&1; done
  edit_json "$T/s1/report.json" 'r["families"] = r["families"][:-1]; r["complete"] = False'
  ARGS=(merge s0 s1 --out m); }
CASE=c51 probe "a shard that did not finish" merge 1
c52() { ARGS=(merge nothing-here --out m); }
CASE=c52 probe "a shard folder that does not exist" merge 1

# ---------------------------------------------------------------- power
POWER=(power --weights "$TINY" --precision f32 --families stratum-tiny)
c53() { ARGS=("${POWER[@]}" --layer 99 --out p); CUSTOM=c53run; }
c53run() { run_bin "${ARGS[@]}"; [ -e "$T/p" ] && EXTRA_BAD=1; return 0; }
CASE=c53 probe "--layer 99 (out must not be created)" power 1
c54() { echo keep > "$T/p"; PRECIOUS=("$T/p"); ARGS=("${POWER[@]}" --out p); }
CASE=c54 probe "--out is a file" power 1
c55() { ARGS=("${POWER[@]}" --sizes 1e-4,1e-3,1e-2,3e-2,1e-1,3e-1,1,3 --trials 40 --counts 100 --out p); CUSTOM=c55run; }
c55run() {
  ( cd "$T" && exec "$BIN" "${ARGS[@]}" ) > "$T/.probe-out" 2> "$T/.probe-err" &
  local pid=$! k=0
  while ! grep -q '"cells_done": [1-9]' "$T/p/power.json" 2>/dev/null && [ $k -lt 6000 ]; do sleep 0.02; k=$((k + 1)); done
  kill -INT "$pid"; wait "$pid"; RC=$?
  grep -q '"complete": false' "$T/p/power.json" || EXTRA_BAD=1
}
CASE=c55 probe "SIGINT mid-run (partial report kept)" power 1
c56() { ARGS=("${POWER[@]}" --trials 0 --out p); }
CASE=c56 probe "--trials 0" power 1
c57() { mkdir -p "$T/p/detection.svg"; ARGS=("${POWER[@]}" --out p); }
CASE=c57 probe "an output that cannot be written" power 1

# ---------------------------------------------------------------- synth
c58() { ARGS=(synth --preset esm2_t33_650M_UR50D --out s); CUSTOM=c58run; }
c58run() {
  ( cd "$T" && exec "$BIN" "${ARGS[@]}" ) > "$T/.probe-out" 2> "$T/.probe-err" &
  local pid=$! k=0
  while [ "$(stat -c %s "$T/s/model.safetensors.partial" 2>/dev/null || echo 0)" -lt 1048576 ] && [ $k -lt 3000 ]; do
    sleep 0.01; k=$((k + 1)); done
  kill -TERM "$pid"; wait "$pid"; RC=$?
  [ -e "$T/s/model.safetensors" ] && EXTRA_BAD=1; return 0
}
CASE=c58 probe "interrupted (no checkpoint under its final name)" synth 1
c59() { mkdir "$T/s"; echo keep > "$T/precious"; ln -s ../precious "$T/s/model.safetensors.partial"
  PRECIOUS=("$T/precious"); ARGS=(synth --preset esm2_t6_8M_UR50D --out s); }
CASE=c59 probe "a symlinked .partial" synth 1
c60() { ARGS=(synth --preset esm2_nonsense --out s); }
CASE=c60 probe "an unknown preset" synth 1

# ---------------------------------------------------------------- explain, bisect, bench, parity
c61() { fasta2 "$T/in.fasta"; ARGS=(explain --weights "$TINY" --fasta in.fasta --record nosuch); }
CASE=c61 probe "--record not in the file" explain 1
c62() { ARGS=(explain --weights "$TINY" --fasta /dev/zero --record a); }
CASE=c62 probe "--fasta /dev/zero" explain 1
c63() { campaign "$T/camp"; fasta2 "$T/in.fasta"; PRECIOUS=("$T/camp/report.json")
  ARGS=(explain --weights "$TINY" --fasta in.fasta --record a --report camp/report.json); }
CASE=c63 probe "--report into a campaign" explain 1
# A FASTA FIFO named as --fasta, fed by a writer in the background: streamed, not sought.
c71() { mkfifo "$T/in.fasta"; ( printf '>a\nMKTAYIAKQR\n' > "$T/in.fasta" & )
  ARGS=(embed --weights "$TINY" --fasta in.fasta --out x.npy); }
CASE=c71 probe "--fasta is a FIFO" embed 0
c64() { ARGS=(bisect-precision --weights "$TINY" --cases 0); }
CASE=c64 probe "nothing to bisect (--cases 0, no --fasta)" bisect-precision 1
c65() { ARGS=(bisect-precision --weights "$TINY" --max-used NaN); }
CASE=c65 probe "--max-used NaN" bisect-precision 1
c66() { ARGS=(bench --weights "$TINY" --fasta /dev/zero); }
CASE=c66 probe "--fasta /dev/zero" bench 1
c67() { campaign "$T/camp"; fasta2 "$T/in.fasta"; PRECIOUS=("$T/camp/report.json")
  ARGS=(bench --weights "$TINY" --fasta in.fasta --report camp/report.json); }
CASE=c67 probe "--report into a campaign" bench 1
c68() { campaign "$T/camp"; PRECIOUS=("$T/camp/report.json"); ARGS=(parity --weights "$TINY" --report camp/report.json); }
CASE=c68 probe "--report into a campaign" parity 1
c69() { ARGS=(parity --weights "$TINY" --fasta /dev/zero); }
CASE=c69 probe "--fasta /dev/zero" parity 1
c70() { ARGS=(matmul-check --size 0); }
CASE=c70 probe "--size 0" matmul-check 1

echo "| # | input | subcommand | exit | files destroyed | exit 0 on incomplete or unjudged work | panics | unbounded reads | last line of stderr |"
echo "|---|---|---|---|---|---|---|---|---|"
printf '%s' "$ROWS"
echo "| | **total: $N inputs** | | | **$DESTROYED** | **$EXIT0** | **$PANICS** | **$UNBOUNDED** | |"
[ "$DESTROYED" = 0 ] && [ "$EXIT0" = 0 ] && [ "$PANICS" = 0 ] && [ "$UNBOUNDED" = 0 ]
