"""Times HF transformers' EsmModel on exactly the batches esmfuzz ran, for `esmfuzz bench
--torch`: the anchors every speed claim is a ratio against. Run on the GPU machine, in the same
session and on the same card as the esmfuzz bench it is compared with:

    esmfuzz bench --backend cuda --batches-out batches.json --plan-only ...   # the batches
    python3 scripts/torch_bench.py batches.json torch.json [--weights DIR] [--precisions f16,bf16]
    esmfuzz bench --backend cuda --torch torch.json ...                       # the ratios

Modes (--modes, default all four):
  eager            EsmModel as it ships (SDPA) on esmfuzz's padded batches
  compiled         torch.compile(model, dynamic=True) on the same padded batches
  packed           the same model on esmfuzz's packed bins (batches.json "packed", cu_seqlens
                   per bin), self-attention through torch.nn.attention.varlen.varlen_attn
                   (scripts/esm_packed.py; torch >= 2.10, CUDA, float16/bfloat16 only)
  packed-compiled  torch.compile(packed model, dynamic=True) on the packed bins

Every mode is checked before it is timed: HF FP32 eager (TF32 off) on the padded batches is the
reference; each mode's first pass keeps every sequence's last hidden state ([CLS] .. [EOS]) and
is compared with it per sequence (relative L2 and max |diff|). eager at the same precision is
the calibration (its error is the precision's own); compiled, packed and packed-compiled must
stay within max(floor, EAGER_FACTOR x eager's error) (the floors below), and every value must be
finite. A mode that fails is marked "invalid" in the JSON, gets no timing and makes the exit
status 1: a fast wrong anchor is no anchor.

Timing: the first pass apart (torch.compile compiles during it; for eager it holds cuBLAS and
cuDNN start-up), then --repeat warm passes, the best reported, tokens/s over real tokens (no
padding), with torch.cuda.max_memory_allocated over the warm passes (the first pass's peak
apart). f32 runs with TF32 off (torch's true FP32, what esmfuzz's f32 policy computes); tf32
with it on. Each mode and precision gets its own model, cast from one FP32 master copy on the
host, and runs under --mode-seconds; one that times out or errors is reported as such and the
others go on. Order: eager and packed for every precision first, then the compiled modes (a
3B compile took 92 s): under --deadline-seconds whatever is not reached is "not-run". The JSON
is rewritten after every mode.

--device cpu runs eager and compiled for real (slowly) and checks the packing there with
kernel "sdpa-loop" (one SDPA call per sequence: exact, not varlen_attn): status "check-only",
never a speed figure; packed-compiled is skipped on the CPU.

Without --weights the model has random weights of the config in batches.json (as `esmfuzz
bench --synthetic` does; seed 0): timing and the checks, which compare it with itself in FP32.

torch.json, version 2: "rows" holds the eager rows as version 1 did (precision,
tokens_per_second, first_pass_seconds, peak_memory_gib); "modes" holds one entry per mode and
precision: mode, precision, layout, kernel, status (ok, invalid, error, timeout, skipped,
check-only, not-run), reason, first_pass_seconds, best_seconds, pass_seconds,
tokens_per_second, peak_memory_gib, first_pass_peak_memory_gib, check (and
profiled_pass_seconds with --profile-pass).

--profile-pass: after each timed mode's warm passes, one more pass between cudaProfilerStart and
cudaProfilerStop, so that `ncu --profile-from-start off` records one warm pass's kernels, as
`esmfuzz bench --profile-pass` marks esmfuzz's (`gpu_run.sh torchprofile`).
"""
import argparse
import contextlib
import copy
import gc
import json
import os
import platform
import signal
import sys
import time

import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import esm_packed  # noqa: E402

DTYPES = {"f32": torch.float32, "tf32": torch.float32, "f16": torch.float16,
          "bf16": torch.bfloat16}
MODES = ("eager", "compiled", "packed", "packed-compiled")
# The cheap modes run first for every precision, the compiled ones after.
PHASES = (("eager", "packed"), ("compiled", "packed-compiled"))

