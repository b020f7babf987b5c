#!/usr/bin/env python3
"""An ESM-2 deployment with HF transformers' EsmModel, speaking esmfuzz's protocol 1
(docs/PROTOCOL.md) on stdin/stdout, or over HTTP with --listen.

    esmfuzz fuzz --weights DIR --deployment \
        "python3 scripts/deployment_hf.py --model DIR --dtype float16 --device cuda"
    python3 scripts/deployment_hf.py --model DIR --listen 127.0.0.1:0   # prints the URL

Each request is one padded batch (attention_mask, pad id 1); the pooled row is the mean over
residues (BOS, EOS and padding excluded) of last_hidden_state, in float32 (--pooling for
others). Sequences longer than --max-residues are refused with an error line; so are requests
of more than --max-batch sequences. Logs go to stderr only; non-finite values go out as
Python json's NaN / Infinity.

--rotary-fp16 is deliberately WRONG (a test fault): the rotary angles t * inv_freq are
computed in float16, as a careless port would, instead of in float32.
"""
import argparse
import base64
import json
import os
import sys
import time

# The ESM-2 vocabulary in id order (fair-esm's Alphabet); the HF folder may lack vocab.txt.
TOKENS = ["<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I",
          "D", "P", "K", "Q", "N", "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".",
          "-", "<null_1>", "<mask>"]
IDS = {t: i for i, t in enumerate(TOKENS) if len(t) == 1}
CLS, PAD, EOS, UNK = 0, 1, 2, 3


def log(*parts):
    name = sys.argv[0].rsplit("/", 1)[-1].removesuffix(".py") or "deployment_hf"
    print(f"{name}:", *parts, file=sys.stderr, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="HF folder (config.json + weights)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--pooling", default="residue-mean", choices=["residue-mean", "all-mean", "bos"])
    p.add_argument("--listen", help="HOST:PORT: serve protocol 1 over HTTP (port 0: any free)")
    p.add_argument("--max-residues", type=int, default=1022)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--tokens", action="store_true", help="also send every token's last state")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    p.add_argument("--rotary-fp16", action="store_true", help=argparse.SUPPRESS)
    # Deliberately WRONG (a test fault): no attention_mask, so padded batch-mates' pad tokens
    # are attended to. One protein alone (the identity probe) is unaffected.
    p.add_argument("--no-attention-mask", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def tokenize(residues):
    """[CLS] + one id per residue (unknown letters as <unk>) + [EOS]."""
    return [CLS] + [IDS.get(c, UNK) for c in residues] + [EOS]


def patch_rotary_fp16(esm_module):
    """Makes HF's rotary embedding compute its angles (position * inv_freq) in float16, the
    deliberate fault; HF computes them in float32. Handles transformers 5.x
    (EsmRotaryEmbedding.forward(x, position_ids)) and 4.x (RotaryEmbedding's cached tables)."""
    import torch

    if hasattr(esm_module, "EsmRotaryEmbedding"):
        def forward(self, x, position_ids, layer_type=None):
            inv_freq = self.inv_freq.to(device=x.device, dtype=torch.float16)
            freqs = position_ids[..., None].to(torch.float16) * inv_freq  # fp16 angles
            emb = torch.cat((freqs, freqs), dim=-1).float()
            return emb.cos().to(dtype=x.dtype), emb.sin().to(dtype=x.dtype)

        esm_module.EsmRotaryEmbedding.forward = forward
        return

    def update(self, x, seq_dimension=2):
        seq_len = x.shape[seq_dimension]
        if seq_len != self._seq_len_cached or self._cos_cached is None or \
                self._cos_cached.device != x.device:
            self._seq_len_cached = seq_len
            t = torch.arange(seq_len, device=x.device, dtype=torch.float16)
            freqs = torch.outer(t, self.inv_freq.to(x.device, torch.float16))  # fp16 angles
            emb = torch.cat((freqs, freqs), dim=-1).float()
            self._cos_cached = emb.cos()[None, None, :, :]
            self._sin_cached = emb.sin()[None, None, :, :]
        return self._cos_cached, self._sin_cached

    esm_module.RotaryEmbedding._update_cos_sin_tables = update


class Embedder:
    def __init__(self, a):
        import torch
        import transformers
        from transformers.models.esm import modeling_esm

        self.torch, self.a = torch, a
        if a.threads:
            torch.set_num_threads(a.threads)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        if a.rotary_fp16:
            patch_rotary_fp16(modeling_esm)
            log("--rotary-fp16: rotary angles computed in float16 (deliberate fault)")
        self.dtype = {"float32": torch.float32, "float16": torch.float16,
                      "bfloat16": torch.bfloat16}[a.dtype]
        started = time.time()
        model = transformers.EsmModel.from_pretrained(
            a.model, add_pooling_layer=False, attn_implementation=a.attn)
        self.model = model.to(a.device, dtype=self.dtype).eval()
        self.config = model.config
        self.versions = {"torch": torch.__version__, "transformers": transformers.__version__}
        log(f"loaded {a.model} ({self.config.num_hidden_layers} layers, hidden "
            f"{self.config.hidden_size}) as {a.dtype} on {a.device}, attn {a.attn}, in "
            f"{time.time() - started:.1f} s; torch {torch.__version__}, transformers "
            f"{transformers.__version__}")

    def handshake(self):
        a = self.a
        return {
            "protocol": 1,
            # The fault names itself, so its saved failures are kept apart from the clean run's.
            "model": "hf-" + a.model.rstrip("/").split("/")[-1]
                     + ("-rotary-fp16" if a.rotary_fp16 else "")
                     + ("-no-mask" if a.no_attention_mask else ""),
            "hidden": self.config.hidden_size,
            "layers": self.config.num_hidden_layers,
            "dtype": a.dtype,
            "max_residues": a.max_residues,
            "max_batch": a.max_batch,
            "tokens": a.tokens,
            "pooling": a.pooling,
            "device": a.device,
            "attn": a.attn,
            "stack": "transformers.EsmModel padded batch",
            **self.versions,
            **({"fault": "rotary-fp16"} if a.rotary_fp16 else {}),
            **({"fault": "no-attention-mask"} if a.no_attention_mask else {}),
        }

    def embed(self, residues_list):
        """Pooled float32 rows (and token states) of one padded batch."""
        torch = self.torch
        seqs = [tokenize(r) for r in residues_list]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), PAD, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, : len(s)] = torch.tensor(s)
            mask[row, : len(s)] = 1
        with torch.inference_mode():
            given_mask = None if self.a.no_attention_mask else mask.to(self.a.device)
            out = self.model(input_ids=ids.to(self.a.device), attention_mask=given_mask)
            states = out.last_hidden_state.float().cpu()
        pooled, tokens = [], []
        for row, s in enumerate(seqs):
            n = len(s)  # residues + 2
            h = states[row, :n]
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


