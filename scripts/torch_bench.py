"""Times HF transformers' EsmModel on exactly the padded batches esmfuzz ran, for `esmfuzz
bench --torch`. Run on the GPU machine, in the same session and on the same card as the
esmfuzz bench it is compared with:

    esmfuzz bench --backend cuda --batches-out batches.json ...        # writes the batches
    python3 scripts/torch_bench.py batches.json torch.json [--weights DIR] [--precisions f32,f16,bf16]
    esmfuzz bench --backend cuda --torch torch.json ...                # prints the ratios

Without --weights the model has random weights of the config in batches.json (as `esmfuzz
bench --synthetic` does): timing only. f32 runs with TF32 off (torch's true FP32, what
esmfuzz's f32 policy computes); tf32 with it on. Each policy: one first pass (timed apart,
as esmfuzz reports its kernel compilation), then --repeat passes, the best reported, with
the peak of torch.cuda.max_memory_allocated.
"""
import argparse
import json
import time

import torch
import transformers

DTYPES = {"f32": torch.float32, "tf32": torch.float32, "f16": torch.float16,
          "bf16": torch.bfloat16}


def batches_as_tensors(plan, device):
    out = []
    for batch in plan["batches"]:
        longest = max(len(s) for s in batch)
        ids = torch.full((len(batch), longest), 1, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, seq in enumerate(batch):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        out.append((ids.to(device), mask.to(device)))
    return out


def one_pass(model, batches):
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        for ids, mask in batches:
            model(input_ids=ids, attention_mask=mask)
    torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser()
    p.add_argument("batches")
    p.add_argument("out")
    p.add_argument("--weights", help="HF checkpoint folder (default: random weights)")
    p.add_argument("--precisions", default="f32,f16,bf16")
    p.add_argument("--repeat", type=int, default=2)
    a = p.parse_args()
    plan = json.load(open(a.batches))
    tokens = sum(len(s) for b in plan["batches"] for s in b)
    if a.weights:
        base = transformers.EsmModel.from_pretrained(a.weights, add_pooling_layer=False)
    else:
        config = transformers.EsmConfig(**plan["config"], pad_token_id=1, mask_token_id=32)
        base = transformers.EsmModel(config, add_pooling_layer=False)
    base = base.eval()
    batches = batches_as_tensors(plan, "cuda")
    rows = []
    for name in a.precisions.split(","):
        torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
        torch.backends.cudnn.allow_tf32 = name == "tf32"
        model = base.to("cuda", dtype=DTYPES[name])
        torch.cuda.reset_peak_memory_stats()
        first = one_pass(model, batches)
        best = min(one_pass(model, batches) for _ in range(max(1, a.repeat)))
        peak = torch.cuda.max_memory_allocated() / 2**30
        rows.append({"precision": name, "tokens_per_second": tokens / best,
                     "first_pass_seconds": first, "peak_memory_gib": peak})
        print(f"{name}: {tokens / best:,.0f} tokens/s (first pass {first:.2f} s, "
              f"peak {peak:.1f} GiB)", flush=True)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "transformers": transformers.__version__,
              "attention": getattr(base.config, "_attn_implementation", "unknown"),
              "tokens": tokens, "batches": len(batches), "rows": rows}
    json.dump(report, open(a.out, "w"), indent=2)


if __name__ == "__main__":
    main()
