"""Embeds a FASTA file with esm.cpp (PyPI `esm-cpp`, CPU), mean over residues of the last
hidden state, for `esmfuzz check`. esm.cpp loads an HF safetensors file of an
EsmForMaskedLM (it needs the lm_head tensors; zeros do, the hidden states do not use them):

    python3 scripts/esmcpp_embed.py MODEL.safetensors cases.fasta out.npy
"""
import sys, time, numpy as np, esm_cpp
model = esm_cpp.Model.load(sys.argv[1])
tok = esm_cpp.Tokenizer()
records, name, seq = [], None, []
for line in open(sys.argv[2]):
    line = line.strip()
    if line.startswith(">"):
        if name: records.append((name, "".join(seq)))
        name, seq = line[1:].split()[0], []
    elif line: seq.append(line)
if name: records.append((name, "".join(seq)))
out = np.zeros((len(records), 320), dtype=np.float32)
tokens = 0
start = time.perf_counter()
for i, (n, s) in enumerate(records):
    ids = np.array(tok.encode(s), dtype=np.int32)
    tokens += len(ids)
    _, hs = model.forward_with_hidden_states(ids)
    h = np.asarray(hs[-1]).reshape(len(ids), -1)
    out[i] = h[1:-1].mean(0)
np.save(sys.argv[3], out)
elapsed = time.perf_counter() - start
print(f"esm.cpp {esm_cpp.__version__}: {len(records)} records, {tokens} tokens in {elapsed:.2f} s "
      f"({tokens / elapsed:.0f} tokens/s), {int(np.isnan(out).any(axis=1).sum())} rows with NaN")