# The check's bounds, per precision: the worst sequence's relative L2 (||x - ref|| / ||ref||
# over its tokens x hidden) and the largest |x - ref| against HF FP32 eager. A mode must stay
# within max(floor, EAGER_FACTOR x the worst of eager at the same precision).
# f16 and bf16 floors: 5x what torch FP16 / BF16 measured against torch FP32 with the real 8M
# weights on the corpus (H100, /work/shared/ANCHORS.md: rel L2 0.0021 / 0.0165, max |diff|
# 0.029 / 0.25); tf32 as f16 (both keep a 10-bit mantissa in the products). f32 (TF32 off):
# compiled only reorders FP32 sums (8M, 24 corpus records, CPU: rel L2 2.2e-6, max |diff|
# 9.5e-6 against eager; the packed sdpa-loop 1.3e-6 / 5.7e-6). The faults they must catch
# (esm_packed.FAULTS, same records): attention leaking across a packed batch's sequences,
# rel L2 0.84; the kernel's default scale on top of ESM's, 0.86: 80x the f16 floor, 10x the
# bf16 one. (CPU, same records: eager bf16 0.019 / 0.14, f16 0.0025 / 0.0097; packed
# sdpa-loop bf16 0.019, f16 0.0026; compiled bf16 0.015.)
REL_L2_FLOOR = {"f32": 1e-4, "tf32": 1e-2, "f16": 1e-2, "bf16": 8e-2}
MAX_ABS_FLOOR = {"f32": 1e-2, "tf32": 0.15, "f16": 0.15, "bf16": 1.25}
# eager's own error at the precision, times this: packing and compiling change which kernels
# round where, not how coarsely (random-weight 650M/3B may sit above the 8M floors).
EAGER_FACTOR = 4.0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("batches", help="esmfuzz bench --batches-out (version 2 for the packed modes)")
    p.add_argument("out", help="torch.json to write")
    p.add_argument("--weights", help="HF checkpoint folder (default: random weights, seed 0)")
    p.add_argument("--precisions", default="f32,f16,bf16")
    p.add_argument("--modes", default=",".join(MODES), help="of " + ",".join(MODES))
    p.add_argument("--repeat", type=int, default=3, help="warm passes after the first (best kept)")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    p.add_argument("--mode-seconds", type=float, default=300,
                   help="time limit of one mode at one precision (model build, check, passes)")
    p.add_argument("--deadline-seconds", type=float, default=0,
                   help="stop starting modes after this many seconds in all (0: no deadline); "
                        "leave room under any outer timeout so the JSON is written")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    p.add_argument("--profile-pass", action="store_true",
                   help="after a mode's warm passes, one more pass inside the CUDA profiler "
                        "range (cudaProfilerStart/Stop), for `ncu --profile-from-start off`; "
                        "profile one mode per run, since the ranges of several add up")
    # Deliberately WRONG packings (tests only): the packed modes must come out invalid.
    p.add_argument("--fault", choices=esm_packed.FAULTS, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.precisions = [x for x in a.precisions.split(",") if x]
    a.modes = [x for x in a.modes.split(",") if x]
    for x in a.precisions:
        if x not in DTYPES:
            p.error(f"--precisions: {x!r} is not one of {', '.join(DTYPES)}")
    for x in a.modes:
        if x not in MODES:
            p.error(f"--modes: {x!r} is not one of {', '.join(MODES)}")
    if not a.precisions or not a.modes:
        p.error("nothing to run: --precisions and --modes need at least one value each")
    if a.repeat < 1:
        p.error("--repeat: at least 1")
    return a


class Expired(Exception):
    """A mode's time limit passed."""


@contextlib.contextmanager
def time_limit(seconds):
    """Raises Expired in the main thread after `seconds` (SIGALRM: between Python bytecodes,
    so a CUDA call returns first). Code that wraps the exception (dynamo does) is still seen
    as expired through `state`."""
    state = {"expired": False}

    def alarm(*_):
        state["expired"] = True
        raise Expired(f"over the time limit of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield state
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def synchronize(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def peak_gib(device):
    return torch.cuda.max_memory_allocated() / 2**30 if str(device).startswith("cuda") else None


def reset_peak(device):
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def set_tf32(precision):
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"


def compiled_graphs():
    """Graphs dynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def padded_inputs(plan, device):
    """Per padded batch: the model call's keyword arguments and (record, length) per row."""
    records = plan.get("batch_records")
    out, at = [], 0
    for b, batch in enumerate(plan["batches"]):
        longest = max(len(s) for s in batch)
        ids = torch.full((len(batch), longest), 1, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, seq in enumerate(batch):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        # Version 1 plans name no records: rows are numbered in plan order.
        rows = records[b] if records else list(range(at, at + len(batch)))
        at += len(batch)
        out.append(({"input_ids": ids.to(device), "attention_mask": mask.to(device)},
                    list(zip(rows, (len(s) for s in batch)))))
    return out


def packed_inputs(plan, device, fault):
    """Per packed bin: the model call's keyword arguments and (record, length) per sequence."""
    out = []
    for b in plan["packed"]:
        cu = b["cu_seqlens"]
        seqs = [b["tokens"][x:y] for x, y in zip(cu, cu[1:])]
        kwargs = esm_packed.packed_inputs(torch, seqs, device, fault)
        out.append((kwargs, list(zip(b["records"], (len(s) for s in seqs)))))
    return out


def states_of(outputs, batches, packed):
    """Every sequence's last hidden state (device tensors), by record."""
    states = {}
    for out, (_, rows) in zip(outputs, batches):
        if packed:
            parts = esm_packed.split(out, [n for _, n in rows])
            states.update((r, x) for (r, _), x in zip(rows, parts))
        else:
            states.update((r, out[i, :n]) for i, (r, n) in enumerate(rows))
    return states


def one_pass(model, batches, device, keep=False):
    """Seconds of one pass over `batches`, and the last hidden states if `keep`."""
    outputs = []
    synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for kwargs, _ in batches:
            out = model(**kwargs).last_hidden_state
            if keep:
                outputs.append(out)
    synchronize(device)
    return time.perf_counter() - start, outputs


def compare(states, reference):
    """Per-sequence errors of `states` against the FP32 reference (records must match)."""
    if set(states) != set(reference):
        missing = sorted(set(reference) - set(states))[:5]
        extra = sorted(set(states) - set(reference))[:5]
        return {"sequences": len(states), "error": f"records differ from the reference's: "
                f"missing {missing}, unexpected {extra}"}
    worst_rel, worst_record, max_abs, rel_sum, non_finite = 0.0, None, 0.0, 0.0, 0
    for record, x in states.items():
        ref = reference[record].to(x.device)
        x = x.float()
        if x.shape != ref.shape:
            return {"sequences": len(states),
                    "error": f"record {record}: shape {list(x.shape)} against {list(ref.shape)}"}
        if not bool(torch.isfinite(x).all()):
            non_finite += 1
            continue
        diff = x - ref
        rel = float(diff.norm() / ref.norm().clamp_min(1e-30))
        rel_sum += rel
        max_abs = max(max_abs, float(diff.abs().max()))
        if rel >= worst_rel:
            worst_rel, worst_record = rel, record
    finite = len(states) - non_finite
    return {"sequences": len(states), "non_finite_sequences": non_finite,
            "rel_l2_max": worst_rel, "rel_l2_mean": rel_sum / max(finite, 1),
            "max_abs": max_abs, "worst_record": worst_record}


def judge(check, precision, calibration):
    """Adds the bounds and the verdict to `check`. calibration: eager's check at the same
    precision (None: this is eager, which must only be finite)."""
    if "error" in check:
        check["held"] = False
        return check
    if check["sequences"] == 0:
        check.update(held=False, error="no sequence was checked")
        return check
    if calibration is None:
        check["held"] = check["non_finite_sequences"] == 0
        check["bounds"] = "eager is the calibration: its error is the precision's own"
        return check
    rel_bound = max(REL_L2_FLOOR[precision], EAGER_FACTOR * calibration["rel_l2_max"])
    abs_bound = max(MAX_ABS_FLOOR[precision], EAGER_FACTOR * calibration["max_abs"])
    check.update(rel_l2_bound=rel_bound, max_abs_bound=abs_bound,
                 held=check["non_finite_sequences"] == 0 and check["rel_l2_max"] <= rel_bound
                 and check["max_abs"] <= abs_bound)
    return check


def describe(check):
    if "error" in check:
        return check["error"]
    text = (f"{check['sequences']} sequences, worst rel L2 {check['rel_l2_max']:.3g} (record "
            f"{check['worst_record']}), max |diff| {check['max_abs']:.3g}")
    if "rel_l2_bound" in check:
        text += f"; bounds {check['rel_l2_bound']:.3g} / {check['max_abs_bound']:.3g}"
    if check.get("non_finite_sequences"):
        text += f"; {check['non_finite_sequences']} sequences with NaN/Inf"
    return text


class Bench:
    def __init__(self, a, plan):
        self.a, self.plan = a, plan
        self.device = a.device
        self.cuda = str(a.device).startswith("cuda")
        self.started = time.monotonic()
        self.tokens = sum(len(s) for b in plan["batches"] for s in b)
        self.padded = padded_inputs(plan, a.device)
        self.packed = packed_inputs(plan, a.device, a.fault) if "packed" in plan else None
        self.master = self.load()
        self.reference = None
        self.reference_info = {}
        self.calibration = {}  # precision -> eager's check
        self.entries = []
        self.report = {
            "version": 2,
            "device": torch.cuda.get_device_name() if self.cuda
            else f"cpu ({platform.processor() or platform.machine()})",
            "torch": torch.__version__, "transformers": transformers.__version__,
            "cudnn": torch.backends.cudnn.version() if self.cuda else None,
            "attention": getattr(self.master.config, "_attn_implementation", "unknown"),
            "weights": a.weights or "random (seed 0)",
            "tokens": self.tokens, "batches": len(self.padded),
            "packed_batches": len(self.packed) if self.packed is not None else None,
            "token_budget": plan.get("token_budget"), "repeat": a.repeat,
            "reference": self.reference_info,
            "bounds": {"rel_l2_floor": REL_L2_FLOOR, "max_abs_floor": MAX_ABS_FLOOR,
                       "eager_factor": EAGER_FACTOR},
            **({"fault": a.fault} if a.fault else {}),
            "rows": [], "modes": self.entries,
        }

    def load(self):
        """The FP32 master copy, on the host."""
        if self.a.weights:
            model = transformers.EsmModel.from_pretrained(
                self.a.weights, add_pooling_layer=False, dtype=torch.float32)
        else:
            config = transformers.EsmConfig(**self.plan["config"], pad_token_id=1,
                                            mask_token_id=32)
            torch.manual_seed(0)
            # Drawn on the device (a 3B draw on the host takes minutes), kept on the host.
            with torch.device(self.device):
                model = transformers.EsmModel(config, add_pooling_layer=False)
            model = model.to("cpu")
        return model.float().eval()

    def model(self, precision, implementation=None):
        model = copy.deepcopy(self.master)
        if implementation:
            model.set_attn_implementation(implementation)
        return model.to(device=self.device, dtype=DTYPES[precision]).eval()

    def write(self):
        tmp = self.a.out + ".partial"
        with open(tmp, "w") as f:
            json.dump(self.report, f, indent=2)
        os.replace(tmp, self.a.out)

    def remaining(self):
        if not self.a.deadline_seconds:
            return float("inf")
        return self.a.deadline_seconds - (time.monotonic() - self.started)

    def clean(self):
        gc.collect()
        torch._dynamo.reset()
        if self.cuda:
            torch.cuda.empty_cache()

    def fp32_reference(self):
        """HF FP32 eager (TF32 off) on the padded batches: every sequence's last hidden state,
        on the host."""
        start = time.monotonic()
        try:
            with time_limit(min(self.a.mode_seconds, self.remaining())):
                set_tf32("f32")
                model = self.model("f32")
                seconds, outputs = one_pass(model, self.padded, self.device, keep=True)
                self.reference = {r: x.float().cpu()
                                  for r, x in states_of(outputs, self.padded, False).items()}
                del model, outputs
            self.reference_info.update(
                what="HF EsmModel FP32 (TF32 off), eager, the padded batches",
                sequences=len(self.reference), pass_seconds=seconds)
            print(f"FP32 reference: {len(self.reference)} sequences in {seconds:.2f} s",
                  flush=True)
        except Exception as e:  # noqa: BLE001 - reported, the modes go on unchecked or not at all
            self.reference_info.update(error=f"{type(e).__name__}: {e}")
            print(f"FP32 reference FAILED: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        self.reference_info["seconds"] = time.monotonic() - start
        self.clean()

    def skip_reason(self, mode, precision):
        """Why `mode` does not run at `precision` here (status, reason), or None."""
        packed = mode.startswith("packed")
        if packed and self.packed is None:
            return "skipped", ("the batches file has no packed bins (version 1): write it with "
                               "this checkout's esmfuzz bench --batches-out")
        if packed and self.cuda:
            problem = esm_packed.varlen_problem(torch, self.device, DTYPES[precision])
            if problem:
                return ("skipped" if DTYPES[precision] == torch.float32 else "error"), problem
        if mode == "packed-compiled" and not self.cuda:
            return "skipped", ("varlen_attn needs CUDA; on the CPU the packing is checked "
                               "eager only (sdpa-loop)")
        if self.reference is None and mode != "eager":
            return "not-run", "no FP32 reference to check against: " + \
                self.reference_info.get("error", "it did not run")
        return None

    def run(self, mode, precision):
        entry = {"mode": mode, "precision": precision,
                 "layout": "packed" if mode.startswith("packed") else "padded",
                 "kernel": "sdpa (transformers)", "status": None, "reason": None}
        self.entries.append(entry)
        packed = mode.startswith("packed")
        compiled = mode.endswith("compiled")
        check_only = packed and not self.cuda
        if packed:
            entry["kernel"] = "sdpa-loop (CPU check only, not varlen_attn, not timed)" \
                if check_only else "torch.nn.attention.varlen.varlen_attn"
        if compiled:
            entry["kernel"] += ", torch.compile(dynamic=True)"
        skip = self.skip_reason(mode, precision)
        if skip is None and self.remaining() <= 0:
            skip = ("not-run", f"the deadline of {self.a.deadline_seconds:.0f} s had passed")
        if skip:
            entry["status"], entry["reason"] = skip
            print(f"{precision} {mode}: {skip[0]}: {skip[1]}", flush=True)
            return
        limit = min(self.a.mode_seconds, self.remaining())
        state = {"expired": False}
        try:
            with time_limit(limit) as state:
                self.measure(entry, mode, precision, packed, compiled, check_only)
        except Exception as e:  # noqa: BLE001 - the mode is reported, the others go on
            expired = state["expired"] or isinstance(e, Expired)
            entry["status"] = "timeout" if expired else "error"
            entry["reason"] = (f"over --mode-seconds {limit:.0f}" if expired
                               else f"{type(e).__name__}: {e}")[:2000]
            print(f"{precision} {mode}: {entry['status'].upper()}: {entry['reason']}",
                  file=sys.stderr, flush=True)
        finally:
            self.clean()

    def measure(self, entry, mode, precision, packed, compiled, check_only):
        set_tf32(precision)
        kernel = "sdpa-loop" if check_only else "varlen"
        model = self.model(precision, esm_packed.register(kernel) if packed else None)
        if compiled:
            model = torch.compile(model, dynamic=True)
        batches = self.packed if packed else self.padded
        reset_peak(self.device)
        first, outputs = one_pass(model, batches, self.device, keep=True)
        entry["first_pass_seconds"] = first
        entry["first_pass_peak_memory_gib"] = peak_gib(self.device)
        if self.reference is not None:
            check = compare(states_of(outputs, batches, packed), self.reference)
            calibration = None if mode == "eager" else self.calibration.get(precision)
            if mode != "eager" and calibration is None:
                calibration = self.calibrate(precision)
            entry["check"] = judge(check, precision, calibration)
            if mode == "eager" and check.get("held"):
                self.calibration[precision] = check
        del outputs
        if "check" in entry and not entry["check"]["held"]:
            entry["status"] = "invalid"
            entry["reason"] = "disagrees with HF FP32: " + describe(entry["check"])
            print(f"{precision} {mode}: INVALID, not timed: {entry['reason']}",
                  file=sys.stderr, flush=True)
            return
        if check_only:
            entry["status"] = "check-only"
            entry["reason"] = "the packing checked on the CPU (sdpa-loop); no speed figure"
            entry.pop("first_pass_seconds")
            entry.pop("first_pass_peak_memory_gib")
            print(f"{precision} {mode}: check held ({describe(entry['check'])}); "
                  f"CPU: not timed", flush=True)
            return
        reset_peak(self.device)
        graphs = compiled_graphs()
        passes = [one_pass(model, batches, self.device)[0] for _ in range(self.a.repeat)]
        best = min(passes)
        entry.update(status="ok", best_seconds=best, pass_seconds=passes,
                     tokens_per_second=self.tokens / best, peak_memory_gib=peak_gib(self.device))
        if self.a.profile_pass and self.cuda:
            # The same pass again, bounded for a profiler that starts off (ncu
            # --profile-from-start off): the kernels of exactly one warm pass.
            torch.cuda.profiler.start()
            try:
                entry["profiled_pass_seconds"] = one_pass(model, batches, self.device)[0]
            finally:
                torch.cuda.profiler.stop()
        if compiled:
            # Every shape was seen in the first pass: a warm pass that compiles is no warm pass.
            entry["graphs_compiled_in_warm_passes"] = compiled_graphs() - graphs
            if entry["graphs_compiled_in_warm_passes"]:
                print(f"{precision} {mode}: warning: the warm passes compiled "
                      f"{entry['graphs_compiled_in_warm_passes']} graphs", file=sys.stderr)
        if "check" not in entry:
            entry["reason"] = "not checked: " + self.reference_info.get("error", "no reference")
        peak = entry["peak_memory_gib"]
        print(f"{precision} {mode}: {self.tokens / best:,.0f} tokens/s (first pass {first:.2f} s, "
              f"best of {len(passes)} {best:.3f} s" +
              (f", peak {peak:.1f} GiB" if peak is not None else "") + ")" +
              (f"; check held: {describe(entry['check'])}" if "check" in entry else ""),
              flush=True)
        if mode == "eager":
            self.report["rows"].append({
                "precision": precision, "tokens_per_second": entry["tokens_per_second"],
                "first_pass_seconds": first, "peak_memory_gib": peak})

    def calibrate(self, precision):
        """eager's check at `precision` when eager mode was not asked for (untimed)."""
        model = self.model(precision)
        _, outputs = one_pass(model, self.padded, self.device, keep=True)
        check = compare(states_of(outputs, self.padded, False), self.reference)
        del model, outputs
        if "error" in check or check["non_finite_sequences"]:
            raise RuntimeError(f"eager {precision} cannot calibrate the check: {describe(check)}")
        self.calibration[precision] = check
        return check


def main():
    a = parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if str(a.device).startswith("cuda") and torch.device(a.device).index is not None:
        torch.cuda.set_device(torch.device(a.device))  # the name and the peaks are of this card
    with open(a.batches) as f:
        plan = json.load(f)
    bench = Bench(a, plan)
    print(f"torch {torch.__version__}, transformers {transformers.__version__} on "
          f"{bench.report['device']}: {bench.tokens} tokens, {len(bench.padded)} padded batches, "
          f"{bench.report['packed_batches']} packed; modes {','.join(a.modes)}; precisions "
          f"{','.join(a.precisions)}", flush=True)
    bench.fp32_reference()
    bench.write()
    for phase in PHASES:
        for precision in a.precisions:
            for mode in phase:
                if mode in a.modes:
                    bench.run(mode, precision)
                    bench.write()
    bad = [e for e in bench.entries if e["status"] not in ("ok", "check-only", "skipped")]
    for e in bad:
        print(f"FAILED {e['precision']} {e['mode']}: {e['status']}: {e['reason']}",
              file=sys.stderr, flush=True)
    sys.exit(1 if bad or "error" in bench.reference_info else 0)


if __name__ == "__main__":
    main()
