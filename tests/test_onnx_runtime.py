"""The ONNX runtime of ``innerear segment``: the shipped exports are current and answer like their
networks, a scan gives the same mask with either runtime, the ONNX run never imports TensorFlow,
and a stale or missing export is refused naming the file."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from innerear.inference.modelfolder import (DEFAULT_MODEL, PAPER_RECIPE_MODEL, SegmentError, export_onnx_folder,
                                            read_model_folder)
from innerear.nets.onnx import EXPORT_TOLERANCE, check_export, recorded_sha256, sha256, softmax_last

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("model", [DEFAULT_MODEL, PAPER_RECIPE_MODEL], ids=["robust", "paper"])
def test_shipped_exports_are_current(model):
    folder = read_model_folder(model)
    for stage in folder.stages:
        assert stage.onnx.is_file(), stage.onnx
        assert recorded_sha256(stage.onnx) == sha256(stage.network), f"{stage.onnx} is stale"
    assert folder.runtime("auto") == "onnx"


def test_export_answers_like_its_network():
    stage = read_model_folder(DEFAULT_MODEL).stages[2]  # three input channels, four classes
    worst = check_export(stage.network)
    assert 0.0 <= worst <= EXPORT_TOLERANCE


def _closing_softmax_graph(extra_use: bool = False):
    """A 1x1 convolution to 4 classes in channels-first layout, closed as tf2onnx closes a network:
    ``Softmax(axis=1)`` then a transpose to channels-last (``extra_use``: the softmax also feeds a second output)."""
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.random.default_rng(1).standard_normal((4, 2, 1, 1)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["soft"], axis=1),
             helper.make_node("Transpose", ["soft"], ["y"], perm=[0, 2, 3, 1])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, None, 4])]
    if extra_use:
        nodes.append(helper.make_node("Identity", ["soft"], ["z"]))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [None, 4, None, None]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2, None, None])],
                              outputs, [weights])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])


def test_closing_softmax_moves_behind_the_transpose_with_the_same_answers():
    import onnx
    import onnxruntime as ort

    x = np.random.default_rng(2).standard_normal((3, 2, 5, 7)).astype(np.float32)
    proto = _closing_softmax_graph()
    before = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert softmax_last(proto) and not softmax_last(proto)  # changed once, then nothing left to move
    onnx.checker.check_model(proto)
    assert [(n.op_type, [a.i for a in n.attribute if a.name == "axis"]) for n in proto.graph.node[-2:]] == \
        [("Transpose", []), ("Softmax", [3])]
    after = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert after.shape == (3, 5, 7, 4) and np.array_equal(after, before)
    assert not softmax_last(_closing_softmax_graph(extra_use=True))  # its channels-first result is used elsewhere
    for stage in read_model_folder(DEFAULT_MODEL).stages:  # the shipped exports are written this way
        assert [n.op_type for n in onnx.load(str(stage.onnx)).graph.node[-2:]] == ["Transpose", "Softmax"]


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    from innerear.data.phantom import generate_specimen
    from innerear.io import write_volume
    from innerear.settings.profiles import get_profile

    path = tmp_path_factory.mktemp("onnx") / "scan.nii"
    spec = generate_specimen(0, 7, get_profile("smoke").phantoms)
    write_volume(path, spec.image, spec.affine)
    return path


def test_both_runtimes_give_the_same_segmentation(scan):
    from innerear.inference.segment import segment_scan

    out = {}
    for runtime in ("onnx", "keras"):
        labels: dict = {}
        mask, _, report = segment_scan(scan, DEFAULT_MODEL, labels_out=labels, runtime=runtime)
        assert report["model"]["runtime"] == runtime
        out[runtime] = (mask, labels["labels"], report)
    (mask_o, labels_o, rep_o), (mask_k, labels_k, rep_k) = out["onnx"], out["keras"]
    assert mask_o.any()
    assert np.array_equal(mask_o, mask_k) and np.array_equal(labels_o, labels_k)
    assert rep_o["inner_ear"] == rep_k["inner_ear"]


def test_onnx_segmentation_never_imports_tensorflow(scan, tmp_path):
    code = ("import sys; from innerear.inference.segment import segment_scan; "
            f"m, _, r = segment_scan({str(scan)!r}); assert m.any() and r['model']['runtime'] == 'onnx'; "
            "print(sorted(k for k in ('tensorflow', 'keras', 'jax', 'torch') if k in sys.modules))")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_stale_export_is_refused_naming_it(tmp_path, scan):
    from innerear.inference.segment import load_model_dir

    model = shutil.copytree(DEFAULT_MODEL, tmp_path / "model")
    stale = model / "stage1_coronal" / "best.onnx"
    shutil.copy2(model / "stage2_sagittal" / "best.onnx", stale)  # records stage 2's .keras
    for runtime in ("auto", "onnx"):
        with pytest.raises(SegmentError) as info:
            load_model_dir(model, runtime=runtime, reuse=False)
        text = str(info.value)
        assert text.startswith(f"{stale}: ") and "exported from a different best.keras" in text
        assert "innerear export-onnx" in text and "\n" not in text
    assert load_model_dir(model, runtime="keras", reuse=False).info["runtime"] == "keras"


def test_missing_export_falls_back_to_keras_unless_onnx_is_asked_for(tmp_path):
    from innerear.inference.segment import load_model_dir

    model = shutil.copytree(DEFAULT_MODEL, tmp_path / "model")
    missing = model / "stage3_axial" / "best.onnx"
    missing.unlink()
    assert read_model_folder(model).runtime("auto") == "keras"
    with pytest.raises(SegmentError) as info:
        read_model_folder(model).runtime("onnx")
    assert str(info.value).startswith(f"{missing}: no ONNX export of this stage")
    with pytest.raises(SegmentError, match="unknown runtime 'tflite'"):
        read_model_folder(model).runtime("tflite")
    assert load_model_dir(model, reuse=False).info["runtime"] == "keras"


def test_export_onnx_command_writes_current_exports(tmp_path, capsys):
    from innerear import cli

    model = shutil.copytree(DEFAULT_MODEL, tmp_path / "model")
    for onnx in model.glob("*/best.onnx"):
        onnx.unlink()
    (model / "stage2_sagittal" / "best.onnx").write_bytes((DEFAULT_MODEL / "stage1_coronal" / "best.onnx").read_bytes())
    assert cli.main(["export-onnx", str(model)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("exported (answers checked") == 3
    folder = read_model_folder(model)
    assert all(recorded_sha256(s.onnx) == sha256(s.network) for s in folder.stages)
    assert all(oct(s.onnx.stat().st_mode & 0o777) == oct(s.network.stat().st_mode & 0o777) for s in folder.stages)
    assert export_onnx_folder(model) == []  # current: nothing to do
    assert not list(model.rglob("*.tmp")) and not list(model.rglob(".*"))
    spec = json.loads((model / "cascade.json").read_text())
    assert spec["stages"] == json.loads((DEFAULT_MODEL / "cascade.json").read_text())["stages"]
