"""onnxruntime int8 variants explored for issue 6 (``ort_int8_opt`` in bench/README.md, model).

Each variant is built from the artifact's fp32 ONNX model, written under ``.cache/ort-variants/``
keyed by the fp32 model's checksum, and gated against fp32 by the bench (max |diff| and argmax
agreement are reported next to every latency).

Graph rewrites keep the published architecture and its arithmetic: average pooling is linear
and per-channel, so ``Concat(AvgPool(a), AvgPool(b), AvgPool(c)) == AvgPool(Concat(a, b, c))``
exactly; the rewrite only turns three pooling kernels over 32 channels into one over 96.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from training.export import FAST_OP_TYPES, pools_to_depthwise
from worker.artifact import sha256_file

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "ort-variants"

# quantized op types: the artifact default, and the one that also keeps pooling/concat in uint8
OPS_DEFAULT = ("Conv", "Gemm", "MatMul")
OPS_ALL = FAST_OP_TYPES


def pool_after_concat(src: str | Path, dst: str | Path) -> Path:
    """Move the three input paths' pooling after their concatenation (one pool, 96 channels)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(src))
    nodes = list(model.graph.node)
    producers = {o: n for n in nodes for o in n.output}
    concat = next(n for n in nodes if n.op_type == "Concat")
    pools = [producers[i] for i in concat.input]
    if not all(p.op_type == "AveragePool" for p in pools):
        raise ValueError("Concat inputs are not all AveragePool outputs")
    attrs = {a.name: helper.get_attribute_value(a) for a in pools[0].attribute}
    if any({a.name: helper.get_attribute_value(a) for a in p.attribute} != attrs for p in pools):
        raise ValueError("the paths pool differently")
    pre = concat.output[0] + "_prepool"
    new_concat = helper.make_node("Concat", [p.input[0] for p in pools], [pre],
                                  name=concat.name, axis=1)
    pool = helper.make_node("AveragePool", [pre], [concat.output[0]],
                            name=concat.name + "/AveragePool", **attrs)
    out = []
    for n in nodes:
        if n in pools:
            continue
        if n is concat:
            out += [new_concat, pool]
        else:
            out.append(n)
    del model.graph.node[:]
    model.graph.node.extend(out)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return Path(dst)


def quantize(fp32_path: str | Path, out_path: str | Path, calibration: np.ndarray, *,
             op_types=OPS_DEFAULT, fmt: str = "qdq", per_channel: bool = True,
             nodes_to_exclude: list[str] | None = None) -> Path:
    """Static int8 like ``training.export.quantize_int8`` with the knobs explored here."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from training.export import _Calibration

    with tempfile.TemporaryDirectory() as tmp:
        prepped = Path(tmp) / "prepped.onnx"
        quant_pre_process(str(fp32_path), str(prepped), skip_symbolic_shape=True)
        quantize_static(
            str(prepped), str(out_path), _Calibration(calibration),
            quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
            per_channel=per_channel, activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8, op_types_to_quantize=list(op_types),
            nodes_to_exclude=list(nodes_to_exclude or []),
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
    return Path(out_path)


def path_conv_names(fp32_path: str | Path) -> list[str]:
    """Names of the three single-input-channel path convolutions."""
    import onnx

    model = onnx.load(str(fp32_path))
    return [n.name for n in model.graph.node if n.op_type == "Conv"][:3]


VARIANTS = {
    # name: (rewrite pool-after-concat, quantize kwargs); "fp32"/"int8" are the artifact's files
    "int8_qop": (False, {"fmt": "qop"}),
    "int8_qdq_allops": (False, {"op_types": OPS_ALL}),
    "int8_qdq_allops_concatpool": (True, {"op_types": OPS_ALL}),
    "int8_qdq_allops_concatpool_fp32paths": (True, {"op_types": OPS_ALL, "exclude_paths": True}),
    "fp32_concatpool": (True, None),
}


def build_variants(fp32_path: str | Path, calibration: np.ndarray, names=None,
                   cache: Path = CACHE) -> dict[str, Path]:
    key = sha256_file(fp32_path)[:16]
    cache.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, (rewrite, qargs) in VARIANTS.items():
        if names is not None and name not in names:
            continue
        path = cache / f"{key}.{name}.onnx"
        if not path.is_file():
            src = Path(fp32_path)
            with tempfile.TemporaryDirectory() as tmp:
                if rewrite == "dw":
                    src = pools_to_depthwise(src, Path(tmp) / "rewritten.onnx")
                elif rewrite:
                    src = pool_after_concat(src, Path(tmp) / "rewritten.onnx")
                tmp_out = path.with_suffix(".tmp")
                if qargs is None:
                    import shutil
                    shutil.copyfile(src, tmp_out)
                else:
                    qargs = dict(qargs)
                    if qargs.pop("exclude_paths", False):
                        qargs["nodes_to_exclude"] = path_conv_names(src)
                    quantize(src, tmp_out, calibration, **qargs)
                tmp_out.rename(path)
        out[name] = path
    return out


VARIANTS.update({
    "int8_qdq_dwpool": ("dw", {}),
    "int8_qdq_allops_dwpool": ("dw", {"op_types": OPS_ALL}),
    "fp32_dwpool": ("dw", None),
})
