"""Results code runs without the deep-learning stack; the command line's mesh output without matplotlib."""
import json
import os
import subprocess
import sys

import pytest

HEAVY = ("keras", "tensorflow", "jax", "torch")


def _imported(modules: list[str], banned: tuple[str, ...]) -> list[str]:
    """Import ``modules`` in a fresh interpreter; return the banned top-level packages it loaded."""
    code = (f"import sys, json\nfor m in {modules!r}: __import__(m)\n"
            f"print(json.dumps(sorted({{k.split('.')[0] for k in sys.modules}} & set({list(banned)!r}))))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", ["innerear.evaluation.results", "innerear.metrics", "innerear.evaluation.table1", "innerear.evaluation.compare",
                                    "innerear.settings.layout", "innerear.settings.views"])
def test_results_code_does_not_import_keras(module):
    assert _imported([module], HEAVY) == []


def test_segment_command_with_mesh_does_not_import_matplotlib():
    # what `innerear segment --mesh` imports before the engine: the CLI, the segmenter, the mesh writer
    assert _imported(["innerear.cli", "innerear.inference.segment", "innerear.io.mesh"], ("matplotlib",)) == []


def test_the_check_can_fail():
    assert "matplotlib" in _imported(["innerear.reporting.figures"], ("matplotlib",))


def test_segment_run_with_mesh_never_loads_the_plotting_module(tmp_path):
    """The whole `innerear segment --mesh` run (shipped model, a small phantom) in a fresh process
    never imports :mod:`innerear.reporting.figures`. (Keras 3 itself imports matplotlib when it is installed,
    in ``keras.src.visualization``, so the process may hold matplotlib all the same.)"""
    from innerear.settings.profiles import get_profile
    from innerear.io import write_volume
    from innerear.data.phantom import generate_specimen

    spec = generate_specimen(0, 7, get_profile("smoke").phantoms)
    scan, mask, mesh = (str(tmp_path / n) for n in ("scan.nii", "m.nii.gz", "m.stl"))
    write_volume(scan, spec.image, spec.affine)
    code = ("import sys\nfrom innerear.cli import main\n"
            f"rc = main(['segment', {scan!r}, '-o', {mask!r}, '--mesh', {mesh!r}, '--quiet', '--allow-empty'])\n"
            "print('VIZ', 'innerear.reporting.figures' in sys.modules, rc)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip().splitlines()[-1] == "VIZ False 0", out.stdout + out.stderr[-2000:]
    assert (tmp_path / "m.stl").stat().st_size > 84
