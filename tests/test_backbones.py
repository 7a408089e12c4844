"""Tests for innerear.nets.backbones: layout, parameter counts, shapes, saving, determinism."""
from __future__ import annotations

import re
from pathlib import Path

import keras
import numpy as np
import pytest

from innerear.nets import backbones
from innerear.nets.backbones import AUTHORS_PARAMS, build, layer_table, res_unet, se_unet, unet
from innerear.settings.profiles import BACKBONE_LABELS
from innerear.nets.checkpoints import run_network
from innerear.settings.profiles import backbone_label

# small networks: 32x32 slices, 4 base filters, 2 pooling levels
SMALL = dict(size=32, base_filters=4, depth=2)

# (builder name, extra keywords) for every network variant
VARIANTS = [
    ("unet", {}),
    ("res_unet", {}),
    ("se_unet", {"se_mode": "authors"}),
    ("se_unet", {"se_mode": "standard"}),
]
VARIANT_IDS = ["unet", "res_unet", "se_unet-authors", "se_unet-standard"]

# Paper-size (base 32, depth 3, one input channel) counts of the builders' defaults, with the
# ResU-Net / SE block at the bottleneck too; the U-Net's are the authors' (AUTHORS_PARAMS).
PAPER_PARAMS_RES_UNET = 2_017_409
PAPER_PARAMS_SE_UNET = 974_559
# The authors' ResU-Net and SEU-Net (plain bottleneck), one input channel: the numbers the
# issue quotes, also rebuilt independently below.
AUTHORS_RES_UNET_1CH = 1_984_385
AUTHORS_SE_UNET_1CH = 1_553_565


def _batch(n: int, size: int, channels: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size, channels), dtype=np.float32)


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_unet_matches_authors_parameter_count(channels):
    model = unet(channels=channels)
    assert model.count_params() == AUTHORS_PARAMS[channels]
    assert model.input_shape == (None, None, None, channels)
    assert model.output_shape == (None, None, None, 1)


def test_default_builders_are_paper_size():
    assert unet(channels=1).count_params() == AUTHORS_PARAMS[1]
    assert res_unet(channels=1).count_params() == PAPER_PARAMS_RES_UNET
    assert se_unet(channels=1).count_params() == PAPER_PARAMS_SE_UNET
    # the paper-size U-Net: 32/64/128 filters per level, 256 at the bottleneck
    names = {layer.name: layer for layer in unet(channels=1).layers}
    assert [names[f"enc{i}_a_conv"].filters for i in range(3)] == [32, 64, 128]
    assert names["bottleneck_a_conv"].filters == names["bottleneck_b_conv"].filters == 256
    assert names["bottleneck_dropout"].rate == pytest.approx(0.2)


def test_build_dispatches_by_name():
    for key in BACKBONE_LABELS:
        model = build(key, channels=2, size=None, base_filters=4, depth=2)
        assert model.input_shape[-1] == 2
    model = build("se_unet", channels=1, size=32, base_filters=4, depth=2, se_mode="standard")
    assert any(layer.name.endswith("_se_scale") for layer in model.layers)
    with pytest.raises(ValueError, match="unknown backbone"):
        build("vnet", channels=1, size=32, base_filters=4, depth=2)
    assert set(BACKBONE_LABELS) == set(backbones.BUILDERS)


@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize(("name", "kw"), VARIANTS, ids=VARIANT_IDS)
def test_small_networks_output_probability_maps(name, kw, channels):
    model = build(name, channels=channels, dropout=0.2, **SMALL, **kw)
    out = np.asarray(model(_batch(3, 32, channels), training=False))
    assert out.shape == (3, 32, 32, 1)
    assert np.all(np.isfinite(out))
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize(("size", "depth"), [(30, 2), (36, 3), (100, 3)])
def test_size_not_divisible_raises(size, depth):
    with pytest.raises(ValueError, match="divisible"):
        unet(channels=1, size=size, base_filters=4, depth=depth)


@pytest.mark.parametrize(
    "kwargs",
    [dict(channels=0), dict(channels=4), dict(channels=1.0), dict(depth=0), dict(base_filters=0),
     dict(dropout=1.0), dict(size=-32)],
)
def test_invalid_arguments_raise(kwargs):
    args = dict(channels=1, size=None, base_filters=4, depth=2) | kwargs
    with pytest.raises(ValueError):
        unet(**args)


def test_invalid_se_settings_raise():
    with pytest.raises(ValueError, match="se_mode"):
        se_unet(channels=1, base_filters=4, depth=2, se_mode="spatial")
    with pytest.raises(ValueError, match="ratio"):
        se_unet(channels=1, base_filters=4, depth=2, ratio=0)


