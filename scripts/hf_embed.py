"""Embeds a FASTA file with HF transformers, as a user's pipeline would, for `esmfuzz check`:
mean over residues (BOS, EOS and padding excluded) of the last hidden state, one float32 row
per record, in file order. Run on the GPU machine:

    python3 scripts/hf_embed.py WEIGHTS_DIR cases.fasta out.npy [--dtype fp16|bf16|fp32]
        [--truncate N] [--pool residues|all-tokens]

--truncate and --pool all-tokens reproduce two common pipeline faults (a length cap below
1022 residues; BOS and EOS averaged in) for the negative examples.
"""
import argparse
import time

import numpy as np
import torch
import transformers

# The ESM-2 vocabulary in id order (fair-esm's Alphabet for ESM-1b style models).
TOKENS = ["<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I",
          "D", "P", "K", "Q", "N", "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".",
          "-", "<null_1>", "<mask>"]
IDS = {t: i for i, t in enumerate(TOKENS) if len(t) == 1}


def read_fasta(path):
    records, name, seq = [], None, []
    for line in open(path):
        line = line.strip()
        if line.startswith(">"):
            if name is not None:
                records.append((name, "".join(seq)))
            name, seq = line[1:].split()[0], []
        elif line:
            seq.append(line)
    if name is not None:
        records.append((name, "".join(seq)))
    return records


def main():
    p = argparse.ArgumentParser()
    p.add_argument("weights")
    p.add_argument("fasta")
    p.add_argument("out")
    p.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    p.add_argument("--truncate", type=int, default=1022)
    p.add_argument("--pool", default="residues", choices=["residues", "all-tokens"])
    p.add_argument("--batch-tokens", type=int, default=16384)
    a = p.parse_args()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[a.dtype]
    torch.backends.cuda.matmul.allow_tf32 = False
    model = transformers.EsmModel.from_pretrained(a.weights, add_pooling_layer=False)
    model = model.to("cuda", dtype=dtype).eval()
    records = read_fasta(a.fasta)
    seqs = [[0] + [IDS[c] for c in s[: a.truncate]] + [2] for _, s in records]
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    out = np.zeros((len(seqs), model.config.hidden_size), dtype=np.float32)
    start, i = time.time(), 0
    with torch.no_grad():
        while i < len(order):
            longest = len(seqs[order[i]])
            batch = order[i : i + max(1, a.batch_tokens // longest)]
            i += len(batch)
            ids = torch.full((len(batch), longest), 1, dtype=torch.long)
            mask = torch.zeros((len(batch), longest), dtype=torch.long)
            for row, k in enumerate(batch):
                ids[row, : len(seqs[k])] = torch.tensor(seqs[k])
                mask[row, : len(seqs[k])] = 1
            h = model(input_ids=ids.cuda(), attention_mask=mask.cuda()).last_hidden_state.float()
            for row, k in enumerate(batch):
                n = len(seqs[k])
                states = h[row, :n] if a.pool == "all-tokens" else h[row, 1 : n - 1]
                out[k] = states.mean(0).cpu().numpy()
    np.save(a.out, out)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, {a.dtype}, "
          f"{torch.cuda.get_device_name()}: {len(seqs)} records in {time.time() - start:.1f} s "
          f"(truncate {a.truncate}, pool {a.pool}) -> {a.out}")


if __name__ == "__main__":
    main()
