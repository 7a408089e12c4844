"""The three 2D segmentation networks of AutoCasNet: U-Net, ResU-Net and SEU-Net.

All three share one encoder-decoder layout (Hussain et al., Sci Rep 2021, Fig. 3, and the
authors' public code): ``depth`` levels of two 3x3 Conv-BN-ReLU steps followed by 2x2 max
pooling, filters ``base * 2**level``; a bottleneck with ``base * 2**depth`` filters and 20 %
dropout after its convolutions; a decoder of 2x2 transposed convolutions (stride 2),
concatenation with the encoder's skip connection and the level's block; a 1x1 convolution
with one filter and a sigmoid as the output. Only the block differs:

* ``unet``: two Conv3x3-BN-ReLU.
* ``res_unet``: the authors' residual block. Conv3x3-BN-ReLU of the input plus a 1x1
  convolution of the input, then a second Conv3x3-BN-ReLU.
* ``se_unet``: ``se_mode="authors"`` is the authors' block: after the first Conv3x3-BN-ReLU,
  global *max* pooling, Dense(filters // ratio, ReLU), Dense(1, sigmoid) gives one scalar
  gate per image, which multiplies a 1x1 convolution that reduces the features to a single
  channel; the block's second Conv3x3-BN-ReLU follows. ``se_mode="standard"`` is the SE block
  of Hu et al. (global average pooling, Dense(C/r, ReLU), Dense(C, sigmoid), channel-wise
  rescaling) after the block's two convolutions, as the paper's text describes it.

By default the builders put the ResU-Net and SEU-Net blocks at the bottleneck as well;
``plain_bottleneck=True`` uses the plain U-Net block there instead, which is what the
functions ``resunet``/``senet`` in the authors' ``code_models/model_final.py`` do and what
every profile builds (:func:`build_for_profile`; ``Profile.plain_bottleneck``).

Only the Keras 3 API is used (no backend-specific code), so the models build, train and
save/load on TensorFlow, JAX or PyTorch. No ``Lambda`` layers are used: models round-trip
through ``.keras`` files with ``keras.saving.load_model(path, safe_mode=True)``.

With ``size=None`` the networks are fully convolutional: any input whose height and width are
divisible by ``2**depth`` works.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import keras
from keras import layers

from innerear.settings.profiles import SE_MODES, Profile

__all__ = [
    "AUTHORS_PARAMS",
    "AUTHORS_NETWORK_PARAMS",
    "BUILDERS",
    "build",
    "build_for_profile",
    "profile_build_kwargs",
    "layer_table",
    "res_unet",
    "se_unet",
    "unet",
]

# Parameter count (trainable + BN statistics) of the authors' U-Net at paper size
# (base 32, depth 3), by number of input channels.
AUTHORS_PARAMS: dict[int, int] = {1: 1_930_657, 2: 1_930_945, 3: 1_931_233}
# The same for the authors' three networks (``unet``/``autocasnet1``, ``resunet`` and
# ``senet`` in ``model_final.py``: plain bottleneck, their scalar-gate SE block, ratio 8).
# tests/test_backbones.py rebuilds their layer sequence independently and checks these.
AUTHORS_NETWORK_PARAMS: dict[str, dict[int, int]] = {
    "unet": AUTHORS_PARAMS,
    "res_unet": {1: 1_984_385, 2: 1_984_705, 3: 1_985_025},
    "se_unet": {1: 1_553_565, 2: 1_553_853, 3: 1_554_141},
}


# The authors' code initialises the 3x3 convolutions and the output layer with He normal;
# the 1x1 shortcut / reduction convolutions, transposed convolutions and the standard SE's
# dense layers keep Keras' default (Glorot uniform).
_CONV_INIT = "he_normal"


# --------------------------------------------------------------------------- validation


def _check_args(channels: Any, size: Any, base_filters: Any, depth: Any, dropout: Any) -> None:
    if isinstance(channels, bool) or not isinstance(channels, int) or not 1 <= channels <= 3:
        raise ValueError(f"channels must be an integer in 1..3 (the cascade's stages), got {channels!r}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth (number of pooling levels) must be an integer >= 1, got {depth!r}")
    if isinstance(base_filters, bool) or not isinstance(base_filters, int) or base_filters < 1:
        raise ValueError(f"base_filters must be an integer >= 1, got {base_filters!r}")
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a rate in [0, 1), got {dropout!r}")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive integer or None, got {size!r}")
        factor = 2**depth
        if size % factor:
            raise ValueError(
                f"size {size} is not divisible by 2**depth = {factor}: a network with {depth} "
                f"pooling levels needs slices whose side is a multiple of {factor} "
                f"(e.g. {max(factor, size // factor * factor)} or {(size // factor + 1) * factor})"
            )


# --------------------------------------------------------------------------- blocks


def _conv_bn_relu(x, filters: int, name: str, momentum: float = 0.99):
    """Conv3x3 (same padding, with bias) - BatchNorm - ReLU."""
    x = layers.Conv2D(filters, 3, padding="same", kernel_initializer=_CONV_INIT, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=momentum, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _plain_block(x, filters: int, name: str, momentum: float = 0.99):
    x = _conv_bn_relu(x, filters, f"{name}_a", momentum)
    return _conv_bn_relu(x, filters, f"{name}_b", momentum)


def _residual_block(x, filters: int, name: str, momentum: float = 0.99):
    """Authors' residual block: CBR(x) + Conv1x1(x), then CBR."""
    y = _conv_bn_relu(x, filters, f"{name}_a", momentum)
    shortcut = layers.Conv2D(filters, 1, padding="same", name=f"{name}_shortcut")(x)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return _conv_bn_relu(y, filters, f"{name}_b", momentum)


