"""ONNX Runtime int8 quantization of an exported graph (`onnxruntime.quantization`).

- `int8` (the default of `--quantize int8`): `MatMulNBitsQuantizer` with 8 bits, blocks of 32 weights along the input
  dimension, symmetric, accuracy level 4: weights stored as int8 with one scale per block, activations quantized to
  int8 per block at run time inside the kernel (int8 dot products). Measured on SmolLM2-135M: KL 0.005 nats/token to
  fp32 on WikiText-2 (docs/benchmarks.md).
- `int8-dynamic`: `quantize_dynamic` (MatMulInteger / DynamicQuantizeMatMul), int8 weights with one scale per output
  channel, uint8 activations with ONE scale per call. Fastest on GPT-2, but an activation outlier sets the scale for a
  whole row block: on SmolLM2-135M it costs 0.6 nats/token of KL, so it is not the default.

Before quantizing, `fold_transposed_weights` turns Transpose(initializer) -> MatMul into a transposed initializer:
the exporter writes a tied output layer as Transpose(tok_embed.weight) + MatMul, which the quantizers skip (B is
not a constant), leaving the largest matrix of a small model in fp32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

METHODS = ("int8", "int8-dynamic")


def fold_transposed_weights(model) -> int:
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    folded = 0
    for n in list(g.node):
        if n.op_type != "Transpose" or n.input[0] not in inits:
            continue
        perm = [list(a.ints) for a in n.attribute if a.name == "perm"]
        if perm and perm[0] != [1, 0]:
            continue
        w = numpy_helper.to_array(inits[n.input[0]])
        t = numpy_helper.from_array(np.ascontiguousarray(w.T), name=n.output[0] + "_folded")
        g.initializer.append(t)
        for c in consumers.get(n.output[0], []):
            for k, name in enumerate(c.input):
                if name == n.output[0]:
                    c.input[k] = t.name
        g.node.remove(n)
        folded += 1
    return folded


def quantize_graph(src: Path, dst: Path, method: str = "int8") -> None:
    """Quantize the graph at `src` (with its external data) into `dst` (weights in dst + '.data')."""
    import logging

    before = logging.root.manager.disable  # the quantizers log every node at INFO (and a pre-processing hint)
    logging.disable(logging.WARNING)
    try:
        _quantize(src, dst, method)
    finally:
        logging.disable(before)


def _quantize(src: Path, dst: Path, method: str) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    model = onnx.load(str(src))
    fold_transposed_weights(model)
    if method == "int8-dynamic":
        quantize_dynamic(model, str(dst), op_types_to_quantize=["MatMul"], per_channel=True,
                         weight_type=QuantType.QInt8, use_external_data_format=True,
                         extra_options={"MatMulConstBOnly": True,  # ONNX's shape inference cannot type the
                                        "DefaultTensorType": onnx.TensorProto.FLOAT})  # outputs of ORT's fused ops
        return
    config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=4, bits=8)
    q = MatMulNBitsQuantizer(model, bits=8, block_size=32, is_symmetric=True, accuracy_level=4, algo_config=config)
    q.process()
    onnx.save_model(q.model.model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=dst.name + ".data", size_threshold=1024)


__all__ = ["METHODS", "quantize_graph", "fold_transposed_weights"]
