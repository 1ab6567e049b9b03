#!/usr/bin/env python3
"""Whether ONNX Runtime's uint8 x int8 product saturates on this CPU, and what the uint8 x uint8
product pipe uses instead (`Int8Storage::Offset`) costs.

`DynamicQuantizeMatMul` quantizes the activations to uint8 and multiplies them by the int8
weights. On x86 CPUs without VNNI its kernel adds pairs of uint8 x int8 products into
saturating 16-bit sums (`vpmaddubsw`): weights past +-64 come out wrong there. Prints, per
weight range, the largest error of each storage against the exact product (relative to the
product's largest value; the activation rounding alone is under 1%), then the time of one
`[512, 768] x [768, 768]` product in each storage and in f32, on 2 threads.

    python3 bench/int8_products.py

Needs: python3 -m pip install onnx onnxruntime==1.31.1 numpy
"""
import json
import subprocess
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

M, K, N = 512, 768, 768


def session(b_type: int, zero_point: bool) -> ort.InferenceSession:
    """`y = DynamicQuantizeMatMul(a, b, s[, z])`, or `MatMul(a, b)` for an f32 `b`."""
    inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, [M, K]),
              helper.make_tensor_value_info("b", b_type, [K, N])]
    init = []
    if b_type == TensorProto.FLOAT:
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
    else:
        inputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, [N]))
        names = ["a", "b", "s"]
        if zero_point:
            init.append(helper.make_tensor("z", b_type, [], [128]))
            names.append("z")
        node = helper.make_node("DynamicQuantizeMatMul", names, ["y"], domain="com.microsoft")
    graph = helper.make_graph([node], "product", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=init)
    model = helper.make_model(graph, ir_version=9, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options)


def millis(run, rounds: int = 30) -> float:
    run()
    start = time.perf_counter()
    for _ in range(rounds):
        run()
    return (time.perf_counter() - start) / rounds * 1e3


def main() -> None:
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((l.split(":", 1)[1].strip() for l in cpu.splitlines() if l.startswith("Model name")), "?")
    flags = next((l for l in cpu.splitlines() if l.startswith("Flags")), "")
    vnni = [f for f in ("avx512_vnni", "avx_vnni") if f in flags.split()]
    print(json.dumps({"cpu": model, "vnni": vnni}))
    signed, offset, f32 = (session(TensorProto.INT8, False), session(TensorProto.UINT8, True),
                           session(TensorProto.FLOAT, False))
    rng = np.random.default_rng(0)
    a = rng.normal(size=(M, K)).astype(np.float32)
    ones = np.ones(N, np.float32)
    for bound in (127, 100, 80, 64):
        q = rng.integers(-bound, bound + 1, size=(K, N))
        exact = a.astype(np.float64) @ q
        scale = np.abs(exact).max()
        y_signed = signed.run(None, {"a": a, "b": q.astype(np.int8), "s": ones})[0]
        y_offset = offset.run(None, {"a": a, "b": (q + 128).astype(np.uint8), "s": ones})[0]
        print(json.dumps({"weights_within": bound,
                          "uint8_x_int8_error": round(float(np.abs(y_signed - exact).max() / scale), 4),
                          "uint8_x_uint8_error": round(float(np.abs(y_offset - exact).max() / scale), 4)}))
    q = rng.integers(-127, 128, size=(K, N))
    feeds_signed = {"a": a, "b": q.astype(np.int8), "s": ones}
    feeds_offset = {"a": a, "b": (q + 128).astype(np.uint8), "s": ones}
    feeds_f32 = {"a": a, "b": q.astype(np.float32)}
    print(json.dumps({"shape": [M, K, N],
                      "uint8_x_int8_ms": round(millis(lambda: signed.run(None, feeds_signed)), 2),
                      "uint8_x_uint8_ms": round(millis(lambda: offset.run(None, feeds_offset)), 2),
                      "f32_ms": round(millis(lambda: f32.run(None, feeds_f32)), 2)}))


if __name__ == "__main__":
    main()
