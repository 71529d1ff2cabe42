"""Exact rewrites of an fp32 ONNX graph that let onnxruntime's int8 kernels run it fast.

``training.int8.quantize_int8`` applies them before static quantisation; each returns the graph
computing the same values in fp32 (tests/test_export.py checks that), only made of ops for which
onnxruntime's CPU provider has a fast int8 kernel:

* ``subpixel_conv_transpose``: a stride-2 ConvTranspose becomes four small Convs (one per output
  phase) + Concat + DepthToSpace. The CPU provider has no int8 ConvTranspose, so the generators'
  upsampling stayed fp32 (16 % of an INT8 CycleGAN's time at 256 px in an ORT profile).
  The phase decomposition does exactly the transposed conv's multiply-adds, no zero taps.
* ``widen_thin_convs``: a Conv with few output channels (the RGB head) gets zero filters up to 16
  and a Slice back: MLAS's int8 GEMM is slow for N = 3 (7x7 32 -> 3 at 256 px: 19 ms int8 vs
  6.4 ms with 16 outputs).

Every rewrite needs the weights as initializers (true of our exports) and leaves any node it does
not fully understand (groups, dilation, explicit output_shape, odd output sizes) alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
from onnx import helper, numpy_helper

MIN_CONV_OUT = 16
SUBPIXEL_KEY = "transfigure.subpixel_conv_transpose"  # metadata: the rewritten kernels' layouts
WIDENED_SUFFIX = "_widened"  # a widened tensor's name: the original's + this; its first rows are the original


def _attrs(node) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _nodes_with_weights(graph, op_type: str, inits: dict) -> Iterator[tuple[Any, dict[str, Any], np.ndarray]]:
    """(node, attributes, weight array) of every ``op_type`` node whose weight is an initializer.

    Iterates over a snapshot, so the caller may replace the node it is given.
    """
    for node in list(graph.node):
        if node.op_type == op_type and len(node.input) >= 2 and node.input[1] in inits:
            yield node, _attrs(node), numpy_helper.to_array(inits[node.input[1]])


def _replace_node(graph, node, new_nodes: list) -> None:
    index = list(graph.node).index(node)
    graph.node.remove(node)
    for offset, new in enumerate(new_nodes):
        graph.node.insert(index + offset, new)


def widen_thin_convs(model, min_out: int = MIN_CONV_OUT) -> list[str]:
    """Pad every ungrouped Conv with fewer than ``min_out`` output channels to ``min_out`` (in place).

    The extra filters and biases are zero and a Slice keeps the original channels, so the outputs are
    unchanged. Returns the widened nodes' names.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    widened = []
    for node, attrs, w in _nodes_with_weights(graph, "Conv", inits):
        if attrs.get("group", 1) != 1 or w.shape[0] >= min_out:
            continue
        params = [node.input[1]] + ([node.input[2]] if len(node.input) > 2 and node.input[2] else [])
        if any(p not in inits for p in params):
            continue
        cout = w.shape[0]
        base = node.name or node.output[0]
        for slot, name in enumerate(params, start=1):  # new tensors: another node may share the old ones
            wide_name = f"{name}{WIDENED_SUFFIX}"  # keeps the torch name findable (load_run_from_card)
            if wide_name not in inits:
                arr = numpy_helper.to_array(inits[name])
                wide = np.zeros((min_out, *arr.shape[1:]), arr.dtype)
                wide[:cout] = arr
                inits[wide_name] = numpy_helper.from_array(wide, wide_name)
                graph.initializer.append(inits[wide_name])
            node.input[slot] = wide_name
        out = node.output[0]
        node.output[0] = f"{out}_widened"
        consts = []
        for suffix, value in (("starts", 0), ("ends", cout), ("axes", 1)):
            consts.append(f"{base}_slice_{suffix}")
            graph.initializer.append(numpy_helper.from_array(np.array([value], np.int64), consts[-1]))
        slice_node = helper.make_node("Slice", [node.output[0], *consts], [out], name=f"{base}_slice")
        _replace_node(graph, node, [node, slice_node])
        widened.append(node.name)
    _drop_unused_initializers(graph)
    return widened


def _drop_unused_initializers(graph) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)


def _phase_taps(k: int, pad: int, phase: int) -> list[int]:
    """Input offsets d (output 2m + phase reads input m + d) with their kernel tap k_d = phase + pad - 2d."""
    return [d for d in range(-k, k + 1) if 0 <= phase + pad - 2 * d < k]