def _authors_se_block(x, filters: int, name: str, ratio: int, momentum: float = 0.99):
    """Authors' SE block: CBR, scalar gate (global max pool) times a 1-channel 1x1 conv, CBR."""
    y = _conv_bn_relu(x, filters, f"{name}_a", momentum)
    gate = layers.GlobalMaxPooling2D(name=f"{name}_se_pool")(y)
    gate = layers.Dense(
        max(1, filters // ratio), activation="relu", kernel_initializer="he_normal", name=f"{name}_se_fc1"
    )(gate)
    gate = layers.Dense(1, activation="sigmoid", kernel_initializer="he_normal", name=f"{name}_se_fc2")(gate)
    gate = layers.Reshape((1, 1, 1), name=f"{name}_se_reshape")(gate)
    reduced = layers.Conv2D(1, 1, padding="same", name=f"{name}_se_reduce")(y)
    y = layers.Multiply(name=f"{name}_se_scale")([reduced, gate])
    return _conv_bn_relu(y, filters, f"{name}_b", momentum)


def _standard_se_block(x, filters: int, name: str, ratio: int, momentum: float = 0.99):
    """Plain block followed by Hu et al.'s squeeze-and-excitation (channel-wise gates)."""
    y = _plain_block(x, filters, name, momentum)
    gate = layers.GlobalAveragePooling2D(name=f"{name}_se_pool")(y)
    gate = layers.Dense(max(1, filters // ratio), activation="relu", name=f"{name}_se_fc1")(gate)
    gate = layers.Dense(filters, activation="sigmoid", name=f"{name}_se_fc2")(gate)
    gate = layers.Reshape((1, 1, filters), name=f"{name}_se_reshape")(gate)
    return layers.Multiply(name=f"{name}_se_scale")([y, gate])


# --------------------------------------------------------------------------- skeleton


def _encoder_decoder(
    block: Callable,
    *,
    channels: int,
    size: int | None,
    base_filters: int,
    depth: int,
    dropout: float,
    name: str,
    bottleneck_block: Callable | None = None,
    bn_momentum: float = 0.99,
    n_classes: int = 1,
) -> keras.Model:
    _check_args(channels, size, base_filters, depth, dropout)
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
        raise ValueError(f"n_classes must be an integer >= 1, got {n_classes!r}")
    bottleneck_block = bottleneck_block or block
    inputs = keras.Input(shape=(size, size, channels), name="slices")

    x = inputs
    skips = []
    for level in range(depth):
        x = block(x, base_filters * 2**level, f"enc{level}", bn_momentum)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)

    x = bottleneck_block(x, base_filters * 2**depth, "bottleneck", bn_momentum)
    x = layers.Dropout(dropout, name="bottleneck_dropout")(x)

    for level in reversed(range(depth)):
        filters = base_filters * 2**level
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"dec{level}_up")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skips[level]])
        x = block(x, filters, f"dec{level}", bn_momentum)

    # one sigmoid channel (binary foreground, the paper's) or a softmax over n_classes
    # (0 background, then the structures: the robust recipe's label map)
    activation = "sigmoid" if n_classes == 1 else "softmax"
    outputs = layers.Conv2D(n_classes, 1, activation=activation, kernel_initializer=_CONV_INIT, name="mask")(x)
    return keras.Model(inputs, outputs, name=name)


# --------------------------------------------------------------------------- builders


def unet(
    channels: int = 1,
    size: int | None = None,
    base_filters: int = 32,
    depth: int = 3,
    dropout: float = 0.2,
    name: str | None = None,
    bn_momentum: float = 0.99,
    n_classes: int = 1,
) -> keras.Model:
    """U-Net with Conv-BN-ReLU blocks; at the defaults it is the authors' network
    (1,930,657 parameters with one input channel)."""
    return _encoder_decoder(
        _plain_block, channels=channels, size=size, base_filters=base_filters, depth=depth,
        dropout=dropout, name=name or "unet", bn_momentum=bn_momentum, n_classes=n_classes,
    )


