"""Tests for innerear.backbones: layout, parameter counts, shapes, saving, determinism."""
from __future__ import annotations

import re
from pathlib import Path

import keras
import numpy as np
import pytest

from innerear import backbones
from innerear.backbones import AUTHORS_PARAMS, BACKBONE_LABELS, build, layer_table, res_unet, se_unet, unet

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

# Paper-size (base 32, depth 3, one input channel) counts of this implementation's
# ResU-Net and SEU-Net; the U-Net's are the authors' (AUTHORS_PARAMS).
PAPER_PARAMS_RES_UNET = 2_017_409
PAPER_PARAMS_SE_UNET = 974_559


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
