"""ONNX export and int8 static quantization (onnxruntime), with an agreement gate.

int8 recipe (:func:`quantize_model`, what the artifact and every CV fold ship):

1. average poolings become the identical depthwise convolutions (onnxruntime's int8
   AveragePool is slow; its depthwise QLinearConv is fast), the one ceil-mode pooling that
   overhangs its input by a row after an edge ``Pad`` (exact);
2. BatchNorm folds into the convolutions (onnxruntime's quantization pre-processing);
3. QDQ static quantization of Conv/Gemm/Pad: per-channel symmetric int8 weights, uint8
   activations calibrated (MinMax) on training windows;
4. the input stage (three convolutions on the MFCCs and their poolings) stays fp32: quantizing
   the MFCC input to uint8 (step ~0.08 over +-10) flipped 5-22 % of a fold's predictions, and
   with the poolings in fp32 too the int8 part starts at the concatenation, one NHWC uint8
   block without dequantize/quantize round trips (``recipe="input-convs-fp32"`` is the
   previous recipe, only the convolutions in fp32);
5. (:func:`quantize_selected`) four seeded calibration sets, keeping the int8 model that agrees
   best with fp32 on augmented training windows.

Models trained with ``--qat-epochs`` (:mod:`training.qat`) arrive here already fine-tuned to
agree with their int8 twin.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

from training.config import INT8_RECIPES
from training.model import Probabilities

INPUT_NAME = "features"
OUTPUT_NAME = "scores"
OPSET = 17


class QuantizationGateError(RuntimeError):
    """int8 model disagrees with its fp32 source more than allowed."""


def export_onnx(model: torch.nn.Module, path: str | Path, input_shape: tuple[int, int],
                fp16: bool = False) -> Path:
    """Export ``Probabilities(model)``: (B, T, F) float32 features -> (B, C) softmax scores."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = Probabilities(model).eval()
    dummy = torch.zeros(1, *input_shape)
    torch.onnx.export(wrapped, (dummy,), str(path), input_names=[INPUT_NAME],
                      output_names=[OUTPUT_NAME], opset_version=OPSET,
                      dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                      do_constant_folding=True, dynamo=False)
    plain_pools(path, path)
    if fp16:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model16 = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
        onnx.save(model16, str(path))
    return path


def bake_temperature(model: torch.nn.Module, temperature: float) -> torch.nn.Module:
    """A copy of ``model`` whose logits are divided by ``temperature``: the dense layer's
    weights and bias scaled by 1/T, so the exported softmax gives calibrated scores with no
    extra graph op (and the same argmax)."""
    import copy

    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, not {temperature}")
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        model.classifier.weight.div_(temperature)
        model.classifier.bias.div_(temperature)
    return model


class _Calibration:
    """onnxruntime CalibrationDataReader over a feature array."""

    def __init__(self, features: np.ndarray, batch: int = 16, input_name: str = INPUT_NAME) -> None:
        self.input_name = input_name
        self.batches = [features[i : i + batch].astype(np.float32) for i in range(0, len(features), batch)]
        self.i = 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return {self.input_name: self.batches[self.i - 1]}

    def rewind(self) -> None:
        self.i = 0


def quantize_int8(fp32_path: str | Path, int8_path: str | Path, calibration: np.ndarray,
                  method: str = "minmax", op_types: tuple[str, ...] = ("Conv", "Gemm", "MatMul"),
                  nodes_to_exclude: list[str] | None = None, input_name: str = INPUT_NAME,
                  pools_as_depthwise: bool = False, edge_pad: bool = False,
                  keep_pools=()) -> Path:
    """Static QDQ int8 of Conv/Gemm, calibrated on ``calibration`` windows (N, T, F).

    ``op_types``/``nodes_to_exclude``/``input_name`` let other graphs (the fused waveform model,
    :mod:`training.fused`) quantize only their model part; the defaults are the plain model's.

    ``pools_as_depthwise``: first rewrite every average pooling that tiles its input exactly as
    the identical depthwise convolution (:func:`pools_to_depthwise`). With
    ``op_types=FAST_OP_TYPES`` that graph runs about 1.7x faster than the default at batch 1 on
    one AVX2 core (bench/README.md); off by default so the default export is unchanged.
    ``keep_pools``: names of poolings left as they are (those the recipe keeps in fp32).
    """
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    int8_path = Path(int8_path)
    with tempfile.TemporaryDirectory() as tmp:
        prepped = Path(tmp) / "prepped.onnx"
        if pools_as_depthwise:
            fp32_path = pools_to_depthwise(fp32_path, Path(tmp) / "dwpool.onnx", edge_pad=edge_pad,
                                           keep=keep_pools)
        quant_pre_process(str(fp32_path), str(prepped), skip_symbolic_shape=True)
        quantize_static(
            str(prepped), str(int8_path), _Calibration(calibration, input_name=input_name),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            op_types_to_quantize=list(op_types), nodes_to_exclude=list(nodes_to_exclude or []),
            calibrate_method={"minmax": CalibrationMethod.MinMax,
                              "percentile": CalibrationMethod.Percentile,
                              "entropy": CalibrationMethod.Entropy}[method],
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        )
    return int8_path


