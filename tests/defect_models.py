"""Tiny ONNX models with the detector's outputs, built node by node: they answer the same for
every picture, so tests of what the runtime and the server do with a defect output know exactly
what to expect. ``with_defects=False`` gives the three outputs of the model shipped before
issue 19."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIZE = 64  # input side; cells are a 2×2 grid
# Per cell, x0, y0, x1, y1 in input pixels.
CELL_BOXES = np.array([[[4, 4, 28, 28], [36, 4, 60, 28], [4, 36, 28, 60], [36, 36, 60, 60]]], dtype=np.float32)


def tiny_model(path: Path, *, failure: float = 0.05, defect: float = 0.9, with_defects: bool = True) -> Path:
    """A model whose image score is ``failure``, whose defect score is ``defect``, with one
    defect box (the lower-right cell, confidence ``defect``) and no failure box."""
    cells = CELL_BOXES.shape[1]
    scores = np.full((1, cells, 2), 0.01, dtype=np.float32)
    defect_cells = np.full((1, cells, 1), 0.01, dtype=np.float32)
    defect_cells[0, 3, 0] = defect
    constants = {
        "c_scores": scores, "c_boxes": CELL_BOXES, "c_image": np.array([[failure]], dtype=np.float32),
        "c_defect_cells": defect_cells, "c_defect": np.array([[defect]], dtype=np.float32),
        "zero": np.array(0.0, dtype=np.float32), "shape3": np.array([-1, 1, 1], dtype=np.int64),
        "shape2": np.array([-1, 1], dtype=np.int64),
    }
    nodes = [
        # A zero per picture, so every output has the batch's size.
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Reshape", ["nothing", "shape3"], ["zero3"]),
        helper.make_node("Reshape", ["nothing", "shape2"], ["zero2"]),
        helper.make_node("Add", ["zero3", "c_scores"], ["scores"]),
        helper.make_node("Add", ["zero3", "c_boxes"], ["boxes"]),
        helper.make_node("Add", ["zero2", "c_image"], ["image_score"]),
    ]
    outputs = [
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", cells, 2]),
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["batch", cells, 4]),
        helper.make_tensor_value_info("image_score", TensorProto.FLOAT, ["batch", 1]),
    ]
    if with_defects:
        nodes += [
            helper.make_node("Add", ["zero3", "c_defect_cells"], ["defect_scores"]),
            helper.make_node("Add", ["zero2", "c_defect"], ["defect_score"]),
        ]
        outputs += [
            helper.make_tensor_value_info("defect_scores", TensorProto.FLOAT, ["batch", cells, 1]),
            helper.make_tensor_value_info("defect_score", TensorProto.FLOAT, ["batch", 1]),
        ]
    graph = helper.make_graph(
        nodes, "tiny-detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        outputs, initializer=[numpy_helper.from_array(value, name) for name, value in constants.items()
                              if with_defects or not name.startswith("c_defect")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
