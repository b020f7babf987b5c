#!/usr/bin/env python3
"""A real third-party Open Inference Protocol (KServe v2) server for esmfuzz's tests: Seldon
MLServer running a tiny custom model, `EsmForwarder`, that forwards each inference request's
BYTES strings to a protocol-1 deployment (docs/PROTOCOL.md) and answers its pooled rows as the
FP32 output `pooled` [N, hidden].

Launcher (writes a temporary model repository, starts `mlserver start` on it, waits until the
model is ready, prints `listening on http://127.0.0.1:PORT` on stdout, runs until SIGTERM):

    /tmp/venv-mlserver/bin/python scripts/oip_forwarder.py \
        --forward http://127.0.0.1:PORT1/ [--port 0] [--name esm2] [--adaptive-batch 8]
    esmfuzz fuzz --weights W --deployment oip://127.0.0.1:PORT/esm2

--forward is a protocol-1 HTTP URL, e.g. the one `esmfuzz serve --listen 127.0.0.1:0`
prints. --port 0 picks free ports (HTTP, gRPC and metrics). --adaptive-batch N turns on
MLServer's adaptive batching (max_batch_size N, max_batch_time --batch-time s): requests
that arrive together are regrouped into one forwarded batch, as Triton's dynamic batcher does.

Model (loaded by MLServer as `oip_forwarder.EsmForwarder`, the forward URL taken from the
environment variable ESMFUZZ_FORWARD_URL). Needs `pip install mlserver` (1.7.1 here).
"""
import json
import os
import sys
import urllib.request

FORWARD_ENV = "ESMFUZZ_FORWARD_URL"
INPUT = os.environ.get("ESMFUZZ_OIP_INPUT", "sequences")
OUTPUT = os.environ.get("ESMFUZZ_OIP_OUTPUT", "pooled")


def post_line(url, message, timeout=600):
    """One protocol-1 line POSTed, one line back (Python's json reads NaN/Infinity/null)."""
    request = urllib.request.Request(url, data=json.dumps(message).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read().decode())


try:
    from mlserver import MLModel
except ImportError:  # the launcher alone does not need it
    MLModel = object


class EsmForwarder(MLModel):
    async def load(self) -> bool:
        import asyncio

        self.url = os.environ[FORWARD_ENV]
        self.handshake = await asyncio.to_thread(post_line, self.url, {"hello": 1})
        self.hidden = int(self.handshake["hidden"])
        self.next_id = 1
        return True

    async def predict(self, payload):
        import asyncio
        import math

        from mlserver.codecs import StringCodec
        from mlserver.errors import InferenceError
        from mlserver.types import InferenceResponse, ResponseOutput

        inputs = [i for i in payload.inputs if i.name == INPUT]
        if len(inputs) != 1:
            raise InferenceError(f"expected one BYTES input named '{INPUT}'")
        strings = StringCodec.decode_input(inputs[0])  # [N] or [N, 1]: a flat list of N
        rid, self.next_id = self.next_id, self.next_id + 1
        request = {"id": rid, "sequences": [{"name": f"oip-{rid}-{k}", "residues": s}
                                            for k, s in enumerate(strings)]}
        print(f"oip_forwarder: OIP request {payload.id} -> protocol-1 call {rid}, "
              f"{len(strings)} sequences", file=sys.stderr, flush=True)
        reply = await asyncio.to_thread(post_line, self.url, request)
        if "error" in reply:
            raise InferenceError(f"the deployment refused: {reply['error']}")
        rows = reply.get("pooled")
        if rows is None:
            raise InferenceError("the deployment sent no \"pooled\" rows")
        flat = [math.nan if v is None else float(v) for row in rows for v in row]
        if len(rows) != len(strings) or len(flat) != len(strings) * self.hidden:
            raise InferenceError(f"the deployment sent {len(rows)} rows of "
                                 f"{len(flat)} values for {len(strings)} sequences")
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[ResponseOutput(name=OUTPUT, shape=[len(strings), self.hidden],
                                    datatype="FP32", data=flat)],
        )


