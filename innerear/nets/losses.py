"""Losses of the 2D networks, registered with Keras so that saved networks load by name."""
from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="innerear")
def dice_loss(y_true, y_pred, smooth: float = 1.0):
    """Soft Dice loss over the whole batch."""
    y_true = keras.ops.cast(y_true, y_pred.dtype)
    inter = keras.ops.sum(y_true * y_pred)
    return 1.0 - (2.0 * inter + smooth) / (keras.ops.sum(y_true) + keras.ops.sum(y_pred) + smooth)


@keras.saving.register_keras_serializable(package="innerear")
def bce_dice_loss(y_true, y_pred):
    """Binary cross-entropy plus soft Dice (the loss of the authors' public code)."""
    bce = keras.ops.mean(keras.losses.binary_crossentropy(y_true, y_pred))
    return bce + dice_loss(y_true, y_pred)


@keras.saving.register_keras_serializable(package="innerear")
def cce_dice_loss(y_true, y_pred, smooth: float = 1.0):
    """Categorical cross-entropy plus the mean soft Dice loss of the foreground classes.

    ``y_true`` holds class indices ``(..., 1)``, ``y_pred`` softmax probabilities ``(..., k)``.
    The Dice term keeps thin structures (canals, the cochlear apex) from drowning in the
    background's share of the cross-entropy.
    """
    k = y_pred.shape[-1]
    onehot = keras.ops.one_hot(keras.ops.cast(y_true[..., 0], "int32"), k, dtype=y_pred.dtype)
    cce = keras.ops.mean(keras.losses.categorical_crossentropy(onehot, y_pred))
    axes = tuple(range(len(y_pred.shape) - 1))
    inter = keras.ops.sum(onehot * y_pred, axis=axes)
    denom = keras.ops.sum(onehot, axis=axes) + keras.ops.sum(y_pred, axis=axes)
    dice = (2.0 * inter + smooth) / (denom + smooth)
    return cce + 1.0 - keras.ops.mean(dice[1:])


LOSSES = ("bce", "bce_dice", "cce_dice")


def make_loss(name: str):
    """``"bce"`` (the paper's text), ``"bce_dice"`` (the authors' code) or ``"cce_dice"``
    (multi-class: the robust recipe's structure label map)."""
    if name == "bce":
        return keras.losses.BinaryCrossentropy()
    if name == "bce_dice":
        return bce_dice_loss
    if name == "cce_dice":
        return cce_dice_loss
    raise ValueError(f"unknown loss {name!r}; use one of {list(LOSSES)}")
