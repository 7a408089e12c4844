"""Every notebook runs top to bottom with its own default parameters, as JupyterLab runs it.

A reader who opens ``notebooks/`` in JupyterLab (``make lab``) runs the committed notebooks,
not papermill's copies: no parameters are injected, each parameters cell keeps its defaults,
and ``profile`` comes from ``$INNEREAR_PROFILE`` (``make lab PROFILE=smoke``; unset: ``demo``).
This test does that at the smoke profile in a fresh project home (the sources of this
checkout, no phantoms, no cache, no runs), in the README's order 01 → 06, with the kernel each
notebook names (``python3``: this environment's Python, as ``make lab`` starts it) and the
notebook's folder as working directory. So each notebook must build what it needs or find
it made by the notebooks before it: 01 generates the phantoms, 02 and 03 train the fold-0
U-Net runs that 04 and 05 read. It takes about two minutes on two CPU cores.
"""
import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
GENERATED = {"data", "runs", "_build"}  # what a fresh clone does not have yet (data/ only its README)
CELL_TIMEOUT_S = 600


def fresh_home(tmp: Path) -> Path:
    """A project folder with this checkout's sources (linked) and none of its generated state."""
    home = tmp / "innerear"
    home.mkdir()
    for entry in ROOT.iterdir():
        if not entry.name.startswith(".") and entry.name not in GENERATED:
            (home / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    (home / "data").mkdir()
    return home


@pytest.mark.slow
def test_notebooks_run_with_their_defaults_in_a_fresh_home(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    assert [nb.stem[:2] for nb in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07", "08"], NOTEBOOKS
    home = fresh_home(tmp_path)
    # the kernels inherit the environment, as they do from `make lab PROFILE=smoke`
    monkeypatch.setenv("INNEREAR_HOME", str(home))
    monkeypatch.setenv("INNEREAR_PROFILE", "smoke")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    seconds = {}
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert nb.metadata.kernelspec.name == "python3", f"{path.name}: kernel {nb.metadata.kernelspec.name}"
        t0 = time.perf_counter()
        NotebookClient(nb, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(home / "notebooks")}}).execute()
        seconds[path.stem] = round(time.perf_counter() - t0, 1)
        nbformat.write(nb, tmp_path / path.name)  # the executed copy, for a look when a later one fails
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
        assert not errors, f"{path.name}: {errors[0].ename}: {errors[0].evalue}"
    assert (home / "runs" / "smoke" / "evaluation" / "per_volume.csv").exists()
    print("seconds per notebook:", seconds, "total", round(sum(seconds.values()), 1), f"({os.cpu_count()} CPUs)")