# ---------------------------------------------------------------- launcher


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    import argparse
    import shutil
    import signal
    import subprocess
    import tempfile
    import time

    p = argparse.ArgumentParser(description="MLServer forwarding OIP to a protocol-1 deployment")
    p.add_argument("--forward", default=os.environ.get(FORWARD_ENV),
                   help=f"protocol-1 HTTP URL (default: ${FORWARD_ENV})")
    p.add_argument("--port", type=int, default=8080, help="HTTP port (0: a free one)")
    p.add_argument("--grpc-port", type=int, default=0, help="gRPC port (0: a free one)")
    p.add_argument("--metrics-port", type=int, default=0, help="metrics port (0: a free one)")
    p.add_argument("--name", default="esm2", help="the model's name: /v2/models/NAME")
    p.add_argument("--adaptive-batch", type=int, default=0,
                   help="MLServer adaptive batching: max_batch_size (0: off)")
    p.add_argument("--batch-time", type=float, default=0.05, help="max_batch_time, seconds")
    p.add_argument("--mlserver", default=os.path.join(os.path.dirname(sys.executable), "mlserver"))
    p.add_argument("--ready-timeout", type=float, default=120)
    a = p.parse_args()
    if not a.forward:
        p.error(f"give --forward URL or set {FORWARD_ENV}")
    if not os.path.exists(a.mlserver) and not shutil.which(a.mlserver):
        sys.exit(f"oip_forwarder: no mlserver at {a.mlserver} (pip install mlserver)")
    handshake = post_line(a.forward, {"hello": 1})
    hidden = int(handshake["hidden"])
    ports = [a.port or free_port(), a.grpc_port or free_port(), a.metrics_port or free_port()]
    repo = tempfile.mkdtemp(prefix="oip-forwarder-")
    with open(os.path.join(repo, "settings.json"), "w") as f:
        json.dump({"host": "127.0.0.1", "http_port": ports[0], "grpc_port": ports[1],
                   "metrics_port": ports[2], "parallel_workers": 0, "debug": False}, f)
    model = {
        "name": a.name,
        "implementation": "oip_forwarder.EsmForwarder",
        "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, hidden]}],
        "parameters": {"version": "1", "extra": {"forward": a.forward,
                                                  "forward_model": handshake.get("model")}},
    }
    if a.adaptive_batch > 0:
        model["max_batch_size"] = a.adaptive_batch
        model["max_batch_time"] = a.batch_time
    with open(os.path.join(repo, "model-settings.json"), "w") as f:
        json.dump(model, f)
    env = dict(os.environ, **{FORWARD_ENV: a.forward})
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = here + os.pathsep + env.get("PYTHONPATH", "")
    # MLServer logs to stdout: send it to our stderr, keep our stdout for the address line.
    def die_with_parent():  # Linux: SIGTERM to MLServer if this launcher is SIGKILLed
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass

    child = subprocess.Popen([a.mlserver, "start", repo], env=env, cwd=repo,
                             stdout=sys.stderr, stderr=sys.stderr, start_new_session=True,
                             preexec_fn=die_with_parent)

    # The handler only records the signal: the main loop below stops the child (waiting on a
    # Popen inside a handler that interrupted another wait on it would deadlock).
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))

    def finish(message=None):
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
            deadline = time.time() + 10
            while child.poll() is None and time.time() < deadline:
                time.sleep(0.1)
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        shutil.rmtree(repo, ignore_errors=True)
        sys.exit(message or 0)

    ready = f"http://127.0.0.1:{ports[0]}/v2/models/{a.name}/ready"
    deadline = time.time() + a.ready_timeout
    while not stopping:
        if child.poll() is not None:
            finish(f"oip_forwarder: mlserver exited ({child.returncode}) before it was ready")
        try:
            with urllib.request.urlopen(ready, timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.time() > deadline:
            finish(f"oip_forwarder: {ready} not ready after {a.ready_timeout} s")
        time.sleep(0.2)
    if not stopping:
        print(f"listening on http://127.0.0.1:{ports[0]}", flush=True)
        print(f"oip_forwarder: OIP model '{a.name}' at http://127.0.0.1:{ports[0]}/v2/models/"
              f"{a.name} -> {a.forward} (hidden {hidden}, adaptive batch {a.adaptive_batch})",
              file=sys.stderr, flush=True)
    while not stopping and child.poll() is None:
        time.sleep(0.2)
    if not stopping:
        finish(f"oip_forwarder: mlserver exited ({child.returncode})")
    finish()


if __name__ == "__main__":
    main()
