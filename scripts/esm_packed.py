"""HF transformers' EsmModel on packed (varlen) batches, shared by scripts/deployment_varlen.py
and scripts/torch_bench.py.

A packed batch is every sequence's tokens ([CLS] residues [EOS]) back to back in one stream,
input_ids [1, T], delimited by cu_seqlens (int32 [N + 1], from 0); position_ids restart at 0
for every sequence, so the rotary angles are per sequence. Everything in a layer but
self-attention is per token; self-attention runs per sequence through
torch.nn.attention.varlen.varlen_attn (torch >= 2.10, CUDA, float16/bfloat16: flash or cuDNN).

The swap is transformers' own extension point, not a patch of its classes: an attention function
registered with AttentionInterface and chosen per model (attn_implementation=NAME, or
model.set_attn_implementation(NAME)), so a packed and a padded model live side by side and
torch.compile sees plain keyword arguments. HF's EsmSelfAttention computes q (already scaled by
head_dim^-0.5, as ESM does before RoPE), k, v and RoPE from position_ids, then calls

    fn(module, q, k, v, attention_mask, scaling=1.0, **kwargs)   # q, k, v: [1, heads, T, head_dim]

and takes back [1, T, heads, head_dim]. The packing reaches fn as the model call's keyword
arguments (cu_seq_lens_q/k, max_length_q/k: transformers passes them down to the attention
function; they are its own flash-attention names). attention_mask is None: an implementation
transformers has no mask function for gets none, so no dense [T, T] mask is ever built.

Token dropout: HF scales embeddings by 0.88 / (1 - masked fraction), the fraction taken over the
whole stream, so a packed batch equals its padded one only while no sequence holds <mask>
(esmfuzz's FASTA input never does).

kernel "sdpa-loop" runs the same packed stream with one SDPA call per sequence: an exact
reference that runs anywhere (CPU, float32), to check the packing (positions, cu_seqlens,
splitting) where varlen_attn does not run. It is slow and never a speed figure.
"""

KERNELS = ("varlen", "sdpa-loop")
# Deliberately wrong packings, for showing that a check catches them (packed_inputs).
FAULTS = ("leak-across-sequences", "double-scaled")
# The attn_implementation name of each kernel ("flash" is avoided on purpose: transformers
# treats names containing it as its own flash-attention integrations).
IMPLEMENTATIONS = {"varlen": "esm_packed_varlen", "sdpa-loop": "esm_packed_sdpa_loop"}


def varlen_problem(torch, device, dtype):
    """Why varlen_attn cannot run here with this device and dtype, or None when it can (a tiny
    probe call, so backend selection errors surface before any real batch)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return (f"torch {torch.__version__} has no torch.nn.attention.varlen.varlen_attn "
                f"(torch >= 2.10 needed)")
    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return (f"varlen_attn needs a CUDA device (device {device}, cuda available: "
                f"{torch.cuda.is_available()})")
    if dtype not in (torch.float16, torch.bfloat16):
        return f"varlen_attn's flash and cuDNN backends take float16 or bfloat16, not {dtype}"
    try:
        q = torch.randn(5, 2, 16, device=device, dtype=dtype)
        cu = torch.tensor([0, 2, 5], device=device, dtype=torch.int32)
        varlen_attn(q, q, q, cu, cu, 3, 3, scale=1.0)
        torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001 - the reason is reported, not handled
        return f"varlen_attn does not run here ({type(e).__name__}: {e})"
    return None


def _unpacked_call(name):
    return RuntimeError(f"{name} called without cu_seq_lens_q: call the model with "
                        f"esm_packed.packed_inputs(...) as keyword arguments")


# torch.nn.attention.varlen.varlen_attn, bound by register("varlen") (no import inside the
# function torch.compile traces).
_VARLEN_ATTN = None


def _varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                      cu_seq_lens_q=None, cu_seq_lens_k=None, max_length_q=None,
                      max_length_k=None, esm_packed_fault=None, **kwargs):
    if cu_seq_lens_q is None:
        raise _unpacked_call(IMPLEMENTATIONS["varlen"])
    if esm_packed_fault == "double-scaled":
        scaling = None  # the kernel's default head_dim^-0.5 on top of ESM's own
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))  # [T, H, d]
    out = _VARLEN_ATTN(q, k, v, cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k,
                       scale=scaling)
    return out[None], None  # [1, T, H, d]


def _sdpa_loop_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                         cu_seq_lens_q=None, esm_packed_fault=None, **kwargs):
    import torch
    import torch.nn.functional as F

    if cu_seq_lens_q is None:
        raise _unpacked_call(IMPLEMENTATIONS["sdpa-loop"])
    if esm_packed_fault == "double-scaled":
        scaling = None
    bounds = cu_seq_lens_q.tolist()
    parts = [F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b],
                                            scale=scaling)
             for a, b in zip(bounds, bounds[1:])]
    return torch.cat(parts, dim=2).transpose(1, 2), None  # [1, T, H, d]


def register(kernel):
    """Registers the packed attention of `kernel` with transformers and returns the
    attn_implementation name that selects it."""
    global _VARLEN_ATTN
    from transformers import AttentionInterface

    if kernel not in KERNELS:
        raise ValueError(f"kernel {kernel!r}: one of {', '.join(KERNELS)}")
    if kernel == "varlen":
        from torch.nn.attention.varlen import varlen_attn

        _VARLEN_ATTN = varlen_attn
    name = IMPLEMENTATIONS[kernel]
    fn = _varlen_attention if kernel == "varlen" else _sdpa_loop_attention
    AttentionInterface.register(name, fn)
    return name


def packed_inputs(torch, sequences, device, fault=None):
    """The model call's keyword arguments for one packed batch of token-id lists (each
    [CLS] .. [EOS]): input_ids and position_ids [1, T], cu_seq_lens_q/k and max_length_q/k.

    fault (tests only, deliberately WRONG, one of FAULTS): "leak-across-sequences" makes
    attention see the whole stream as one sequence; "double-scaled" lets the kernel apply its
    default head_dim^-0.5 on top of ESM's (a classic port bug). Positions not restarted is no
    such test: RoPE scores depend only on relative positions, so a per-sequence offset changes
    nothing but rounding (2.7e-6 against 3.2e-6 relative L2 at 8M, FP32, CPU)."""
    if fault not in (None, *FAULTS):
        raise ValueError(f"unknown fault {fault!r}: one of {', '.join(FAULTS)}")
    lengths = [len(s) for s in sequences]
    ids = torch.tensor([t for s in sequences for t in s], dtype=torch.long)[None]
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    if fault == "leak-across-sequences":
        lengths = [sum(lengths)]
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    cu = cu.to(device)
    kwargs = {"input_ids": ids.to(device), "position_ids": positions.to(device),
              "cu_seq_lens_q": cu, "cu_seq_lens_k": cu,
              "max_length_q": max(lengths), "max_length_k": max(lengths)}
    if fault == "double-scaled":
        kwargs["esm_packed_fault"] = fault
    return kwargs


def split(last_hidden_state, lengths):
    """Each sequence's rows [n, hidden] of a packed output [1, T, hidden]."""
    return list(last_hidden_state[0].split(lengths, dim=0))
