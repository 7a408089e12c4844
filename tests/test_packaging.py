"""The install files agree, and the project layout is what the README promises."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[=<>!\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pins(reqs):
    return {_name(r): r.split("==", 1)[1] if "==" in r else None for r in reqs}


def test_environment_yml_names_the_same_packages_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"]) + project["optional-dependencies"]["book"] + project["optional-dependencies"]["dev"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_list = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    env_reqs = [r for r in pip_list if not r.startswith("-e")]
    assert _pins(env_reqs) == _pins(wanted)
    assert any(str(d).startswith("python=3.11") for d in env["dependencies"] if isinstance(d, str))


def test_pins_are_exact_and_match_constraints():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    constraints = _pins(l for l in (ROOT / "constraints.txt").read_text().splitlines() if "==" in l)
    for req in project["dependencies"]:
        name, version = _name(req), _pins([req])[_name(req)]
        assert version, f"{req} is not pinned"
        assert constraints.get(name) == version, f"{name}: pyproject {version}, constraints {constraints.get(name)}"


def test_layout_and_entry_points():
    for path in ("book", "notebooks", "innerear", "data", "_config.yml", "_toc.yml", "environment.yml",
                 "README.md", "Makefile", ".ci/run"):
        assert (ROOT / path).exists(), path
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["innerear"] == "innerear.cli:main"
    assert "make test" in (ROOT / ".ci/run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make reproduce" in readme and "make test" in readme


def test_notebooks_are_committed_without_outputs_and_have_one_parameters_cell():
    import json

    for nb_path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = json.loads(nb_path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all(not c.get("outputs") and not c.get("execution_count") for c in code), nb_path.name
        tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, nb_path.name
        src = "".join(c["source"] if isinstance(c["source"], str) else "".join(c["source"]) for c in code)
        assert "sys.path" not in src, f"{nb_path.name} manipulates sys.path"


def test_keras_only_api_in_the_package():
    for py in (ROOT / "innerear").glob("*.py"):
        text = py.read_text()
        for line in text.splitlines():
            if "import tensorflow" in line:
                # only behind an explicit backend check (determinism and threads)
                assert py.name == "train.py", f"{py.name} imports tensorflow"