def res_unet(
    channels: int = 1,
    size: int | None = None,
    base_filters: int = 32,
    depth: int = 3,
    dropout: float = 0.2,
    name: str | None = None,
    plain_bottleneck: bool = False,
    bn_momentum: float = 0.99,
    n_classes: int = 1,
) -> keras.Model:
    """U-Net with the authors' residual block at every level (and the bottleneck unless
    ``plain_bottleneck``)."""
    return _encoder_decoder(
        _residual_block, channels=channels, size=size, base_filters=base_filters, depth=depth,
        dropout=dropout, name=name or "res_unet",
        bottleneck_block=_plain_block if plain_bottleneck else None, bn_momentum=bn_momentum, n_classes=n_classes,
    )


def se_unet(
    channels: int = 1,
    size: int | None = None,
    base_filters: int = 32,
    depth: int = 3,
    dropout: float = 0.2,
    se_mode: str = "authors",
    ratio: int = 8,
    name: str | None = None,
    plain_bottleneck: bool = False,
    bn_momentum: float = 0.99,
    n_classes: int = 1,
) -> keras.Model:
    """U-Net with squeeze-and-excitation blocks: the authors' scalar-gate block
    (``se_mode="authors"``) or Hu et al.'s channel-wise SE (``se_mode="standard"``)."""
    if se_mode not in SE_MODES:
        raise ValueError(f"se_mode must be one of {SE_MODES}, got {se_mode!r}")
    if isinstance(ratio, bool) or not isinstance(ratio, int) or ratio < 1:
        raise ValueError(f"ratio must be an integer >= 1, got {ratio!r}")
    se_block = _authors_se_block if se_mode == "authors" else _standard_se_block

    def block(x, filters, block_name, momentum):
        return se_block(x, filters, block_name, ratio, momentum)

    return _encoder_decoder(
        block, channels=channels, size=size, base_filters=base_filters, depth=depth,
        dropout=dropout, name=name or f"se_unet_{se_mode}",
        bottleneck_block=_plain_block if plain_bottleneck else None, bn_momentum=bn_momentum, n_classes=n_classes,
    )


BUILDERS: dict[str, Callable[..., keras.Model]] = {"unet": unet, "res_unet": res_unet, "se_unet": se_unet}


def build(
    backbone: str,
    channels: int,
    size: int | None,
    base_filters: int,
    depth: int,
    dropout: float = 0.2,
    **kw: Any,
) -> keras.Model:
    """Build a backbone by name (``"unet"``, ``"res_unet"`` or ``"se_unet"``).

    Extra keywords go to the builder (``se_mode``, ``ratio`` for ``se_unet``;
    ``plain_bottleneck`` for ``res_unet``/``se_unet``; ``name``)."""
    try:
        builder = BUILDERS[backbone]
    except KeyError:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(BUILDERS)}") from None
    return builder(channels=channels, size=size, base_filters=base_filters, depth=depth, dropout=dropout, **kw)


def profile_build_kwargs(backbone: str, profile: Profile) -> dict[str, Any]:
    """The keywords :func:`build` gets from a profile for ``backbone`` (sizes and variants)."""
    kw: dict[str, Any] = dict(base_filters=profile.base_filters, depth=profile.depth, dropout=profile.dropout,
                              bn_momentum=profile.bn_momentum)
    if backbone in ("res_unet", "se_unet"):
        kw["plain_bottleneck"] = profile.plain_bottleneck
    if backbone == "se_unet":
        kw["se_mode"] = profile.se_mode
    return kw


def build_for_profile(backbone: str, channels: int, profile: Profile, size: int | None = None,
                      **kw: Any) -> keras.Model:
    """The network a profile trains (fully convolutional unless ``size`` is given)."""
    return build(backbone, channels=channels, size=size, **(profile_build_kwargs(backbone, profile) | kw))




# --------------------------------------------------------------------------- inspection


def _shape_str(shape: Any) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def layer_table(model: keras.Model) -> list[dict]:
    """One row per layer: name, type, output shape, parameter count and input layers.

    ``params`` counts all weights (BatchNorm's moving statistics included), so the column
    sums to ``model.count_params()``; ``trainable_params`` leaves those out."""
    rows = []
    for layer in model.layers:
        inbound: list[str] = []
        for node in getattr(layer, "_inbound_nodes", []):
            for tensor in node.input_tensors:
                history = getattr(tensor, "_keras_history", None)
                if history is not None:
                    inbound.append(history.operation.name)
        rows.append(
            {
                "name": layer.name,
                "type": type(layer).__name__,
                "output_shape": _shape_str(layer.output.shape),
                "params": int(layer.count_params()) if layer.built else 0,
                "trainable_params": int(sum(math.prod(w.shape) for w in layer.trainable_weights)),
                "inputs": ", ".join(inbound),
            }
        )
    return rows