def input_conv_names(onnx_path: str | Path) -> list[str]:
    """Conv nodes fed by the graph's input, directly or through shape ops and the optional
    input normalisation (ReduceMean, Sub)."""
    import onnx

    return _input_convs(onnx.load(str(onnx_path)).graph)


def _input_convs(graph) -> list[str]:
    fed = {graph.input[0].name}
    names = []
    for node in graph.node:
        if not fed.intersection(node.input):
            continue
        if node.op_type in ("Unsqueeze", "Reshape", "Identity", "ReduceMean", "Sub"):
            fed.update(node.output)
        elif node.op_type == "Conv":
            names.append(node.name)
    return names


def input_stage_names(onnx_path: str | Path) -> list[str]:
    """:func:`input_conv_names` plus every node after them up to the concatenation (activations,
    and the average poolings also under the names :func:`pools_to_depthwise` gives them): the
    whole input stage."""
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    convs = _input_convs(graph)
    fed = {out for node in graph.node if node.name in convs for out in node.output}
    rest = []
    for node in graph.node:
        if not fed.intersection(node.input) or node.op_type == "Concat":
            continue
        fed.update(node.output)
        rest += [node.name, node.name + "/dw"] if node.op_type == "AveragePool" else [node.name]
    return convs + rest


class Recipe(NamedTuple):
    op_types: tuple[str, ...]   # op types quantized ("Relu": each ReLU with its convolution)
    fp32_nodes: Callable        # fp32 ONNX path -> names of the nodes left fp32
    edge_pad: bool              # the ceil-mode pool as an edge Pad + depthwise conv
    fp32_pools: bool            # the fp32 input stage's poolings stay AveragePool
    uint8_pad: bool             # the edge Pad works on the uint8 tensor (pad_on_uint8)
    summary: str                # one line for the artifact's manifest

    @property
    def fused_relu(self) -> bool:
        return "Relu" in self.op_types


_FUSED = ("Conv", "Gemm", "MatMul", "Pad", "Relu")
_RECIPES = {
    "input-stage-fp32": Recipe(
        ("Conv", "Gemm", "MatMul", "Pad"), input_stage_names, True, False, False,
        "exact average pools as depthwise convs, BN folded, input convs kept fp32"),
    "fused-relu": Recipe(
        _FUSED, input_stage_names, True, False, False,
        "exact average pools as depthwise convs, BN folded, input stage kept fp32, each ReLU "
        "rounded with its convolution"),
    "input-convs-fp32": Recipe(
        ("Conv", "Gemm", "MatMul"), input_conv_names, False, False, False,
        "exact average pools as depthwise convs, BN folded, input convs kept fp32"),
    "fused-relu-fp32-pools": Recipe(
        _FUSED, input_stage_names, True, True, True,
        "BN folded, input stage (convs and average pools) kept fp32, the other average pools as "
        "exact depthwise convs, each ReLU rounded with its convolution, the edge pad on uint8"),
}
assert tuple(_RECIPES) == INT8_RECIPES, "training.config.INT8_RECIPES names these recipes"


