#!/usr/bin/env python3
"""Builds the tiny-ESM-2 loader fixtures in tests/fixtures/tiny/ with HF transformers.

Run where torch and transformers are installed (the GPU machine has both):
    python3 scripts/make_tiny_fixtures.py OUT_DIR

Writes a randomly initialised 2-layer ESM-2 (hidden 32, 4 heads) in every format the loader
reads, plus HF's own float64 hidden states for a padded batch that contains a <mask> token,
so the Rust tests check the loaders, token dropout, padding and repr_layers indexing against
the reference implementation rather than against themselves.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import EsmConfig, EsmModel

ALPHABET = ["<cls>", "<pad>", "<eos>", "<unk>"] + list("LAGVSERTIDPKQNFYMHWCXBUZO.-") + ["<null_1>", "<mask>"]


def tokens(seq):
    ids = [0]
    i = 0
    while i < len(seq):
        if seq.startswith("<mask>", i):
            ids.append(32)
            i += 6
        else:
            ids.append(ALPHABET.index(seq[i]))
            i += 1
    return ids + [2]


def hf_to_fair(key):
    k = key
    if k.startswith("contact_head."):
        return "encoder." + k
    if k == "embeddings.word_embeddings.weight":
        return "encoder.sentence_encoder.embed_tokens.weight"
    if k.startswith("encoder.emb_layer_norm_after."):
        return "encoder.sentence_encoder." + k[len("encoder."):]
    if k.startswith("encoder.layer."):
        rest = k[len("encoder.layer."):]
        idx, tail = rest.split(".", 1)
        for hf, fair in [
            ("attention.self.query.", "self_attn.q_proj."),
            ("attention.self.key.", "self_attn.k_proj."),
            ("attention.self.value.", "self_attn.v_proj."),
            ("attention.self.rotary_embeddings.", "self_attn.rot_emb."),
            ("attention.output.dense.", "self_attn.out_proj."),
            ("attention.LayerNorm.", "self_attn_layer_norm."),
            ("intermediate.dense.", "fc1."),
            ("output.dense.", "fc2."),
            ("LayerNorm.", "final_layer_norm."),
        ]:
            if tail.startswith(hf):
                return f"encoder.sentence_encoder.layers.{idx}.{fair}{tail[len(hf):]}"
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    out = ap.parse_args().out
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    config = EsmConfig(
        vocab_size=33, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, position_embedding_type="rotary", token_dropout=True,
        mask_token_id=32, pad_token_id=1, emb_layer_norm_before=False, layer_norm_eps=1e-5,
        max_position_embeddings=1026, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    model = EsmModel(config, add_pooling_layer=False).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
        # Real ESM-2 checkpoints store inv_freq rounded through fp16; do the same to every
        # inv_freq buffer the model uses (its module path differs across transformers versions).
        inv_freq = None
        for name, buf in model.named_buffers():
            if name.endswith("inv_freq"):
                buf.copy_(buf.half().float())
                inv_freq = buf.detach().clone()
                print("rounded", name, file=sys.stderr)
    if inv_freq is None:
        d = config.hidden_size // config.num_attention_heads
        inv_freq = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
        print("no inv_freq buffer; writing the exact values", file=sys.stderr)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    state = {k: v for k, v in state.items() if "position_ids" not in k and "inv_freq" not in k}
    for i in range(config.num_hidden_layers):
        state[f"encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq"] = inv_freq.clone()
    print("state keys:", sorted(state)[:6], "...", file=sys.stderr)
    print("keys:", len(state), file=sys.stderr)

    config.to_json_file(os.path.join(out, "config.json"))
    save_file(state, os.path.join(out, "model.safetensors"))
    save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()},
              os.path.join(out, "model_bf16.safetensors"))
    # A fine-tuned HF checkpoint: esm. prefix, a classification head, stored in f16.
    ft = {"esm." + k: v.half() for k, v in state.items()}
    ft["classifier.dense.weight"] = torch.zeros(32, 32).half()
    ft["classifier.out_proj.weight"] = torch.zeros(2, 32).half()
    torch.save(ft, os.path.join(out, "pytorch_model_f16.bin"))
    # fair-esm .pt: {"model": {...}, "args": Namespace}, with an LM head to ignore.
    fair = {}
    for k, v in state.items():
        fk = hf_to_fair(k)
        if fk is None:
            raise SystemExit(f"no fair-esm name for {k}")
        fair[fk] = v
    fair["encoder.lm_head.weight"] = torch.zeros(33, 32)
    fair["encoder.lm_head.bias"] = torch.zeros(33)
    torch.save({"model": fair, "args": argparse.Namespace(layers=2, embed_dim=32, attention_heads=4)},
               os.path.join(out, "tiny_fair_esm.pt"))

    seqs = ["MKTAYIAKQRQISFVKSHFSRQ", "LAGV<mask>SE", "MW"]
    ids = [tokens(s) for s in seqs]
    width = max(len(t) for t in ids)
    input_ids = torch.tensor([t + [1] * (width - len(t)) for t in ids])
    mask = (input_ids != 1).long()
    model64 = model.double()
    with torch.no_grad():
        hs = model64(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states
    stacked = torch.stack(hs).numpy().astype(np.float32)  # [L + 1, batch, width, hidden]
    np.save(os.path.join(out, "hf_f64_hidden_states.npy"), stacked)
    with open(os.path.join(out, "batch.json"), "w") as f:
        json.dump({"sequences": seqs, "input_ids": input_ids.tolist()}, f, indent=1)
    print("hidden states", stacked.shape, file=sys.stderr)


if __name__ == "__main__":
    main()
