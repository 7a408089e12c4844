"""The package's floors hold: no upward import, no cycle, imports at module top; results code runs
without the deep-learning stack; the command line's mesh output without matplotlib."""
import ast
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# the floors, bottom to top (innerear/__init__.py says what each owns); a module may import
# from its own floor and the floors below it, never from a floor above
FLOORS = ("settings", "io", "metrics", "data", "nets", "inference", "training", "evaluation", "reporting", "cli",
          "__main__")
LAZY_MARK = "# lazy:"


@dataclass(frozen=True)
class Import:
    importer: str  # module name, e.g. innerear.data.preprocess
    target: str  # the innerear module imported (innerear.x.y)
    line: int
    top: bool  # at module top (not inside a function, class or conditional)
    marked: bool  # a lazy import carrying a "# lazy: reason" comment
    typing_only: bool = False  # under ``if TYPE_CHECKING:`` (never runs)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def floor(module: str) -> int | None:
    parts = module.split(".")
    return FLOORS.index(parts[1]) if len(parts) > 1 and parts[1] in FLOORS else None


def imports_of(source: str, module: str) -> list[Import]:
    """Every import of an innerear module in ``source`` (the text of ``module``)."""
    lines = source.splitlines()
    tree = ast.parse(source)
    top = {id(n) for n in tree.body}
    typing = set()
    for node in tree.body:  # imports for type checkers only never run: no cycle, and no lazy import either
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            typing |= {id(n) for n in node.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("innerear"):
            targets = sorted({f"{node.module}.{a.name}" if is_module(f"{node.module}.{a.name}") else node.module
                              for a in node.names})
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name.startswith("innerear")]
        else:
            continue
        text = " ".join(lines[node.lineno - 2:node.end_lineno])  # the line before counts for the mark
        for target in targets:
            found.append(Import(module, target, node.lineno, id(node) in top | typing, LAZY_MARK in text,
                                id(node) in typing))
    return found


def package_imports() -> list[Import]:
    found = []
    for path in sorted((ROOT / "innerear").rglob("*.py")):
        found += imports_of(path.read_text(), module_name(path))
    return found


def upward(imports: list[Import]) -> list[str]:
    """Imports from a higher floor than the importer's."""
    out = []
    for imp in imports:
        low, high = floor(imp.importer), floor(imp.target)
        if low is not None and high is not None and high > low:
            out.append(f"{imp.importer}:{imp.line} imports {imp.target} ({FLOORS[low]} < {FLOORS[high]})")
    return out


def cycles(imports: list[Import]) -> list[list[str]]:
    """Strongly connected groups of two or more modules (an import cycle), by Tarjan's algorithm."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        # the package root's lazy exports (``innerear.Segmenter``, PEP 562 ``__getattr__``) run on
        # attribute access, after the root has finished initialising: they close no import cycle
        root_lazy = imp.importer == "innerear" and not imp.top
        if not imp.typing_only and not root_lazy:
            graph.setdefault(imp.importer, set()).add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in list(graph):
        if v not in index:
            visit(v)
    return groups


def unmarked_lazy(imports: list[Import]) -> list[str]:
    return [f"{i.importer}:{i.line} imports {i.target} inside a function without '{LAZY_MARK} <reason>'"
            for i in imports if not i.top and not i.marked]


def test_every_module_is_on_a_floor():
    assert [m for m in {i.importer for i in package_imports()} if floor(m) is None and m != "innerear"] == []


def test_no_import_runs_upward():
    assert upward(package_imports()) == []


def test_no_import_cycles():
    assert cycles(package_imports()) == []


def test_package_imports_sit_at_module_top_unless_marked_lazy():
    assert unmarked_lazy(package_imports()) == []


def test_the_floor_checks_fail_on_planted_imports():
    planted = imports_of("from innerear.cli import main\n", "innerear.settings.profiles")
    assert upward(planted) == ["innerear.settings.profiles:1 imports innerear.cli (settings < cli)"]
    loop = (imports_of("from innerear.metrics.cochlea import x\n", "innerear.metrics.anatomy")
            + imports_of("from innerear.metrics.anatomy import y\n", "innerear.metrics.cochlea"))
    assert cycles(loop) == [["innerear.metrics.anatomy", "innerear.metrics.cochlea"]]
    root = (imports_of("from innerear import __version__\n", "innerear.inference.report")
            + imports_of("from innerear.inference.report import x\n", "innerear"))
    assert cycles(root) == [["innerear", "innerear.inference.report"]]  # only the root's lazy exports are exempt
    root_lazy = root[:1] + imports_of("def __getattr__(n):\n    # lazy: x\n    from innerear.inference.report import x\n",
                                      "innerear")
    assert cycles(root_lazy) == []
    lazy = imports_of("def f():\n    from innerear.io import read_volume\n", "innerear.data.preprocess")
    assert len(unmarked_lazy(lazy)) == 1
    marked = imports_of("def f():\n    # lazy: start-up time\n    from innerear.io import read_volume\n", "innerear.data.x")
    assert unmarked_lazy(marked) == []

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


def test_import_innerear_stays_light():
    """``innerear.Segmenter`` is exported lazily: ``import innerear`` loads neither the inference floor
    nor SciPy, and the name resolves on first use."""
    code = ("import sys, innerear\nprint('innerear.inference' in sys.modules, 'scipy' in sys.modules)\n"
            "print(innerear.Segmenter.__module__, 'keras' in sys.modules)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["False", "False", "innerear.inference.segment", "False"]


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