def int8_recipe(name: str) -> Recipe:
    """The int8 recipe ``name`` (:data:`training.config.INT8_RECIPES`); a clear error otherwise."""
    if name not in _RECIPES:
        raise ValueError(f"unknown int8 recipe {name!r}; choose from {', '.join(INT8_RECIPES)}")
    return _RECIPES[name]


def quantize_model(fp32_path: str | Path, int8_path: str | Path, calibration: np.ndarray,
                   recipe: str = INT8_RECIPES[0]) -> Path:
    """The shipped int8 recipe (module docstring).

    ``input-stage-fp32`` (shipped): the whole input stage -- the three convolutions and their
    poolings -- stays fp32, so the first rounding is at the concatenation; the 23 -> 12 ceil-mode
    pooling becomes an edge ``Pad`` plus a depthwise convolution, so the int8 part has no
    pooling kernel and no dequantize/quantize round trip left around one.
    ``fused-relu``: the same, and each ReLU is quantized with the convolution before it (its
    range becomes the convolution's output range: one rounding, no dequantize/quantize pair).
    ``input-convs-fp32`` (the previous recipe): only the three input convolutions stay fp32.
    ``fused-relu-fp32-pools``: ``fused-relu`` with two exact changes to the graph's plumbing:
    the fp32 input stage's poolings stay ``AveragePool`` (onnxruntime's blocked-layout pooling;
    as depthwise convolutions they only paid off in int8) and the edge ``Pad`` works on the
    uint8 tensor (:func:`pad_on_uint8`; it repeats values, so the dequantize/quantize pair
    around it, with one scale, changed nothing). Its int8 fine-tuning simulates exactly its
    roundings (:class:`training.qat.QuantSim`)."""
    r = int8_recipe(recipe)
    excluded = r.fp32_nodes(fp32_path)
    quantize_int8(fp32_path, int8_path, calibration, op_types=r.op_types,
                  nodes_to_exclude=excluded, pools_as_depthwise=True, edge_pad=r.edge_pad,
                  keep_pools=excluded if r.fp32_pools else ())
    if r.uint8_pad:
        pad_on_uint8(int8_path, int8_path)
    return compact_names(int8_path)