def answer(embedder, line):
    """One protocol line in, one line out."""
    try:
        message = json.loads(line)
    except ValueError as e:
        return json.dumps({"id": 0, "error": f"not JSON: {e}"})
    if "hello" in message:
        return json.dumps(embedder.handshake())
    rid = message.get("id", 0)
    try:
        seqs = message["sequences"]
        a = embedder.a
        if not seqs:
            return json.dumps({"id": rid, "error": "no sequences"})
        if len(seqs) > a.max_batch:
            return json.dumps({"id": rid, "error": f"{len(seqs)} sequences > max_batch {a.max_batch}"})
        for s in seqs:
            if len(s["residues"]) > a.max_residues:
                return json.dumps({"id": rid, "error": f"{s['name']}: {len(s['residues'])} "
                                   f"residues > max_residues {a.max_residues}"})
            if not s["residues"]:
                return json.dumps({"id": rid, "error": f"{s['name']}: no residues"})
        started = time.time()
        pooled, tokens = embedder.embed([s["residues"] for s in seqs])
        reply = {"id": rid, "pooled": pooled}
        if tokens:
            import torch
            flat = torch.cat([t.reshape(-1) for t in tokens]).numpy().astype("<f4")
            reply["tokens_b64"] = base64.b64encode(flat.tobytes()).decode()
            reply["token_shapes"] = [list(t.shape) for t in tokens]
        log(f"request {rid}: {len(seqs)} sequences, longest "
            f"{max(len(s['residues']) for s in seqs)}, {time.time() - started:.3f} s")
        return json.dumps(reply)  # allow_nan: NaN / Infinity as Python writes them
    except Exception as e:  # a refusal, not a dead deployment
        log(f"request {rid} failed: {type(e).__name__}: {e}")
        return json.dumps({"id": rid, "error": f"{type(e).__name__}: {e}"})


def claim_stdout():
    """The protocol's stdout, kept for protocol lines alone: file descriptor 1 is pointed at
    stderr, so whatever a library prints (Python or C) lands in the log, not in the protocol."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    sys.stdout.flush()
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def serve_stdio(embedder, out):
    for line in sys.stdin:
        if line.strip():
            out.write(answer(embedder, line) + "\n")
            out.flush()
    log("stdin closed: exiting")


def serve_http(embedder, address, out):
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.reply(200, answer(embedder, body.decode("utf-8", "replace")))

        def do_GET(self):
            self.reply(200, json.dumps(embedder.handshake()))

        def reply(self, code, text):
            data = (text + "\n").encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt, *args):
            log("http", fmt % args)

    host, _, port = address.rpartition(":")
    server = HTTPServer((host or "127.0.0.1", int(port)), Handler)  # one call at a time
    bound = f"{server.server_address[0]}:{server.server_address[1]}"
    print(f"listening on http://{bound}", file=out, flush=True)
    log(f"serving protocol 1 on http://{bound}/")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


def main():
    a = parse_args()
    out = claim_stdout()
    embedder = Embedder(a)
    if a.listen:
        serve_http(embedder, a.listen, out)
    else:
        serve_stdio(embedder, out)


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    main()
