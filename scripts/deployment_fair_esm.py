#!/usr/bin/env python3
"""An ESM-2 deployment with Meta's fair-esm package (`pip install fair-esm`, 2.0.0), speaking
esmfuzz's protocol 1 (docs/PROTOCOL.md) on stdin/stdout or --listen. No network at run time:
the checkpoint is a local fair-esm .pt (e.g. esm2_t6_8M_UR50D.pt).

    esmfuzz fuzz --weights esm2_t6_8M_UR50D.pt --deployment \
        "python3 scripts/deployment_fair_esm.py --model-file esm2_t6_8M_UR50D.pt --dtype float16"

Each request is one padded batch from fair-esm's own alphabet and batch converter; the pooled
row is the mean over residues (BOS, EOS and padding excluded) of the last representation
(after emb_layer_norm_after), in float32. --dtype float16/bfloat16 is `model.half()` /
`model.to(torch.bfloat16)`, as fair-esm users do it. Note that fair-esm's RotaryEmbedding
then computes positions and angles in that dtype (its inv_freq buffer is cast too): in
bfloat16 the positions above 256 round (8 significant bits), and very long proteins come out
wrong (esmfuzz's very-long stratum fails, results/deployment-cpu/README.md).
--rotary-fp32 is the fix: inv_freq kept in float32, RoPE applied in float32, cast back.

The model is built from the state dict (layers and width from the tensors, heads from the
file's cfg/args, else --heads), so the file's name need not start with "esm2" and no
contact-regression file is needed. The file is unpickled (torch.load weights_only=False):
load only checkpoints you trust. Options otherwise as deployment_hf.py's.
"""
import argparse
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deployment_hf as hf  # noqa: E402


def log(*parts):
    print("deployment_fair_esm:", *parts, file=sys.stderr, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-file", required=True, help="a fair-esm ESM-2 .pt checkpoint")
    p.add_argument("--heads", type=int, help="attention heads, when the file does not say")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--pooling", default="residue-mean", choices=["residue-mean", "all-mean", "bos"])
    p.add_argument("--listen")
    p.add_argument("--max-residues", type=int, default=1022)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--tokens", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--rotary-fp32", action="store_true",
                   help="compute rotary angles in float32 (fixes fair-esm's bf16 positions)")
    return p.parse_args(argv)


def patch_rotary_fp32(model, torch):
    """fair-esm's rotary with float32 positions, angles and products (cast back to q's dtype)."""
    import esm.rotary_embedding as rotary

    def forward(self, q, k):
        cos, sin = self._update_cos_sin_tables(k, seq_dimension=-2)
        return (rotary.apply_rotary_pos_emb(q.float(), cos, sin).to(q.dtype),
                rotary.apply_rotary_pos_emb(k.float(), cos, sin).to(k.dtype))

    rotary.RotaryEmbedding.forward = forward
    for layer in model.layers:
        rot = layer.self_attn.rot_emb
        rot.inv_freq = rot.inv_freq.float()
        rot._seq_len_cached = None


def build(model_file, heads):
    import esm
    import torch
    from esm.model.esm2 import ESM2

    data = torch.load(model_file, map_location="cpu", weights_only=False)
    state = {}
    for k, v in data["model"].items():
        for prefix in ("encoder.sentence_encoder.", "encoder."):
            if k.startswith(prefix):
                k = k[len(prefix):]
                break
        if not k.startswith("lm_head."):  # lm_head.weight is tied to embed_tokens.weight:
            state[k] = v                      # never let an unused head overwrite it
    layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.", k)))
    width = state["embed_tokens.weight"].shape[1]
    token_dropout = True
    if heads is None and data.get("cfg") is not None:
        cfg = data["cfg"]["model"]
        heads = cfg.encoder_attention_heads
        token_dropout = getattr(cfg, "token_dropout", True)
    if heads is None and data.get("args") is not None:
        heads = getattr(data["args"], "attention_heads", None)
    if heads is None:
        raise SystemExit("deployment_fair_esm: the file does not say its heads: give --heads")
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    model = ESM2(num_layers=layers, embed_dim=width, attention_heads=heads, alphabet=alphabet,
                 token_dropout=token_dropout)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("contact_head.", "lm_head."))]  # unused heads
    if missing:
        raise SystemExit(f"deployment_fair_esm: tensors missing from {model_file}: {missing[:8]}")
    if unexpected:
        log(f"ignored {len(unexpected)} tensors: {unexpected[:4]}")
    return model, alphabet, heads


class FairEmbedder:
    def __init__(self, a):
        import esm
        import torch

        self.torch, self.a = torch, a
        if a.threads:
            torch.set_num_threads(a.threads)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        started = time.time()
        model, self.alphabet, heads = build(a.model_file, a.heads)
        self.layers, self.hidden = model.num_layers, model.embed_dim
        model = model.eval().to(a.device)
        if a.dtype == "float16":
            model = model.half()
        elif a.dtype == "bfloat16":
            model = model.to(torch.bfloat16)
        if a.rotary_fp32:
            patch_rotary_fp32(model, torch)
        self.model = model
        self.converter = self.alphabet.get_batch_converter()
        self.versions = {"torch": torch.__version__, "fair_esm": esm.__version__}
        log(f"loaded {a.model_file} ({self.layers} layers x {self.hidden}, {heads} heads) as "
            f"{a.dtype} on {a.device} in {time.time() - started:.1f} s; torch {torch.__version__}, "
            f"fair-esm {esm.__version__}")

    def handshake(self):
        a = self.a
        return {
            "protocol": 1,
            "model": "fair-esm-" + os.path.basename(a.model_file).removesuffix(".pt"),
            "hidden": self.hidden,
            "layers": self.layers,
            "dtype": a.dtype,
            "max_residues": a.max_residues,
            "max_batch": a.max_batch,
            "tokens": a.tokens,
            "pooling": a.pooling,
            "device": a.device,
            "stack": "fair-esm ESM2 padded batch" + (", rotary fp32" if a.rotary_fp32 else ""),
            **self.versions,
        }

    def embed(self, residues_list):
        torch = self.torch
        _, _, tokens = self.converter([(str(i), r) for i, r in enumerate(residues_list)])
        with torch.inference_mode():
            out = self.model(tokens.to(self.a.device), repr_layers=[self.layers])
            states = out["representations"][self.layers].float().cpu()
        pooled, token_states = [], []
        for row, r in enumerate(residues_list):
            n = len(r) + 2
            h = states[row, :n]
            if self.a.pooling == "residue-mean":
                v = h[1 : n - 1].mean(0)
            elif self.a.pooling == "all-mean":
                v = h.mean(0)
            else:
                v = h[0]
            pooled.append(v.tolist())
            if self.a.tokens:
                token_states.append(h.contiguous())
        return pooled, token_states


def main():
    a = parse_args()
    out = hf.claim_stdout()
    embedder = FairEmbedder(a)
    if a.listen:
        hf.serve_http(embedder, a.listen, out)
    else:
        hf.serve_stdio(embedder, out)


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    main()