@pytest.mark.parametrize(("name", "kw"), VARIANTS, ids=VARIANT_IDS)
def test_fully_convolutional_without_size(name, kw):
    model = build(name, channels=2, size=None, base_filters=4, depth=2, **kw)
    for side in (32, 48):
        out = np.asarray(model(_batch(2, side, 2), training=False))
        assert out.shape == (2, side, side, 1)


@pytest.mark.parametrize(("name", "kw"), VARIANTS, ids=VARIANT_IDS)
def test_save_load_round_trip(name, kw, tmp_path):
    keras.utils.set_random_seed(3)
    model = build(name, channels=2, size=None, base_filters=4, depth=2, **kw)
    # move every weight (BN moving statistics included) away from its initial value
    rng = np.random.default_rng(1)
    model.set_weights([w + rng.uniform(0.1, 0.5, w.shape).astype(w.dtype) for w in model.get_weights()])
    path = Path(tmp_path) / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    for side in (32, 48):
        xb = _batch(2, side, 2, seed=side)
        np.testing.assert_array_equal(
            np.asarray(model(xb, training=False)), np.asarray(loaded(xb, training=False))
        )
    assert loaded.count_params() == model.count_params()


@pytest.mark.parametrize(("name", "kw"), VARIANTS, ids=VARIANT_IDS)
def test_deterministic_given_seed(name, kw):
    weights = []
    for _ in range(2):
        keras.utils.set_random_seed(7)
        model = build(name, channels=1, **SMALL, **kw)
        weights.append([np.asarray(w) for w in model.get_weights()])
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


def test_plain_bottleneck_variant_uses_unet_block_at_bottleneck():
    # the authors' model_final.py builds ResU-Net and SEU-Net with a plain bottleneck
    for builder in (res_unet, se_unet):
        model = builder(channels=1, base_filters=4, depth=2, plain_bottleneck=True)
        names = [layer.name for layer in model.layers]
        assert not any(n.startswith("bottleneck_") and ("shortcut" in n or "_se_" in n) for n in names)
        assert any(n.startswith("dec0_") and ("shortcut" in n or "_se_" in n) for n in names)


def test_layer_table_sums_to_model_params():
    model = res_unet(channels=1, size=32, base_filters=4, depth=2)
    rows = layer_table(model)
    assert len(rows) == len(model.layers)
    assert {"name", "type", "output_shape", "params", "trainable_params", "inputs"} <= set(rows[0])
    assert sum(r["params"] for r in rows) == model.count_params()
    by_name = {r["name"]: r for r in rows}
    assert by_name["mask"]["output_shape"] == "(None, 32, 32, 1)"
    assert by_name["mask"]["type"] == "Conv2D"
    assert set(by_name["dec0_concat"]["inputs"].split(", ")) == {"dec0_up", "enc0_b_relu"}
    # BN moving statistics are parameters but not trainable ones
    assert by_name["enc0_a_bn"]["params"] == 4 * 4 and by_name["enc0_a_bn"]["trainable_params"] == 2 * 4


def test_source_is_backend_agnostic():
    source = Path(backbones.__file__).read_text()
    assert not re.search(r"^\s*(import|from)\s+tensorflow", source, re.MULTILINE)
    assert "tensorflow" not in source.lower().replace("tensorflow, jax or pytorch", "")
    assert not re.search(r"\btf\.", source)
    assert "Lambda" not in source.replace("No ``Lambda`` layers", "")