def pad_on_uint8(src: str | Path, dst: str | Path) -> Path:
    """Let each ``Pad`` between a ``DequantizeLinear`` and a ``QuantizeLinear`` of the same scale
    and zero point pad the uint8 tensor itself. Exact for a ``Pad`` that only repeats or
    reflects values (modes edge / reflect): every output value is an input value, which the
    pair rounds back to itself. Other pads are left alone."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    drop, rename = set(), {}
    for n in graph.node:
        mode = {a.name: helper.get_attribute_value(a) for a in n.attribute}.get("mode", b"constant")
        if n.op_type != "Pad" or mode not in (b"edge", b"reflect"):
            continue
        dq, after = producer.get(n.input[0]), consumers.get(n.output[0], [])
        if (dq is None or dq.op_type != "DequantizeLinear" or len(after) != 1
                or after[0].op_type != "QuantizeLinear" or n.output[0] in {o.name for o in graph.output}):
            continue
        q = after[0]
        if len(dq.input) < 3 or len(q.input) < 3 or not all(
                a in init and b in init and np.array_equal(init[a], init[b])
                for a, b in zip(dq.input[1:3], q.input[1:3])):
            continue  # another scale or zero point after the Pad (or none given)
        n.input[0] = dq.input[0]
        rename[q.output[0]] = n.output[0]
        drop.add(q.name)
        if len(consumers[dq.output[0]]) == 1:
            drop.add(dq.name)
    kept = [n for n in graph.node if n.name not in drop]
    for n in kept:
        for k, name in enumerate(n.input):
            n.input[k] = rename.get(name, name)
    del graph.node[:]
    graph.node.extend(kept)
    del graph.value_info[:]  # the padded tensor is uint8 now
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return Path(dst)


def quantize_selected(fp32_path: str | Path, int8_path: str | Path, windows: np.ndarray,
                      clean_rows: np.ndarray, check_rows: np.ndarray, seed: int = 0,
                      candidates: int = 4, calib_windows: int = 256,
                      check_windows: int = 2048, recipe: str = INT8_RECIPES[0]) -> tuple[Path, dict]:
    """:func:`quantize_model` with its calibration set chosen on training data only.

    ``candidates`` calibration sets of ``calib_windows`` clean windows (``clean_rows`` of
    ``windows``, seeds ``seed .. seed + candidates - 1``; the first is the single-set recipe's)
    each give an int8 model; the one whose argmax agrees best with fp32 on ``check_windows``
    other training windows (``check_rows``: the augmented variants -- telephone, noise, speed --
    harder than clean speech) is kept. Measured on 20 CV fold models: mean held-out agreement
    98.70 -> 99.00 %, no fold worse than its worst candidate; the test speaker is never used.
    """
    check = windows[np.sort(np.random.default_rng(seed + 123).choice(
        check_rows, size=min(check_windows, len(check_rows)), replace=False))].astype(np.float32)
    p32 = ort_scores(fp32_path, check)
    int8_path = Path(int8_path)
    scores_, best = [], None
    with tempfile.TemporaryDirectory(dir=int8_path.parent) as tmp:
        for k in range(max(1, candidates)):
            rows = np.sort(np.random.default_rng(seed + k).choice(
                clean_rows, size=min(calib_windows, len(clean_rows)), replace=False))
            path = quantize_model(fp32_path, Path(tmp) / f"candidate{k}.onnx",
                                  windows[rows].astype(np.float32), recipe=recipe)
            scores_.append(agreement(p32, ort_scores(path, check)))
            if best is None or scores_[-1] > scores_[best]:
                best = k
        Path(tmp, f"candidate{best}.onnx").replace(int8_path)
    return int8_path, {"recipe": recipe, "candidates": len(scores_), "picked": best, "calibration_windows":
                       min(calib_windows, len(clean_rows)), "check_windows": len(check),
                       "check_agreement": [round(100 * a, 2) for a in scores_]}


def compact_names(path: str | Path) -> Path:
    """Rename nodes and internal tensors to short ids (the exporter's long debug names are
    ~15 KB of a 0.5 MB int8 file); graph inputs and outputs keep their names."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    mapping: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return mapping.setdefault(name, f"t{len(mapping)}")

    for init in graph.initializer:
        init.name = short(init.name)
    for i, node in enumerate(graph.node):
        node.name = f"n{i}"
        node.doc_string = ""
        node.input[:] = [short(x) for x in node.input]
        node.output[:] = [short(x) for x in node.output]
    for vi in graph.value_info:
        vi.name = short(vi.name)
    del graph.value_info[:]
    model.doc_string = ""
    onnx.save(model, str(path))
    return Path(path)


def _pool_overhang(node, shape) -> list[int] | None:
    """For the AveragePool ``node`` over an input of ``shape`` (N, C, H, W) whose windows do
    not overlap (stride = kernel, no pads): the rows and columns its last window overhangs the
    edge by (``[0, 0]``: the windows tile the input). None for any other pooling or an
    unknown shape."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    kh, kw = attrs["kernel_shape"]
    if not (shape and len(shape) == 4 and all(d > 0 for d in shape[1:])
            and list(attrs.get("strides", [kh, kw])) == [kh, kw]
            and not any(attrs.get("pads", [0, 0, 0, 0]))):
        return None
    return [(-shape[2]) % kh, (-shape[3]) % kw]


def _plain_pool(node):
    """``node`` (a tiling AveragePool) without ``ceil_mode``/``count_include_pad``: the same
    arithmetic when the windows tile the input, and onnxruntime then runs its blocked-layout
    kernel instead of the generic one (~25x faster per pooling, measured)."""
    from onnx import helper

    kh, kw = next(helper.get_attribute_value(a) for a in node.attribute
                  if a.name == "kernel_shape")
    return helper.make_node("AveragePool", list(node.input), list(node.output), name=node.name,
                            kernel_shape=[kh, kw], strides=[kh, kw])


def _input_shapes(model) -> dict[str, list[int]]:
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(model)
    return {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
            for vi in list(inferred.graph.value_info) + list(inferred.graph.input)}


def plain_pools(src: str | Path, dst: str | Path) -> Path:
    """Write every average pooling that tiles its input as a plain ``AveragePool`` (no
    ``ceil_mode``/``count_include_pad``): exact, and the fp32 model runs ~1.8x faster at batch
    1 (the exporter writes torch's ``ceil_mode`` on every pooling; the one whose window
    overhangs the edge, 23 -> 12 frames, keeps it). :func:`export_onnx` applies it."""
    import onnx

    model = onnx.load(str(src))
    shapes = _input_shapes(model)
    nodes = [_plain_pool(n) if n.op_type == "AveragePool"
             and _pool_overhang(n, shapes.get(n.input[0])) == [0, 0] else n
             for n in model.graph.node]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(dst))
    return Path(dst)


# op types of the fast int8 graph: pooling (as depthwise Conv), ReLU and Concat stay in uint8
FAST_OP_TYPES = ("Conv", "Gemm", "MatMul", "AveragePool", "Relu", "Concat")


def pools_to_depthwise(src: str | Path, dst: str | Path, edge_pad: bool = False,
                       keep=()) -> Path:
    """Replace each average pooling that tiles its input exactly by the equivalent depthwise
    convolution (kernel = stride = pool size, every weight 1/(kh*kw), no bias).

    ``AvgPool(k, stride=k)`` over an input whose size is a multiple of ``k`` is exactly that
    convolution, so the published architecture and its arithmetic are kept. The pooling whose
    ``ceil_mode`` window overhangs the edge by one row (23 -> 12 frames) stays an AveragePool,
    or with ``edge_pad`` becomes the same convolution after repeating the last row (``Pad``
    mode edge), which is exact too: that last window averages its one valid row.
    onnxruntime then runs NHWC depthwise QLinearConv kernels instead of its slow
    (QLinear)AveragePool. Poolings named in ``keep`` stay poolings, written plain
    (:func:`plain_pools`) when they tile their input.
    """
    import onnx
    from onnx import helper, numpy_helper

    keep = set(keep)
    model = onnx.load(str(src))
    shapes = _input_shapes(model)
    out = []
    for n in model.graph.node:
        if n.op_type != "AveragePool":
            out.append(n)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        kh, kw = attrs["kernel_shape"]
        shape = shapes.get(n.input[0])
        overhang = _pool_overhang(n, shape)
        tiles = overhang is not None
        # ceil_mode with one row/column overhanging (no explicit pads): that window averages
        # its valid elements only, which is what repeating the edge row/column gives
        extra = overhang or [0, 0]
        if n.name in keep:
            out.append(_plain_pool(n) if overhang == [0, 0] else n)
            continue
        overhang_ok = (attrs.get("ceil_mode", 0) == 1 and extra[0] in (0, 1) and extra[1] in (0, 1)
                       and (extra[0] == 0 or kh == 2) and (extra[1] == 0 or kw == 2))
        if not tiles or (any(extra) and not (edge_pad and overhang_ok)):
            out.append(n)
            continue
        source = n.input[0]
        if any(extra):
            pads_name = n.name + "/edge_pads"
            model.graph.initializer.append(numpy_helper.from_array(
                np.array([0, 0, 0, 0, 0, 0, extra[0], extra[1]], dtype=np.int64), pads_name))
            source = n.name + "/edge_padded"
            out.append(helper.make_node("Pad", [n.input[0], pads_name], [source],
                                        name=n.name + "/edge", mode="edge"))
        channels = shape[1]
        w_name = n.name + "/dw_weight"
        weight = np.full((channels, 1, kh, kw), 1.0 / (kh * kw), dtype=np.float32)
        model.graph.initializer.append(numpy_helper.from_array(weight, w_name))
        out.append(helper.make_node("Conv", [source, w_name], list(n.output),
                                    name=n.name + "/dw", group=channels,
                                    kernel_shape=[kh, kw], strides=[kh, kw]))
    del model.graph.node[:]
    model.graph.node.extend(out)
    del model.graph.value_info[:]
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return Path(dst)


def ort_scores(path: str | Path, features: np.ndarray, threads: int = 1, batch: int = 64) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    out = [sess.run([OUTPUT_NAME], {INPUT_NAME: features[i : i + batch].astype(np.float32)})[0]
           for i in range(0, len(features), batch)]
    return np.concatenate(out)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of rows whose argmax agrees."""
    return float(np.mean(a.argmax(-1) == b.argmax(-1))) if len(a) else 1.0
