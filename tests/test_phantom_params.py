"""The phantom's typed parameter draw and its flat record."""
from __future__ import annotations

import dataclasses

import pytest

from innerear.data import phantom as ph
from innerear.settings.profiles import get_profile

SMOKE = get_profile("smoke").phantoms


def test_typed_draw_and_flat_record_agree():
    typed = ph.draw_params(3, 5, SMOKE)
    flat = ph.draw_specimen_params(3, 5, SMOKE)
    assert flat == typed.to_dict()
    assert ph.SpecimenParams.from_dict(flat) == typed
    assert isinstance(typed.anatomy, ph.AnatomyParams) and isinstance(typed.imaging, ph.ImagingParams)
    assert typed.anatomy.turns == flat["turns"] and typed.pose.fov_mm == tuple(flat["fov_mm"])
    assert isinstance(flat["vestibule_semi"], list) and len(flat["vestibule_semi"]) == 3
    # the record keeps the draw's order (the random stream's order)
    assert list(flat)[:7] == ["index", "side", "protocol_index", "protocol_um", "binning", "voxel_mm", "scale"]
    assert list(flat)[-1] == "i_medium"
    with pytest.raises(dataclasses.FrozenInstanceError):
        typed.anatomy.turns = 3.0  # type: ignore[misc]


def test_record_with_missing_or_unknown_keys_is_refused():
    flat = ph.draw_specimen_params(0, 0, SMOKE)
    with pytest.raises(ValueError, match="missing \\['turns'\\]"):
        ph.SpecimenParams.from_dict({k: v for k, v in flat.items() if k != "turns"})
    with pytest.raises(ValueError, match="unknown \\['turn'\\]"):
        ph.SpecimenParams.from_dict({**flat, "turn": 2.6})


def test_a_changed_record_is_what_is_generated(monkeypatch):
    draw = ph.draw_specimen_params

    def quiet(*args, **kwargs):
        record = draw(*args, **kwargs)
        record["noise_frac"] = 0.0
        return record

    noisy = ph.generate_specimen(0, 0, SMOKE)
    monkeypatch.setattr(ph, "draw_specimen_params", quiet)
    clean = ph.generate_specimen(0, 0, SMOKE)
    assert clean.meta["imaging"]["noise_frac"] == 0.0 != noisy.meta["imaging"]["noise_frac"]
    assert (clean.label == noisy.label).all() and (clean.image != noisy.image).any()
