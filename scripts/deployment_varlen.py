#!/usr/bin/env python3
"""A packed (varlen) ESM-2 deployment: HF transformers' EsmModel whose self-attention runs on
one packed stream of all the request's tokens with cu_seqlens, through
torch.nn.attention.varlen.varlen_attn (torch >= 2.10, CUDA, float16/bfloat16: flash or
cuDNN), speaking esmfuzz's protocol 1 (docs/PROTOCOL.md) on stdin/stdout or --listen.

    esmfuzz fuzz --backend cuda --weights DIR --deployment \
        "python3 scripts/deployment_varlen.py --model DIR --dtype float16"

The request's sequences are concatenated ([CLS] residues [EOS] each) into one packed stream
with cu_seqlens and position_ids restarting per sequence, and self-attention runs per sequence
through varlen_attn: scripts/esm_packed.py (shared with scripts/torch_bench.py) says how the
attention is swapped (transformers' AttentionInterface, not a patch of its classes).

--kernel sdpa-loop runs the same packed stream with one SDPA call per sequence instead of
varlen_attn: a CPU check of the packing (positions, cu_seqlens, pooling) where varlen_attn
does not run. Options otherwise as deployment_hf.py's (--attn is ignored).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deployment_hf as hf  # noqa: E402
import esm_packed  # noqa: E402


def fail(message):
    print(f"deployment_varlen: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def check_stack(a, torch):
    """Refuses to start, with a clear message, where varlen_attn cannot run as asked."""
    if a.kernel != "varlen":
        return
    dtype = {"float32": torch.float32, "float16": torch.float16,
             "bfloat16": torch.bfloat16}[a.dtype]
    problem = esm_packed.varlen_problem(torch, a.device, dtype)
    if problem:
        fail(f"{problem}; --kernel sdpa-loop runs without it (CPU, float32)")


class PackedEmbedder(hf.Embedder):
    def __init__(self, a):
        import torch
        from transformers.models.esm import modeling_esm

        check_stack(a, torch)
        if not hasattr(modeling_esm, "EsmRotaryEmbedding"):
            fail("this transformers has the 4.x ESM attention; deployment_varlen needs "
                 "transformers 5.x (attention through AttentionInterface)")
        # The packed attention, chosen by name at load (the interface is transformers' own).
        a.attn = esm_packed.register(a.kernel)
        super().__init__(a)

    def handshake(self):
        h = super().handshake()
        h["stack"] = f"transformers.EsmModel packed, attention {self.a.kernel} with cu_seqlens"
        h["packed"] = True
        h["model"] = h["model"].replace("hf-", "hf-packed-", 1)
        del h["attn"]
        return h

    def embed(self, residues_list):
        torch = self.torch
        seqs = [hf.tokenize(r) for r in residues_list]
        lengths = [len(s) for s in seqs]
        packed = esm_packed.packed_inputs(torch, seqs, self.a.device)
        with torch.inference_mode():
            out = self.model(**packed)
            states = out.last_hidden_state[0].float().cpu()  # [T, hidden]
        pooled, tokens, at = [], [], 0
        for n in lengths:
            h = states[at : at + n]
            at += n
            if self.a.pooling == "residue-mean":
                v = h[1 : n - 1].mean(0)
            elif self.a.pooling == "all-mean":
                v = h.mean(0)
            else:
                v = h[0]
            pooled.append(v.tolist())
            if self.a.tokens:
                tokens.append(h.contiguous())
        return pooled, tokens


def main():
    argv = sys.argv[1:]
    kernel = "varlen"
    if "--kernel" in argv:
        i = argv.index("--kernel")
        kernel = argv[i + 1]
        del argv[i : i + 2]
    if kernel not in ("varlen", "sdpa-loop"):
        fail(f"--kernel {kernel}: varlen or sdpa-loop")
    a = hf.parse_args(argv)
    a.kernel = kernel
    out = hf.claim_stdout()
    embedder = PackedEmbedder(a)
    if a.listen:
        hf.serve_http(embedder, a.listen, out)
    else:
        hf.serve_stdio(embedder, out)


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    main()
