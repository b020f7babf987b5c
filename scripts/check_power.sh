#!/bin/sh
# Measured detection of `esmfuzz check` per --bound-of: the FP32 oracle's own rows (from
# `esmfuzz embed --precision f32`) of the first N corpus records, rescaled by (1 + e) or given a
# random error of relative size e per row (fixed seed), each checked under each bound; the
# fraction of records that fail. Builds nothing: pass the binary.
#   scripts/check_power.sh target/debug/esmfuzz [N=24] > results/check-power/table.md
set -eu
BIN=${1:?usage: check_power.sh ESMFUZZ_BINARY [RECORDS]}
N=${2:-24}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
awk -v n="$N" '/^>/{k++} k<=n' ../shared/corpus/uniprot_sprot196.fasta > "$WORK/in.fasta"
"$BIN" embed --precision f32 --fasta "$WORK/in.fasta" --out "$WORK/oracle.npy" 2>/dev/null
python3 - "$WORK" <<'PY'
import math, random, struct, sys
work = sys.argv[1]
raw = open(f"{work}/oracle.npy", "rb").read()
hlen = struct.unpack("<H", raw[8:10])[0]
header, body = raw[:10 + hlen], raw[10 + hlen:]
shape = eval(header[10:].decode().strip())["shape"]
rows, cols = shape
vals = struct.unpack(f"<{rows * cols}f", body)
oracle = [list(vals[i * cols:(i + 1) * cols]) for i in range(rows)]
rng = random.Random(7)
def write(name, data):
    flat = [v for r in data for v in r]
    open(f"{work}/{name}.npy", "wb").write(header + struct.pack(f"<{len(flat)}f", *flat))
for e in ["1e-4", "1e-3", "5e-3", "1e-2", "2e-2", "3e-2", "5e-2", "1e-1"]:
    x = float(e)
    write(f"scale_{e}", [[v * (1 + x) for v in r] for r in oracle])
    noisy = []
    for r in oracle:
        n = [rng.gauss(0, 1) for _ in r]
        k = x * math.sqrt(sum(v * v for v in r)) / math.sqrt(sum(v * v for v in n))
        noisy.append([v + k * d for v, d in zip(r, n)])
    write(f"noise_{e}", noisy)
PY
SIZES="1e-4 1e-3 5e-3 1e-2 2e-2 3e-2 5e-2 1e-1"
echo "| bound | perturbation | $(echo $SIZES | sed 's/ / | /g') |"
echo "|---|---|$(for s in $SIZES; do printf -- '---|'; done)"
for bound in f32 tf32 f16-mixed f16 bf16; do
  for kind in scale noise; do
    files=$(for s in $SIZES; do printf '%s,' "$WORK/${kind}_$s.npy"; done)
    "$BIN" check --fasta "$WORK/in.fasta" --embeddings "${files%,}" --bound-of "$bound" \
      > "$WORK/out.txt" 2>/dev/null || true
    cells=""
    for s in $SIZES; do
      line=$(grep -A1 "${kind}_$s.npy:" "$WORK/out.txt" | tail -1)
      failed=$(echo "$line" | sed -n 's/.*: \([0-9]*\) FAILED$/\1/p')
      cells="$cells | ${failed:-0}/$N"
    done
    label=$([ $kind = scale ] && echo "rows x (1 + e)" || echo "random error, relative L2 e")
    echo "| $bound | $label$cells |"
  done
done
