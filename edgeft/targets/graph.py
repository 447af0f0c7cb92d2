"""Per-layer FLOPs and memory traffic of an ONNX graph (onnx shape inference, batch 1).

A layer is a node that a runtime runs as a kernel: convolutions and matrix products
(compute), or pooling, residual adds, concatenations, softmax … (memory). Unary
activations, batch norms, Q/DQ pairs and scalings by constants are taken as fused into
their producer (TensorRT, OpenVINO and ONNX Runtime all fuse them) and cost nothing;
shape plumbing (Reshape, Shape, Flatten …) is free. Activations scale with the batch,
weights do not, so costs are kept per image and per model.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeft.errors import EdgeftError

COMPUTE = {"Conv", "ConvTranspose", "QLinearConv", "ConvInteger", "Gemm", "MatMul", "QLinearMatMul", "MatMulInteger"}
FUSED = {"Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "PRelu", "Tanh", "Erf", "Gelu", "Elu",
         "Selu", "Softplus", "Mish", "BatchNormalization", "QuantizeLinear", "DequantizeLinear", "Cast", "Dropout"}
FREE = {"Reshape", "Flatten", "Shape", "Constant", "Identity", "Squeeze", "Unsqueeze", "ConstantOfShape", "Range",
        "Gather", "Size", "Expand", "Slice"}
ELEMENTWISE_BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"}
# For these, the weight is not input 1.
WEIGHT_INPUT = {"QLinearConv": 3, "QLinearMatMul": 3}


@dataclass(frozen=True)
class LayerCost:
    """One kernel's work per image: FLOPs, activation elements moved, weight elements read."""

    name: str
    op: str
    flops: float
    activations: float
    weights: float
    kernel: bool = True

    def to_row(self) -> list:
        return [self.name, self.op, self.flops, self.activations, self.weights]

    @classmethod
    def from_row(cls, row: list) -> "LayerCost":
        return cls(row[0], row[1], float(row[2]), float(row[3]), float(row[4]))


def _prod(dims: list[int]) -> float:
    out = 1.0
    for d in dims:
        out *= d
    return out


def _load(path: str | Path):
    """The model at batch 1 with shapes inferred; in-graph size arithmetic (e.g. F.pad) is folded first."""
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and friends
        raise EdgeftError(f"{path}: not a readable ONNX model ({str(exc)[:120]})") from None
    initializers = {i.name for i in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    if all(d.HasField("dim_value") for v in inferred.graph.value_info for d in v.type.tensor_type.shape.dim):
        return inferred
    return onnx.shape_inference.infer_shapes(_fold_constants(model), data_prop=True)


def _fold_constants(model):
    """ONNX Runtime's basic (standard-op) optimisations fold constant subgraphs such as computed pads."""
    import tempfile

    import onnx

    try:
        import onnxruntime as ort
    except ImportError:
        return model  # unknown shapes are then reported by graph_costs
    with tempfile.TemporaryDirectory(prefix="edgeft-fold-") as tmp:
        source, folded = Path(tmp) / "in.onnx", Path(tmp) / "folded.onnx"
        onnx.save(model, str(source))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(folded)
        ort.InferenceSession(str(source), opts, providers=["CPUExecutionProvider"])
        return onnx.load(str(folded))


def graph_costs(path: str | Path) -> list[LayerCost]:
    """The kernels of the ONNX model at `path` with their per-image costs, in graph order."""
    model = _load(path)
    graph = model.graph
    shapes: dict[str, list[int]] = {i.name: list(i.dims) for i in graph.initializer}
    constant = set(shapes)
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if value.type.HasField("tensor_type") and all(d.HasField("dim_value") for d in dims):
            shapes.setdefault(value.name, [d.dim_value for d in dims])
    layers = []
    for node in graph.node:
        inputs = [i for i in node.input if i]
        if node.op_type == "Constant" or (inputs and all(i in constant for i in inputs)):
            constant.update(node.output)  # folded at load (e.g. DequantizeLinear of int8 weights)
            continue
        if node.op_type in FREE or node.op_type in FUSED:
            continue
        activations = [i for i in inputs if i not in constant]
        if node.op_type in ELEMENTWISE_BINARY and len(activations) < 2:
            continue  # scaling/shift by a constant: fused into the producer
        missing = [n for n in [*activations, *node.output] if n not in shapes]
        if missing:
            raise EdgeftError(f"{path}: shape of {missing[0]!r} unknown after shape inference; export static image sizes")
        out = sum(_prod(shapes[o]) for o in node.output)
        act = sum(_prod(shapes[i]) for i in activations) + out
        weights = sum(_prod(shapes[i]) for i in inputs if i in constant and i in shapes)
        flops = _flops(node, shapes, inputs, out) if node.op_type in COMPUTE else max(out, act - out)
        layers.append(LayerCost(node.name or node.output[0], node.op_type, flops, act, weights))
    return layers


def _flops(node, shapes: dict[str, list[int]], inputs: list[str], out: float) -> float:
    """2 x multiply-accumulates of a convolution or matrix product."""
    op = node.op_type
    if op in ("Conv", "QLinearConv", "ConvInteger", "ConvTranspose"):
        weight = shapes[inputs[WEIGHT_INPUT.get(op, 1)]]
        if op == "ConvTranspose":
            return 2.0 * _prod(shapes[inputs[0]]) * _prod(weight[1:])
        return 2.0 * out * _prod(weight[1:])
    a = shapes[inputs[0]]
    trans_a = any(attr.name == "transA" and attr.i for attr in node.attribute)
    k = a[0] if (op == "Gemm" and trans_a) else a[-1]
    return 2.0 * out * k
