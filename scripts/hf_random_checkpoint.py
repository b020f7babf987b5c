"""Writes a random-weight ESM-2 checkpoint of a published size with HF transformers, as a user's
`save_pretrained` would (safetensors, HF key names), for esmfuzz to load. Run on the GPU
machine (it has torch and transformers):

    python3 scripts/hf_random_checkpoint.py esm2_t33_650M_UR50D /tmp/650m [--seed 0]
"""
import argparse
import time

import torch
import transformers

# Published ESM-2 sizes: (layers, hidden, heads).
PRESETS = {
    "esm2_t6_8M_UR50D": (6, 320, 20),
    "esm2_t12_35M_UR50D": (12, 480, 20),
    "esm2_t30_150M_UR50D": (30, 640, 20),
    "esm2_t33_650M_UR50D": (33, 1280, 20),
    "esm2_t36_3B_UR50D": (36, 2560, 40),
    "esm2_t48_15B_UR50D": (48, 5120, 40),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("preset", choices=sorted(PRESETS))
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    layers, hidden, heads = PRESETS[args.preset]
    config = transformers.EsmConfig(
        vocab_size=33,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=1026,
        position_embedding_type="rotary",
        token_dropout=True,
        mask_token_id=32,
        pad_token_id=1,
        emb_layer_norm_before=False,
        layer_norm_eps=1e-5,
    )
    torch.manual_seed(args.seed)
    start = time.time()
    model = transformers.EsmModel(config, add_pooling_layer=False)
    model.save_pretrained(args.out, safe_serialization=True)
    print(f"transformers {transformers.__version__}: wrote {args.preset} to {args.out} "
          f"in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
