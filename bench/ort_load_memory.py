#!/usr/bin/env python3
"""How many copies of its weights ONNX Runtime holds when it loads a model, by loading path.

Builds, in a temporary folder, a chain of 16 linear layers (32 weights of 2048 x 4096 float32:
1 GiB) in two layouts: `matmul`, weights stored [in, out] and fed to MatMul; `transpose`,
weights stored [out, in] (nn.Linear's layout, what pipe exports) behind a Transpose, which
ONNX Runtime folds into a new initializer. Each is saved inline (one model.onnx) and with
external data (4 KiB-aligned, as pipe's exports). Each variant then loads in a fresh process
(onnxruntime, CPU provider, 2 threads) and runs one batch; one JSON line per variant:
peak resident memory after loading and after the run (VmHWM), and what is resident at the
end, file-backed (mapped) and anonymous (heap).

    python3 bench/ort_load_memory.py            # needs numpy, onnx, onnxruntime; ~3 GB of /tmp
"""

import json
import os
import subprocess
import sys
import tempfile

LAYERS, WIDTH = 16, 2048


def build(folder):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    for layout in ("matmul", "transpose"):
        nodes, inits, x = [], [], "x"
        for i in range(LAYERS):
            for name, (n_in, n_out) in ((f"w{i}", (WIDTH, 2 * WIDTH)), (f"v{i}", (2 * WIDTH, WIDTH))):
                shape = (n_in, n_out) if layout == "matmul" else (n_out, n_in)
                w = np.random.default_rng(len(inits)).standard_normal(shape, dtype=np.float32) * 0.01
                inits.append(numpy_helper.from_array(w, name))
                if layout == "transpose":
                    nodes.append(helper.make_node("Transpose", [name], [name + "_t"], perm=[1, 0]))
                    name += "_t"
                nodes.append(helper.make_node("MatMul", [x, name], [name + "_y"]))
                x = name + "_y"
        graph = helper.make_graph(nodes, layout, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", WIDTH])],
                                  [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=9)
        onnx.save(model, os.path.join(folder, f"{layout}-inline.onnx"))
        onnx.save(model, os.path.join(folder, f"{layout}-external.onnx"), save_as_external_data=True,
                  all_tensors_to_one_file=True, location=f"{layout}-external.onnx.data", size_threshold=1024)


def status():
    text = open("/proc/self/status").read()
    return {k: int(text.split(k + ":")[1].split()[0]) * 1024 for k in ("VmHWM", "RssFile", "RssAnon")}


def load(path, config):
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    for key, value in config.items():
        opts.add_session_config_entry(key, value)
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    loaded = status()["VmHWM"]
    session.run(None, {"x": np.ones((4, WIDTH), np.float32)})
    end = status()
    print(json.dumps({"model": os.path.basename(path), "config": config,
                      "weights_bytes": LAYERS * 2 * WIDTH * 2 * WIDTH * 4,
                      "peak_after_load": loaded, "peak_after_run": end["VmHWM"],
                      "resident_file": end["RssFile"], "resident_anon": end["RssAnon"]}))


def main():
    if len(sys.argv) > 1:
        return load(sys.argv[1], json.loads(sys.argv[2]))
    with tempfile.TemporaryDirectory() as folder:
        build(folder)
        for layout in ("matmul", "transpose"):
            for where in ("inline", "external"):
                for config in ({}, {"session.disable_prepacking": "1"}):
                    path = os.path.join(folder, f"{layout}-{where}.onnx")
                    subprocess.run([sys.executable, __file__, path, json.dumps(config)], check=True)


if __name__ == "__main__":
    main()