# ----------------------------------------------------------------------------- the authors' networks
def _authors_network(block: str, channels: int, size: int = 256, base: int = 32) -> keras.Model:
    """The authors' ``unet``/``resunet``/``senet`` (``code_models/model_final.py`` of
    raabid236/AutoCasNet, read in the project's search index), re-typed here in plain Keras 3
    layer by layer, without any code of ``innerear``: their ``convolution_block`` is
    Conv3x3 (he_normal) - BN - ReLU; ``unet_block`` two of those; ``residual_block`` one,
    plus a 1x1 convolution of the block input added, then a second; ``senet_block`` one,
    then ``se_block(ratio=8)`` (global max pooling, reshape to 1x1xC, Dense(C//8, ReLU),
    Dense(1, sigmoid), times a 1-filter 1x1 convolution of the features), then a second.
    Three levels of (block, 2x2 max pooling) with 32/64/128 filters, a ``unet_block`` of
    256 at the bottleneck in all three networks, Dropout(0.2), then three levels of 2x2
    stride-2 transposed convolution, concatenation with the skip and the block, and a 1x1
    sigmoid convolution."""
    L = keras.layers

    def cbr(x, f):
        x = L.Conv2D(f, (3, 3), padding="same", kernel_initializer="he_normal")(x)
        return L.Activation("relu")(L.BatchNormalization()(x))

    def unet_block(x, f):
        return cbr(cbr(x, f), f)

    def residual_block(x, f):
        y = L.Add()([cbr(x, f), L.Conv2D(f, (1, 1), padding="same")(x)])
        return cbr(y, f)

    def senet_block(x, f):
        y = cbr(x, f)
        se = L.Reshape((1, 1, f))(L.GlobalMaxPooling2D()(y))
        se = L.Dense(f // 8, activation="relu", kernel_initializer="he_normal")(se)
        se = L.Dense(1, activation="sigmoid", kernel_initializer="he_normal")(se)
        y = L.Multiply()([L.Conv2D(1, (1, 1), padding="same")(y), se])
        return cbr(y, f)

    level_block = {"unet": unet_block, "res_unet": residual_block, "se_unet": senet_block}[block]
    inputs = keras.Input((size, size, channels))
    c1 = level_block(inputs, base)
    c2 = level_block(L.MaxPooling2D((2, 2))(c1), base * 2)
    c3 = level_block(L.MaxPooling2D((2, 2))(c2), base * 4)
    c6 = L.Dropout(0.2)(unet_block(L.MaxPooling2D((2, 2))(c3), base * 8))
    u = c6
    for skip, f in ((c3, base * 4), (c2, base * 2), (c1, base)):
        u = L.Conv2DTranspose(f, (2, 2), strides=(2, 2), padding="same")(u)
        u = level_block(L.concatenate([u, skip]), f)
    outputs = L.Conv2D(1, (1, 1), kernel_initializer="he_normal", activation="sigmoid")(u)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("backbone", ["unet", "res_unet", "se_unet"])
def test_paper_profile_builds_the_authors_networks(backbone):
    """At the ``paper`` profile (256² slices, base 32, depth 3) each backbone has exactly the
    parameters of the authors' network, counted on an independent Keras rebuild of it."""
    from innerear.settings.profiles import get_profile

    paper = get_profile("paper")
    assert paper.plain_bottleneck and paper.se_mode == "authors"
    for channels in (1, 2, 3):
        theirs = _authors_network(backbone, channels).count_params()
        ours = backbones.build_for_profile(backbone, channels, paper, size=paper.grid).count_params()
        assert ours == theirs == backbones.AUTHORS_NETWORK_PARAMS[backbone][channels]
        keras.backend.clear_session()
    if backbone == "res_unet":
        assert backbones.AUTHORS_NETWORK_PARAMS[backbone][1] == AUTHORS_RES_UNET_1CH
    if backbone == "se_unet":
        assert backbones.AUTHORS_NETWORK_PARAMS[backbone][1] == AUTHORS_SE_UNET_1CH


def test_profile_build_kwargs_follow_the_profile():
    from innerear.settings.profiles import get_profile

    demo = get_profile("demo")
    kw = backbones.profile_build_kwargs("se_unet", demo)
    assert kw["se_mode"] == "standard" and kw["plain_bottleneck"] is True and kw["bn_momentum"] == 0.9
    assert "se_mode" not in backbones.profile_build_kwargs("res_unet", demo)
    assert "plain_bottleneck" not in backbones.profile_build_kwargs("unet", demo)
    model = backbones.build_for_profile("res_unet", 2, get_profile("smoke", plain_bottleneck=False))
    assert any(layer.name == "bottleneck_shortcut" for layer in model.layers)


def test_backbone_label_names_the_se_variant():
    assert backbone_label("se_unet", "authors") == "SEU-Net"
    assert backbone_label("se_unet", "standard") == "SEU-Net (standard SE)"
    assert backbone_label("unet", "standard") == "U-Net"
    with pytest.raises(ValueError, match="unknown backbone"):
        backbone_label("vnet")


def test_run_network_prefers_the_runs_saved_model(tmp_path):
    from innerear.settings.profiles import get_profile

    smoke = get_profile("smoke")
    model, source = run_network(tmp_path, "se_unet", 1, smoke)
    assert "profile `smoke`" in source and "no trained run" in source
    assert any(layer.name.endswith("_se_scale") for layer in model.layers)
    # a run trained with other settings than the profile's: its own network comes back
    trained = build("se_unet", channels=2, size=None, base_filters=3, depth=1, se_mode="authors")
    trained.save(tmp_path / "best.keras")
    loaded, source = run_network(tmp_path, "se_unet", 2, smoke)
    assert "saved model of this run" in source
    assert loaded.count_params() == trained.count_params()
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in trained.layers]