def subpixel_conv_transpose(model) -> list[str]:
    """Rewrite stride-2 ConvTransposes whose output is exactly twice the input as 4 Convs + DepthToSpace.

    Output pixel (2m + ry, 2n + rx) of a stride-2 transposed conv only ever reads input pixels
    (m + dy, n + dx) through kernel tap (ry + p - 2 dy, rx + p - 2 dx). Each of the four phases
    (ry, rx) is therefore an ordinary Conv over the input with the taps it uses and the zero padding
    its offsets need; concatenated in DCR order, DepthToSpace(2) interleaves them. Exact in fp32.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    rewritten, layouts = [], []
    for node, a, w in _nodes_with_weights(graph, "ConvTranspose", inits):  # w: C_in x C_out x kH x kW
        if w.ndim != 4 or a.get("group", 1) != 1 or "output_shape" in a:
            continue
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        if list(a.get("strides", [1, 1])) != [2, 2] or list(a.get("dilations", [1, 1])) != [1, 1]:
            continue
        kh, kw = w.shape[2:]
        pads = list(a.get("pads", [0, 0, 0, 0]))
        out_pad = list(a.get("output_padding", [0, 0]))
        if pads[0] != pads[2] or pads[1] != pads[3]:
            continue
        py, px = pads[0], pads[1]
        if kh + out_pad[0] - 2 * py != 2 or kw + out_pad[1] - 2 * px != 2:
            continue  # output is not exactly 2x the input: leave it
        taps_y = [_phase_taps(kh, py, r) for r in (0, 1)]
        taps_x = [_phase_taps(kw, px, r) for r in (0, 1)]
        if any(not t or t[0] > 0 or t[-1] < 0 for t in taps_y + taps_x):
            continue  # a phase would need a negative pad (a crop): not a layout we export
        bias = None
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in inits:
                continue
            bias = node.input[2]
        base = node.name or node.output[0]
        phase_outputs, new_nodes = [], []
        for ry in (0, 1):
            for rx in (0, 1):
                ty, tx = taps_y[ry], taps_x[rx]
                iy = [ry + py - 2 * d for d in ty]
                ix = [rx + px - 2 * d for d in tx]
                kernel = w[:, :, iy][:, :, :, ix].transpose(1, 0, 2, 3)  # C_out x C_in x len(ty) x len(tx)
                wname = phase_weight_name(node.input[1], ry, rx)
                graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(kernel), wname))
                inputs = [node.input[0], wname] + ([bias] if bias else [])
                out = f"{base}_phase{ry}{rx}"
                new_nodes.append(
                    helper.make_node(
                        "Conv",
                        inputs,
                        [out],
                        name=out,
                        kernel_shape=[len(ty), len(tx)],
                        pads=[-ty[0], -tx[0], ty[-1], tx[-1]],
                        strides=[1, 1],
                        dilations=[1, 1],
                        group=1,
                    )  # fmt: skip
                )
                phase_outputs.append(out)
        cat = f"{base}_phases"
        new_nodes.append(helper.make_node("Concat", phase_outputs, [cat], name=cat, axis=1))
        new_nodes.append(
            helper.make_node(
                "DepthToSpace", [cat], [node.output[0]], name=f"{base}_d2s", blocksize=2, mode="DCR"
            )
        )
        _replace_node(graph, node, new_nodes)
        rewritten.append(node.name)
        layouts.append({"weight": node.input[1], "shape": list(w.shape), "pads": [py, px]})
    _drop_unused_initializers(graph)  # the transposed kernels now live in the phase convs
    if layouts:  # how to put the kernels back together (training.recipes.load_run_from_card)
        entry = next((p for p in model.metadata_props if p.key == SUBPIXEL_KEY), None)
        if entry is None:
            entry = model.metadata_props.add()
            entry.key, entry.value = SUBPIXEL_KEY, "[]"
        entry.value = json.dumps(json.loads(entry.value) + layouts)
    return rewritten


def phase_weight_name(weight: str, ry: int, rx: int) -> str:
    return f"{weight}_phase{ry}{rx}"


def merge_phase_weights(arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Undo ``subpixel_conv_transpose`` on weight arrays: add each transposed kernel under its name.

    ``arrays`` holds the phase kernels by name (possibly widened by ``widen_thin_convs``);
    ``metadata`` is the model's metadata_props. Every tap belongs to exactly one phase, so the kernel
    is recovered exactly (up to the phase kernels' own rounding in an INT8 file).
    """
    for layout in json.loads(metadata.get(SUBPIXEL_KEY, "[]")):
        c_in, c_out, kh, kw = layout["shape"]
        py, px = layout["pads"]
        kernel = np.zeros((c_in, c_out, kh, kw), np.float32)
        complete = True
        for ry in (0, 1):
            for rx in (0, 1):
                name = phase_weight_name(layout["weight"], ry, rx)
                phase = arrays.get(name)
                if phase is None and f"{name}{WIDENED_SUFFIX}" in arrays:
                    phase = arrays[f"{name}{WIDENED_SUFFIX}"][:c_out]
                if phase is None:
                    complete = False
                    continue
                iy = [ry + py - 2 * d for d in _phase_taps(kh, py, ry)]
                ix = [rx + px - 2 * d for d in _phase_taps(kw, px, rx)]
                kernel[np.ix_(range(c_in), range(c_out), iy, ix)] = phase.transpose(1, 0, 2, 3)
        if complete:
            arrays.setdefault(layout["weight"], kernel)
