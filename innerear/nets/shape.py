"""What a stage network asks of its slices and gives back, for a Keras model or its ONNX export
(:class:`innerear.nets.onnx.OnnxNet`): the pooling factor and the output classes."""
from __future__ import annotations

from typing import Any

__all__ = ["output_classes", "pooling_factor"]


def pooling_factor(model: Any) -> int:
    """``2**depth``: the product of the network's pooling strides (a slice side must be a multiple)."""
    if hasattr(model, "pooling"):  # an ONNX export records it
        return int(model.pooling)
    import keras

    factor = 1
    for layer in model.layers:
        if isinstance(layer, keras.layers.MaxPooling2D):
            strides = layer.strides if layer.strides is not None else layer.pool_size
            factor *= int(strides[0])
    return factor


def output_classes(model: Any) -> int:
    """Channels of the network's output: 1 (binary sigmoid) or the number of softmax classes."""
    if hasattr(model, "classes"):
        return int(model.classes)
    return int(model.outputs[0].shape[-1])
