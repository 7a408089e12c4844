"""One home for paths: the run tree, the cache, saved predictions."""
import numpy as np
import pytest

from innerear.settings import layout
from innerear.settings.profiles import get_profile
from innerear.io import save_npz


def test_paths(tmp_path):
    p = get_profile("smoke")
    assert layout.cache_dir(tmp_path, p) == tmp_path / "data" / "cache" / f"smoke-{p.grid}"
    assert layout.cache_dir(tmp_path, "demo", 64, under="cache") == tmp_path / "cache" / "demo-64"
    assert layout.runs_root(tmp_path) == tmp_path / "runs"
    assert layout.stage_dir(tmp_path / "runs", p, "unet", 2, ("coronal", "sagittal")) == \
        tmp_path / "runs" / "smoke" / "unet" / "fold2" / "coronal" / "sagittal"
    assert layout.evaluation_dir(tmp_path / "runs", "demo") == tmp_path / "runs" / "demo" / "evaluation"


def test_saved_predictions_round_trip(tmp_path):
    folder = tmp_path / "stage"
    (folder / "pred").mkdir(parents=True)
    mask = np.eye(4, dtype=np.uint8)[None].repeat(3, 0)
    save_npz(layout.prediction_path(folder, "a"), prob=mask.astype(np.float16), mask=mask)
    save_npz(layout.prediction_path(folder, "b"), mask=mask)
    prob, m = layout.read_stage_predictions(folder, "a")
    assert prob.dtype == np.float32 and (m == mask).all()
    with pytest.raises(KeyError, match="training volume"):
        layout.read_stage_predictions(folder, "b")
    assert set(layout.read_stage_masks(folder, ["a", "b"])) == {"a", "b"}
