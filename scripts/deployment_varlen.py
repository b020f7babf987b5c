#!/usr/bin/env python3
"""A packed (varlen) ESM-2 deployment: HF transformers' EsmModel whose self-attention runs on
one packed stream of all the request's tokens with cu_seqlens, through
torch.nn.attention.varlen.varlen_attn (torch >= 2.10, CUDA, float16/bfloat16: flash or
cuDNN), speaking esmfuzz's protocol 1 (docs/PROTOCOL.md) on stdin/stdout or --listen.

    esmfuzz fuzz --backend cuda --weights DIR --deployment \
        "python3 scripts/deployment_varlen.py --model DIR --dtype float16"

The request's sequences are concatenated ([CLS] residues [EOS] each) into input_ids [1, T];
position_ids restart at 0 for every sequence, so the rotary angles are per sequence; each
EsmSelfAttention computes q, k, v and RoPE as HF does, then calls
varlen_attn(q, k, v, cu_seq, cu_seq, max_len, max_len, scale=1.0) (the query is already
scaled by head_dim^-0.5, as HF does before RoPE). Everything else in a layer is per token.
Token dropout's scale (0.88 / (1 - masked fraction)) is the same for every sequence since a
protocol request holds no <mask> tokens.

--kernel sdpa-loop runs the same packed stream with one SDPA call per sequence instead of
varlen_attn: a CPU check of the packing (positions, cu_seqlens, pooling) where varlen_attn
does not run. Options otherwise as deployment_hf.py's (--attn is ignored).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deployment_hf as hf  # noqa: E402

# The packed batch being run: (cu_seqlens int32 tensor [N+1], max length, lengths list).
PACKED = {}


def fail(message):
    print(f"deployment_varlen: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def check_stack(a, torch):
    """Refuses to start, with a clear message, where varlen_attn cannot run as asked."""
    if a.kernel != "varlen":
        return
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        fail(f"torch {torch.__version__} has no torch.nn.attention.varlen.varlen_attn "
             f"(torch >= 2.10 needed); --kernel sdpa-loop runs without it")
    if not str(a.device).startswith("cuda") or not torch.cuda.is_available():
        fail(f"varlen_attn needs a CUDA device (--device {a.device}, "
             f"cuda available: {torch.cuda.is_available()}); --kernel sdpa-loop runs on the CPU")
    if a.dtype == "float32":
        fail("varlen_attn's flash and cuDNN backends take float16 or bfloat16, not float32")
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}[a.dtype]
    try:  # a tiny probe: backend selection errors surface here, not on the first request
        q = torch.randn(5, 2, 16, device=a.device, dtype=dtype)
        cu = torch.tensor([0, 2, 5], device=a.device, dtype=torch.int32)
        varlen_attn(q, q, q, cu, cu, 3, 3, scale=1.0)
        torch.cuda.synchronize()
    except Exception as e:
        fail(f"varlen_attn does not run here ({type(e).__name__}: {e})")


def patch_self_attention(modeling_esm, kernel, torch):
    """Swaps EsmSelfAttention.forward for one on the packed stream (transformers 5.x)."""
    if not hasattr(modeling_esm, "EsmRotaryEmbedding"):
        fail("this transformers has the 4.x ESM attention; deployment_varlen needs "
             "transformers 5.x (EsmRotaryEmbedding, position_embeddings passed to attention)")
    if kernel == "varlen":
        from torch.nn.attention.varlen import varlen_attn
    else:
        import torch.nn.functional as F

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None,
                encoder_attention_mask=None, position_embeddings=None, **kwargs):
        if encoder_hidden_states is not None:
            raise RuntimeError("deployment_varlen: no cross-attention in ESM-2")
        input_shape = hidden_states.shape[:-1]  # [1, T]
        hidden_shape = (*input_shape, -1, self.attention_head_size)
        q = self.query(hidden_states).view(hidden_shape).transpose(1, 2)  # [1, H, T, d]
        k = self.key(hidden_states).view(hidden_shape).transpose(1, 2)
        v = self.value(hidden_states).view(hidden_shape).transpose(1, 2)
        q = q * self.attention_head_size ** -0.5
        cos, sin = position_embeddings  # [1, T, d], positions restarting per sequence
        q, k = modeling_esm.apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)
        q, k, v = (t[0].transpose(0, 1).contiguous() for t in (q, k, v))  # [T, H, d]
        cu, longest, lengths = PACKED["cu"], PACKED["max"], PACKED["lengths"]
        if kernel == "varlen":
            out = varlen_attn(q, k, v, cu, cu, longest, longest, scale=1.0)
        else:
            parts, at = [], 0
            for n in lengths:
                qs, ks, vs = (t[at : at + n].transpose(0, 1)[None] for t in (q, k, v))
                parts.append(F.scaled_dot_product_attention(qs, ks, vs, scale=1.0)[0]
                             .transpose(0, 1))
                at += n
            out = torch.cat(parts, 0)
        return out.reshape(*input_shape, -1), None

    modeling_esm.EsmSelfAttention.forward = forward


class PackedEmbedder(hf.Embedder):
    def __init__(self, a):
        import torch
        from transformers.models.esm import modeling_esm

        check_stack(a, torch)
        patch_self_attention(modeling_esm, a.kernel, torch)
        a.attn = "eager"  # the interface is not used: our forward calls the kernel
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
        device = self.a.device
        ids = torch.tensor([t for s in seqs for t in s], dtype=torch.long, device=device)[None]
        positions = torch.cat([torch.arange(n) for n in lengths]).to(device)[None]
        cu = torch.zeros(len(seqs) + 1, dtype=torch.int32)
        cu[1:] = torch.tensor(lengths).cumsum(0)
        PACKED.update(cu=cu.to(device), max=max(lengths), lengths=lengths)
        with torch.inference_mode():
            out = self.model(input_ids=ids, position_ids=positions)
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
