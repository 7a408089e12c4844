"""Measurements as JSON records, and their rendering on the book's Performance page.

Every figure on that page comes from a record written by code: ``innerear reproduce``
writes ``runs/<profile>/timings.json`` (seconds per step), the scripts in ``benchmarks/``
write ``benchmarks/results/<name>.json``. Each record carries the context it was measured
in (:func:`run_context`: date, machine, package versions), so the page can say where a
figure comes from. Nothing here imports the deep-learning stack.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import statistics
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from innerear.reporting import labels
from innerear.io import write_json
from innerear.settings.profiles import BACKBONE_LABELS

if TYPE_CHECKING:
    import pandas as pd

PACKAGES = ("innerear", "numpy", "scipy", "keras", "tensorflow-cpu", "tensorflow", "jax", "papermill")
RESULTS_DIR = Path("benchmarks") / "results"  # relative to the project root


def timings_path(root: str | os.PathLike, profile: str) -> Path:
    """Where ``innerear reproduce --profile PROFILE`` records the seconds of its steps."""
    return Path(root) / "runs" / profile / "timings.json"


def results_path(root: str | os.PathLike, benchmark: str) -> Path:
    """Where the benchmark script ``benchmarks/<benchmark>.py`` writes its record."""
    return Path(root) / RESULTS_DIR / f"{benchmark}.json"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# the vector extensions that set what these cores can do in fp32 (the machine kind has come with
# and without AVX-512, and the training and segmenting records differ widely between them)
VECTOR_EXTENSIONS = {"avx2": "AVX2", "fma": "FMA", "avx512f": "AVX-512", "avx512_bf16": "AVX-512 BF16",
                     "amx_tile": "AMX"}


def cpu_flags() -> dict[str, bool]:
    """Which of :data:`VECTOR_EXTENSIONS` this CPU reports (``/proc/cpuinfo``; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as fh:
            line = next((ln for ln in fh if ln.startswith("flags")), "")
    except OSError:
        return {}
    flags = set(line.split(":", 1)[1].split()) if ":" in line else set()
    return {f: f in flags for f in VECTOR_EXTENSIONS} if flags else {}


def vector_extensions_text(flags: dict[str, bool]) -> str:
    """'AVX2, FMA; no AVX-512, AVX-512 BF16, AMX' from :func:`cpu_flags`' answer ('' when unknown)."""
    has = [n for f, n in VECTOR_EXTENSIONS.items() if flags.get(f) is True]
    lacks = [n for f, n in VECTOR_EXTENSIONS.items() if flags.get(f) is False]
    return "; ".join(p for p in (", ".join(has), "no " + ", ".join(lacks) if lacks else "") if p)


def _memory_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def versions(packages: Iterable[str] = PACKAGES) -> dict[str, str]:
    """Installed versions of ``packages`` (those not installed are left out)."""
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def run_context() -> dict[str, Any]:
    """Where and when a measurement is taken: UTC date, machine and package versions."""
    mem = _memory_gib()
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "system": platform.system(),
                    "memory_gib": round(mem, 1) if mem else None, "cpu_flags": cpu_flags()},
        "versions": versions(),
        "command": _command(),
    }


def _command() -> str:
    """The command line of this process (``python -m innerear`` shown as ``innerear``)."""
    if not sys.argv or not sys.argv[0]:
        return ""
    prog = Path(sys.argv[0])
    name = prog.parent.name if prog.name == "__main__.py" else prog.name
    return " ".join([name, *sys.argv[1:]])


def write_record(path: str | os.PathLike, kind: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` with its :func:`run_context` as JSON (atomically) to ``path``."""

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json(path, {"kind": kind, "context": run_context(), **payload})


def read_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """A record written by :func:`write_record`, or None when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    if not isinstance(record, dict) or "context" not in record:
        raise ValueError(f"{path}: not a measurement record (no 'context')")
    return record


# ----------------------------------------------------------------------------- rendering
def format_value(value: Any) -> str:
    """A cell: floats to 4 significant digits (thousands separated), the rest as text."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
        return " / ".join(format_value(v) for v in value)
    return str(value)


def context_line(record: dict[str, Any]) -> str:
    """One sentence: when, on what machine, with which versions, by which command."""
    ctx = record["context"]
    m = ctx.get("machine", {})
    v = ctx.get("versions", {})
    tf = v.get("tensorflow-cpu") or v.get("tensorflow")
    libs = ", ".join(f"{k} {x}" for k, x in (("keras", v.get("keras")), ("tensorflow", tf), ("jax", v.get("jax")))
                     if x)
    mem = f", {m['memory_gib']} GiB memory" if m.get("memory_gib") else ""
    vec = vector_extensions_text(m.get("cpu_flags") or {})
    mem = f", {vec}{mem}" if vec else mem
    cmd = f" by `{ctx['command']}`" if ctx.get("command") else ""
    return (f"Measured {ctx.get('date', '?')}{cmd} on {m.get('cpu_count', '?')} CPU(s) ({m.get('cpu', '?')}"
            f"{mem}); Python {v.get('python', '?')}{', ' + libs if libs else ''}.")


def record_part(record: dict[str, Any], name: str, *parts: str) -> str:
    """A page section from a benchmark's record: its paragraphs and tables, then the context line
    naming ``benchmarks/results/<name>.json``."""
    return "\n\n".join([*parts, context_line(record) + f" Source: `benchmarks/results/{name}.json`."])


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def records_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> pd.DataFrame:
    """Rows of a record (list of dicts, nested dicts flattened) as a table of strings."""
    import pandas as pd

    flat = []
    for row in rows:
        f: dict[str, Any] = {}
        _flatten("", row, f)
        flat.append({k: v for k, v in f.items() if not (isinstance(v, list) and len(v) > 6)})
    table = pd.DataFrame(flat)
    if columns:
        table = table[[c for c in columns if c in table.columns]]
    # a reader's headers (innerear.reporting.labels) and no NaN cell: a value not measured shows as a dash
    return table.map(lambda v: labels.MISSING if labels.cell(v) is labels.MISSING else format_value(v)).rename(
        columns=labels.header)


def to_markdown(table: pd.DataFrame) -> str:
    """A small markdown table (no extra dependency)."""
    head = "| " + " | ".join(str(labels.header(c)) for c in table.columns) + " |"
    sep = "|" + " --- |" * len(table.columns)
    body = ["| " + " | ".join(str(x).replace("|", "\\|") for x in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([head, sep, *body])


def render_record(record: dict[str, Any], columns: dict[str, list[str]] | None = None) -> str:
    """Markdown for any record: its context, each list of rows as a table, other values listed."""
    parts = [context_line(record)]
    scalars: dict[str, Any] = {}
    for key, value in record.items():
        if key in ("kind", "context"):
            continue
        if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
            parts.append(f"**{key}**\n\n" + to_markdown(records_table(value, (columns or {}).get(key))))
        elif isinstance(value, dict) and value and all(isinstance(r, dict) for r in value.values()):
            rows = [{"": k, **r} for k, r in value.items()]
            parts.append(f"**{key}**\n\n" + to_markdown(records_table(rows, (columns or {}).get(key))))
        else:
            _flatten(key, value, scalars)
    if scalars:
        parts.append("\n".join(f"- {k}: {format_value(v)}" for k, v in scalars.items()))
    return "\n\n".join(parts)


def format_seconds(seconds: float) -> str:
    """``75.3`` → ``"1 min 15 s"``; under a minute with one decimal."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min {secs} s" if hours else f"{minutes} min {secs} s"


def timings_table(record: dict[str, Any]) -> pd.DataFrame:
    """The steps of an ``innerear reproduce`` run (``timings.json``): step, seconds, share."""
    import pandas as pd

    total = record.get("total_s")
    rows = [{"step": st["step"], "seconds": f"{st['seconds']:.1f}", "time": format_seconds(st["seconds"]),
             "share of total": f"{st['seconds'] / total:.0%}" if total else ""} for st in record["steps"]]
    if total is not None:
        rows.append({"step": "**total** (wall clock)", "seconds": f"{total:.1f}", "time": format_seconds(total),
                     "share of total": ""})
    return pd.DataFrame(rows)


def missing_note(what: str, command: str) -> str:
    """The page's sentence for a measurement that has not been made on this machine."""
    return f"*Not yet measured on this machine* ({what} is absent): run `{command}`."


def paper_runtime() -> "pd.DataFrame":
    """The paper's seconds per volume on its GPU and CPU machines (``data/runtime_paper.csv``)."""
    from importlib.resources import files

    import pandas as pd

    with (files("innerear.evaluation") / "paper" / "runtime_paper.csv").open() as fh:
        return pd.read_csv(fh)


def _mean(summary: dict[str, Any] | None, key: str) -> str:
    item = (summary or {}).get(key)
    return "n/a (not in the field of view)" if not item else f"{item['mean']:.3f}"


def domain_shift_table(record: dict[str, Any], structures: bool = True) -> pd.DataFrame:
    """The domain-shift matrix (``benchmarks/bench_domain_shift.py``): one row per held-out cell,
    the Dice of each model (mean over the cell's scans, its minimum in brackets) and, per
    structure, the mean Dice."""
    import pandas as pd

    def span(values: list[float], digits: int) -> str:
        lo, hi = (round(v, digits) for v in values)
        return f"{lo:g}" if lo == hi else f"{lo:g}–{hi:g}"

    rows = []
    for entry in record["cells"]:
        cell = entry["cell"]
        style = {"cbct": "cone-beam CT", "microct": "micro-CT", "demo": "demo phantom (reference)"}[cell["style"]]
        row = {"style": style, "voxel (mm)": span(entry["voxel_mm"], 3),
               "field of view (mm)": span(entry["fov_mm"], 0) + (" (cochlea crop)" if cell["centre"] == "cochlea" else ""),
               "units": cell["units"], "scans": str(entry["n"])}
        for name, result in entry["models"].items():
            s = result["summary"]
            row[f"{name}: Dice"] = f"{s['dice']['mean']:.3f} (min {s['dice']['min']:.3f})"
            if structures:
                for part in ("cochlea", "vestibule", "canals"):
                    row[f"{name}: {part}"] = _mean(s, f"dice_{part}")
        rows.append(row)
    return pd.DataFrame(rows)


def domain_shift_sentence(record: dict[str, Any], model: str = "robust") -> str:
    """One computed sentence: the goal, and the cells that meet or miss it."""
    goal = float(record.get("goal_dice", 0.85))
    means = {e["cell"]["name"]: e["models"][model]["summary"]["dice"]["mean"] for e in record["cells"]
             if e["cell"].get("held_out", True)}
    missed = {k: v for k, v in means.items() if v < goal}
    lo = min(means.values())
    text = (f"The {model} model's mean Dice ranges from {lo:.3f} to {max(means.values()):.3f} over "
            f"{len(means)} held-out cells; ")
    if not missed:
        text += f"every cell meets the goal of {goal:.2f}."
    else:
        text += f"{len(missed)} of {len(means)} miss the goal of {goal:.2f}: " + "; ".join(
            f"{k} ({v:.3f})" for k, v in missed.items()) + "."
    weak: dict[str, list[float]] = {}
    for e in record["cells"]:
        if not e["cell"].get("held_out", True):
            continue
        for part in ("cochlea", "vestibule", "canals"):
            item = e["models"][model]["summary"].get(f"dice_{part}")
            if item and item["mean"] < goal:
                weak.setdefault(part, []).append(item["mean"])
    if weak:
        text += " Per structure the goal is missed: " + "; ".join(
            f"{part} in {len(v)} of {len(means)} cells (lowest {min(v):.3f})" for part, v in weak.items()) + "."
    return text


README_MARKERS = ("<!-- domain-shift:start (generated by tools/update_readme.py; do not edit) -->",
                  "<!-- domain-shift:end -->")


def speed_sentence(speed: dict[str, Any]) -> str:
    """The shipped model's speed check (its model card's ``speed``) as one sentence."""
    measured = f", measured {speed['measured']}" if speed.get("measured") else ""
    return (f"Speed: {speed['what']}: median {speed['median_wall_s']:.1f} s over {speed['runs']} runs "
            f"({speed['median_inside_command_s']:.1f} s inside the command{measured}).")


def domain_shift_markdown(record: dict[str, Any], speed: dict[str, Any] | None = None) -> str:
    """The README's block: the matrix (Dice per cell and model, the robust model per structure),
    the computed sentence, the model card's speed check, and where the figures come from."""
    table = domain_shift_table(record)
    keep = [c for c in table.columns if not c.startswith("paper recipe: ") or c.endswith("Dice")]
    parts = [to_markdown(table[keep]), domain_shift_sentence(record)]
    if speed:
        parts.append(speed_sentence(speed))
    parts.append(context_line(record) + " Source: `benchmarks/results/domain_shift.json`, written by "
                 "`benchmarks/bench_domain_shift.py`; speed: the model card, written by `tools/ship_robust.py`.")
    return "\n\n".join(parts)


def shipped_speed(root: str | os.PathLike) -> dict[str, Any] | None:
    """The default shipped model's speed check from its model card (None when it has none)."""
    card = Path(root) / "innerear" / "models" / "robust_cascade" / "model_card.json"
    return json.loads(card.read_text()).get("speed") if card.exists() else None


def replace_readme_block(text: str, block: str) -> str:
    """``text`` with the part between :data:`README_MARKERS` replaced by ``block``."""
    start, end = README_MARKERS
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"README has no {start!r} ... {end!r} block")
    return text[: i + len(start)] + "\n" + block + "\n" + text[j:]


# ----------------------------------------------------------------------------- real scans
REAL_SCANS = "bench_real"  # benchmarks/bench_real.py's record: benchmarks/results/bench_real.json
REAL_SCANS_COMMAND = ".venv/bin/python benchmarks/bench_real.py --data FOLDER"


def _pair(a: Any, b: Any, digits: int) -> str:
    """``"a / b"`` with ``digits`` decimals, a dash for a value not measured."""
    return " / ".join(labels.MISSING if v is None else f"{v:.{digits}f}" for v in (a, b))


def _real_scan_row(case: dict[str, Any]) -> dict[str, str]:
    stored, mirrored = case.get("as_stored"), case.get("mirrored")
    row = {"case": case["case"], "labelled": ", ".join(case.get("labelled") or []) or labels.MISSING}
    if stored is None:
        return dict(row, **{"Dice as stored": "not scored"})
    whole = stored["inner_ear"]
    cochlea = (stored.get("structures") or {}).get("cochlea")
    pred, expert = stored["cochlea_predicted"], stored.get("cochlea_expert") or {}
    return dict(row, **{
        "Dice as stored": f"{whole['dice']:.3f}",
        "Dice mirrored": f"{mirrored['inner_ear']['dice']:.3f}" if mirrored else labels.MISSING,
        "mirrored − as stored": f"{case['dice_difference']:+.3f}" if mirrored else labels.MISSING,
        "cochlea Dice": f"{cochlea['dice']:.3f}" if cochlea else labels.MISSING,
        "HD95 (mm)": labels.MISSING if whole["hd95_mm"] is None else f"{whole['hd95_mm']:.2f}",
        "volume error (%)": labels.MISSING if whole["volume_error_pct"] is None else f"{whole['volume_error_pct']:+.1f}",
        "CDL predicted / expert (mm)": _pair(pred.get("duct_length_mm"), expert.get("duct_length_mm"), 1),
        "turns predicted / expert": _pair(pred.get("turns"), expert.get("turns"), 2),
        "side as read": case.get("side_as_read") or labels.MISSING,
    })


def real_scans_table(record: dict[str, Any]) -> pd.DataFrame:
    """The real-scan record (``benchmarks/bench_real.py``): one row per case, Dice as stored and
    with the header mirrored, the cochlea's Dice, HD95, volume error, duct length and turns on the
    predicted and on the expert cochlea; a dash where a value was not measured."""
    import pandas as pd

    table = pd.DataFrame([_real_scan_row(case) for case in record["cases"]])
    return table.fillna(labels.MISSING)


def real_scans_sentence(record: dict[str, Any]) -> str:
    """One computed sentence: how many cases were scored, the median Dice as stored and mirrored."""
    s = record["summary"]
    if not s["scored"]:
        return f"None of the {s['cases']} cases could be scored (reasons below)."
    mirrored = s.get("median_dice_mirrored")
    return (f"{s['scored']} of {s['cases']} cases scored: median Dice {s['median_dice_as_stored']:.3f} as stored "
            f"and {labels.MISSING if mirrored is None else f'{mirrored:.3f}'} with the header mirrored (over the "
            f"structures each label holds).")


def real_scans_markdown(record: dict[str, Any] | None) -> str:
    """The Performance page's "Real scans" section: the record's context, sentence, table and each
    case's reason (not scored, or refused by ``innerear segment`` and scored anyway); without a
    record, one sentence saying that none is present."""
    path = RESULTS_DIR / f"{REAL_SCANS}.json"
    if record is None:
        return (f"No real-scan record is present (`{path.as_posix()}` is absent): it is written by "
                f"`{REAL_SCANS_COMMAND}` on labelled scans, which this project does not hold.")
    parts = [context_line(record), real_scans_sentence(record), to_markdown(real_scans_table(record))]
    notes = [f"- {case['case']}: {case['reason']}" for case in record["cases"] if case.get("reason")]
    if notes:
        parts.append("\n".join(notes))
    return "\n\n".join(parts)


# --------------------------------------------------------------------------- clinical CBCT (issue 22)
CLINICAL = {"ablation": "clinical_ablation", "matrix": "clinical_matrix"}


def clinical_table(record: dict[str, Any]) -> pd.DataFrame:
    """``benchmarks/bench_clinical.py``'s record: one row per cell, per model the mean Dice (its
    minimum) and the mean cochlea Dice, and where the lumen sat after normalisation."""
    import pandas as pd

    rows = []
    for entry in record["cells"]:
        cell = entry["cell"]
        row = {"cell": cell["name"]}
        if record.get("part") == "ablation":
            row = {"factor": cell.get("factor", ""), **row}
        if "skipped" in entry:
            row["scans"] = f"not run: {entry['skipped']}"
            rows.append(row)
            continue
        pos = entry.get("lumen_position") or []
        row["scans"] = str(entry["n"])
        row["lumen after normalisation"] = f"{min(pos):.2f}–{max(pos):.2f}" if pos else "n/a"
        for name, result in entry["models"].items():
            s = result["summary"]
            row[f"{name}: Dice"] = f"{s['dice']['mean']:.3f} (min {s['dice']['min']:.3f})"
            row[f"{name}: cochlea"] = _mean(s, "dice_cochlea")
        rows.append(row)
    return pd.DataFrame(rows).fillna("")


def clinical_sentence(record: dict[str, Any]) -> str:
    """One computed sentence per model: the matrix's goal met or not (cells missing it named), or
    for the ablation the factor that cost the most Dice against the base cell."""
    models = list(record.get("models", {}))
    cells = [e for e in record["cells"] if "models" in e]
    out = []
    for name in models:
        dice = {e["cell"]["name"]: e["models"][name]["summary"]["dice"]["mean"] for e in cells}
        coch = {e["cell"]["name"]: (e["models"][name]["summary"].get("dice_cochlea") or {"mean": 0.0})["mean"]
                for e in cells}
        if record.get("part") == "matrix":
            missed = [k for k in dice if dice[k] < 0.85 or coch[k] < 0.80]
            text = (f"{name}: mean Dice {min(dice.values()):.3f}–{max(dice.values()):.3f} and cochlea Dice "
                    f"{min(coch.values()):.3f}–{max(coch.values()):.3f} over {len(dice)} cells; ")
            text += ("every cell meets the goal (Dice ≥ 0.85, cochlea ≥ 0.80)." if not missed else
                     f"{len(missed)} of {len(dice)} cells miss the goal (Dice ≥ 0.85, cochlea ≥ 0.80): "
                     + "; ".join(missed) + ".")
        else:
            base = next((e for e in cells if e["cell"].get("factor") == "base"), None)
            if base is None:
                continue
            b = base["models"][name]["summary"]["dice"]["mean"]
            single = [e for e in cells if e["cell"].get("factor") not in ("base", "all", "all, other side")]
            worst = min(single, key=lambda e: e["models"][name]["summary"]["dice"]["mean"])
            w = worst["models"][name]["summary"]["dice"]["mean"]
            text = (f"{name}: base cell Dice {b:.3f}; the factor that costs most on its own is "
                    f"{worst['cell'].get('factor')} ({worst['cell']['name']}: {w:.3f}, {w - b:+.3f})")
            together = [e for e in cells if str(e["cell"].get("factor", "")).startswith("all")]
            if together:
                text += "; all factors together: " + ", ".join(
                    f"{e['cell']['name'].split('), ')[-1]} {e['models'][name]['summary']['dice']['mean']:.3f}"
                    for e in together)
            text += "."
        out.append(text)
    return " ".join(out)


def clinical_markdown(record: dict[str, Any] | None, part: str) -> str:
    """The Performance page's section body for one part of ``bench_clinical.py``."""
    if record is None:
        return missing_note(f"`benchmarks/results/{CLINICAL[part]}.json`",
                            f".venv/bin/python benchmarks/bench_clinical.py --part {part}")
    return record_part(record, CLINICAL[part], to_markdown(clinical_table(record)), clinical_sentence(record))


def readme_block(root: str | os.PathLike) -> str | None:
    """The README's generated block: the domain-shift matrix (with the shipped model's speed) and,
    when measured, the clinical CBCT matrix; None without a domain-shift record."""
    record = read_record(results_path(root, "domain_shift"))
    if record is None:
        return None
    parts = [domain_shift_markdown(record, shipped_speed(root))]
    clinical = read_record(results_path(root, CLINICAL["matrix"]))
    if clinical is not None:
        parts += ["**The clinical CBCT matrix** (`benchmarks/bench_clinical.py --part matrix`; SYNTHETIC scans "
                  "made to resemble clinical temporal-bone cone-beam CT: the lumen between 0.2 and 0.6 after "
                  "normalisation, contrast-to-noise 3–8, both sides; `before` is the model shipped before issue 22):",
                  clinical_markdown(clinical, "matrix")]
    return "\n\n".join(parts)


# --------------------------------------------------------------------------- crash safety and load (issue 24)
def fault_injection_markdown(record: dict[str, Any] | None) -> str:
    """``benchmarks/fault_injection.py``'s record: kills by phase, and whether every rerun recovered
    with the same results; or how to measure it."""
    if record is None:
        return missing_note("`benchmarks/results/fault_injection.json`", ".venv/bin/python benchmarks/fault_injection.py")
    rep, seg = record["reproduce"], record["segment"]
    order = ["data preparation", "training", "training: checkpoint write", "notebooks", "book build"]
    hits = sorted(rep["phases_hit"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))
    rows = [{"phase": phase, "SIGKILLs": str(n)} for phase, n in hits]  # in pipeline order
    stages = rep.get("stages") or {}
    same = sum(bool(s.get("same_history")) for s in stages.values())
    copies = rep.get("copies", 1)
    where = (f" in {copies} fresh copies of the project (a rerun that finished the pipeline before the next kill "
             f"ended its copy, checked like a last run)" if copies > 1 else "")
    text = (f"`innerear reproduce --profile smoke` was killed {rep['kills_done']} times (of {rep['kills_planned']} "
            f"planned){where} and rerun after each kill: {len(rep['reruns_failed'])} reruns failed, the final run{'s' if copies > 1 else ''} "
            f"exited {rep['final_exit']}, {len(rep['unreadable_after_final'])} files were unreadable and "
            f"{len(rep['temporaries_after_final'])} temporaries were left; per-volume results "
            f"{'equal' if rep['per_volume_equal'] else 'differ from'} those of an uninterrupted run "
            f"({rep['per_volume']['n_rows']} rows, largest difference {rep['per_volume']['max_abs_diff']:g}); "
            f"{same} of {len(stages)} stages have the same training history. A batch of {seg['scans']} scans of "
            f"`innerear segment` was killed {seg['kills_done']} times mid-write: every scan "
            f"{'has' if seg['every_scan_has_mask_and_report'] else 'does not have'} its mask and report, and the masks "
            f"{'equal' if seg['masks_equal_to_reference'] else 'differ from'} those of an uninterrupted batch.")
    return record_part(record, "fault_injection", to_markdown(records_table(rows)), text)


def load_markdown(record: dict[str, Any] | None) -> str:
    """``benchmarks/bench_load.py``'s record: good and bad scans, and memory across the batch."""
    if record is None:
        return missing_note("`benchmarks/results/bench_load.json`", ".venv/bin/python benchmarks/bench_load.py")
    rows = [{"scan": k, "seconds into the batch": f"{v['seconds']:.0f}", "peak RSS so far (MiB)": f"{v['vm_hwm_mib']:.0f}",
             "RSS (MiB)": f"{v['vm_rss_mib']:.0f}"} for k, v in record["peak_rss_at_scan"].items()]
    n = record["settings"]["n"]
    text = (f"A batch of {n} scans in mixed formats, {record['settings']['bad']} of them corrupt or implausible: "
            f"{record['good_with_mask_and_report']} of {record['good']} good scans got their mask and report, "
            f"{record['bad_reported_failed']} bad ones were reported with their reason, the batch exited "
            f"{record['exit_status']}; median {record['median_scan_s']:.1f} s per scan.")
    return record_part(record, "bench_load", text, to_markdown(records_table(rows)))


PROBE = "bench_probe"  # benchmarks/bench_probe.py's record


def probe_markdown(record: dict[str, Any] | None) -> str:
    """``benchmarks/bench_probe.py``'s record: per group of scans, the Dice with stage 1's probe and with
    every first-stage slice, their paired difference and the cascade's seconds; or how to measure it."""
    if record is None:
        return missing_note("`benchmarks/results/bench_probe.json`", ".venv/bin/python benchmarks/bench_probe.py")
    rows = [{"scans": g["group"], "n": str(g["n"]), "Dice, probe (shipped)": f"{g['probe_dice']:.3f}",
             "Dice, every slice": f"{g['full_dice']:.3f}",
             "difference (worst scan)": f"{g['difference']:+.3f} ({g['worst_difference']:+.3f})",
             "Dice between the masks": f"{g['dice_between']:.3f}",
             "cascade seconds, probe / every slice": f"{g['probe_cascade_s']:.1f} / {g['full_cascade_s']:.1f}"}
            for g in record["groups"]]
    groups = record["groups"]
    n = sum(g["n"] for g in groups)
    tol = float(record["tolerance"])
    worst = min(groups, key=lambda g: g["difference"])
    faster = statistics.median(g["full_cascade_s"] / g["probe_cascade_s"] for g in groups if g["probe_cascade_s"])
    text = (f"On {n} scans in {len(groups)} groups, the probe changes a group's mean Dice by {worst['difference']:+.4f} "
            f"at worst ({worst['group']}); the tolerance is {tol:g}, "
            f"{'kept' if record['passed'] else 'NOT kept'}. The cascade is {faster:.1f} times as fast with it "
            f"(median over the groups).")
    return record_part(record, PROBE, text, to_markdown(records_table(rows)))


TURNS = "bench_turns"  # benchmarks/bench_turns.py's record


def turns_markdown(record: dict[str, Any] | None) -> str:
    """``benchmarks/bench_turns.py``'s record: per turn, the change of Dice from the same phantoms as
    acquired, with and without the pieces near stage 1's largest component; or how to measure it."""
    if record is None:
        return missing_note("`benchmarks/results/bench_turns.json`", ".venv/bin/python benchmarks/bench_turns.py")
    goal = float(record["goal_change"])
    shipped = float(record["shipped_context_gap_mm"])
    rows = []
    for s in record["summary"]:
        acquired = "median_change" not in s
        rows.append({"context to later stages": ("largest component only (the paper)" if s["context_gap_mm"] == 0
                                                 else f"and pieces of {record['context_min_mm3']:g} mm³ or more "
                                                      f"within {s['context_gap_mm']:g} mm (shipped)"),
                     "scan": s["turn"], "phantoms": str(s["n"]), "median Dice": f"{s['median_dice']:.3f}",
                     "median change": "" if acquired else f"{s['median_change']:+.3f}",
                     "largest drop": "" if acquired else f"{s['largest_drop']:.3f}",
                     f"within {goal:g}": "" if acquired else f"{s['within_goal']} of {s['n']}"})
    now = [s for s in record["summary"] if s["context_gap_mm"] == shipped and "median_change" in s]
    within = sum(s["within_goal"] for s in now)
    total = sum(s["n"] for s in now)
    worst = max(now, key=lambda s: s["largest_drop"])
    text = (f"With the shipped engine, {within} of {total} turned scans stay within {goal:g} of the same phantom's "
            f"Dice as acquired; the largest drop is {worst['largest_drop']:.3f} ({worst['turn']}).")
    return record_part(record, TURNS, to_markdown(records_table(rows)), text)


TRAIN_SPEED = "bench_train_speed"  # benchmarks/bench_train_speed.py's record


def _train_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The record's rows with the fields older records lack filled in (TensorFlow, one worker)."""
    return [{"backend": "tensorflow", "workers": 1, **r, "effective_epoch_s": r.get("effective_epoch_s", r["epoch_s"])}
            for r in record["rows"]]


def train_speed_table(record: dict[str, Any]) -> pd.DataFrame:
    """``bench_train_speed``'s configurations: backend, workers, epoch seconds, achieved and peak
    GFLOP/s, speed-up (per epoch of work: two workers side by side finish two epochs at once)."""
    import pandas as pd

    return pd.DataFrame([{
        "configuration": r["name"], "backend": r["backend"], "workers": r["workers"],
        "seconds per epoch (each worker)": f"{r['epoch_s']:.2f}", "seconds per epoch of work": f"{r['effective_epoch_s']:.2f}",
        "achieved GFLOP/s": f"{r['achieved_gflops']:.1f}", "matmul peak GFLOP/s": f"{r['peak_gflops']:.0f}",
        "share of peak": f"{r['share_of_peak']:.0%}", "forward share of a step": f"{r['forward_share']:.0%}",
        "speed vs before": f"{r['speed_vs_before']:.2f}"} for r in _train_rows(record)])


def _cpu_flags_sentence(flags: dict[str, bool]) -> str:
    text = vector_extensions_text(flags)
    return f"This CPU reports {text.replace('; no', ' and not')}." if text else ""


def _label(row: dict[str, Any]) -> str:
    """A configuration's name, with its backend where the name does not say it."""
    return f"{row['name']} (TensorFlow)" if row["backend"] == "tensorflow" else row["name"]


def _spread(row: dict[str, Any]) -> str:
    """' (a-b s over n epochs)' from a row's epochs, when it has more than one."""
    epochs = row.get("all_epoch_s") or []
    return f" (median; {min(epochs):.2f}-{max(epochs):.2f} s over {len(epochs)} epochs)" if len(epochs) > 1 else ""


def _count(n: int) -> str:
    return {2: "Two", 3: "Three", 4: "Four"}.get(n, str(n))


def _compare(a: float, b: float) -> str:
    """'faster' / 'slower' / 'as fast' for a time ``a`` against ``b`` (within 3 % counts as equal)."""
    return "as fast as" if abs(a - b) <= 0.03 * b else ("faster than" if a < b else "slower than")


def train_speed_sentence(record: dict[str, Any]) -> str:
    """What the profile says, from the record: the CPU, the fastest configuration and its share of the
    measured peak, and what a second thread, a second worker, XLA and the other backends did."""
    rows = _train_rows(record)
    tf = [r for r in rows if r["backend"] == "tensorflow"]
    best = min(rows, key=lambda r: r["effective_epoch_s"])
    before = next((r for r in tf if r["spe"] == 1 and r["threads"] == 1 and not r["jit"] and r["workers"] == 1), rows[0])
    parts = [_cpu_flags_sentence(record["context"].get("machine", {}).get("cpu_flags") or {}),
             f"The fastest configuration, {_label(best)}, trains a demo epoch "
             f"{'of work every' if best['workers'] > 1 else 'in'} {best['effective_epoch_s']:.2f} s ({before['epoch_s'] / best['effective_epoch_s']:.2f}× the one-step-per-call "
             f"TensorFlow loop), reaching {best['achieved_gflops']:.0f} GFLOP/s of convolution arithmetic, "
             f"{best['share_of_peak']:.0%} of the {best['peak_gflops']:.0f} GFLOP/s a large matrix product reaches on "
             "these cores with the same threads."]
    alone = [r for r in tf if r["workers"] == 1]
    one = min((r for r in alone if r["threads"] == 1 and not r["jit"]), key=lambda r: r["epoch_s"], default=None)
    two = min((r for r in alone if r["threads"] == 2 and not r["jit"]), key=lambda r: r["epoch_s"], default=None)
    if one and two:
        parts.append(f"On TensorFlow, two threads in one process are {_compare(two['epoch_s'], one['epoch_s'])} one "
                     f"({two['epoch_s']:.2f} vs {one['epoch_s']:.2f} s per epoch).")
    pair = next((r for r in tf if r["workers"] > 1), None)
    if pair and one:
        solo = next((r for r in alone if r["threads"] == 1 and r["spe"] == pair["spe"] and r["jit"] == pair["jit"]), one)
        text = (f"{_count(pair['workers'])} single-thread workers side by side, as `innerear reproduce` runs them, take "
                f"{pair['epoch_s']:.2f} s per epoch each, {pair['epoch_s'] / solo['epoch_s']:.2f}× the "
                f"{solo['epoch_s']:.2f} s of one alone{_spread(pair)}, so {pair['effective_epoch_s']:.2f} s per epoch of work")
        if two:
            text += (f": {_compare(pair['effective_epoch_s'], two['epoch_s'])} one two-thread worker "
                     f"({two['epoch_s']:.2f} s)")
        parts.append(text + ".")
    jit = min((r for r in tf if r["jit"]), key=lambda r: r["epoch_s"], default=None)
    if jit:
        plain = next((r for r in tf if not r["jit"] and r["threads"] == jit["threads"] and r["spe"] == jit["spe"]
                      and r["workers"] == jit["workers"]), None)
        if plain:
            gain = "a gain" if _compare(jit["epoch_s"], plain["epoch_s"]) == "faster than" else "no gain"
            parts.append(f"XLA compilation gives {jit['epoch_s']:.2f} s per epoch against {plain['epoch_s']:.2f} s "
                         f"without: {gain} on this CPU.")
    others = [r for r in rows if r["backend"] != "tensorflow"]
    if others and two:
        fast = min(others, key=lambda r: r["effective_epoch_s"])
        parts.append("On Keras' other backends the same epoch takes "
                     + "; ".join(f"{r['effective_epoch_s']:.2f} s with {r['name']}" for r in others)
                     + f". The fastest of them, {fast['name']}, is {two['epoch_s'] / fast['effective_epoch_s']:.2f}× as "
                       "fast as TensorFlow's best two-thread epoch.")
    return " ".join(p for p in parts if p)


def train_speed_figure(record: dict[str, Any]):
    """Roofline-style bars: each configuration's achieved GFLOP/s against the measured peak of its
    thread count (matrix product), with the share written on each bar."""
    import matplotlib.pyplot as plt

    rows = record["rows"]
    fig, ax = plt.subplots(figsize=(8.5, 0.55 * len(rows) + 1.8))
    y = list(range(len(rows)))[::-1]
    ax.barh(y, [r["peak_gflops"] for r in rows], color="#dddddd", label="peak (matrix product, same threads)")
    ax.barh(y, [r["achieved_gflops"] for r in rows], color="#3b75af", label="achieved (training step)")
    for yi, r in zip(y, rows):
        ax.text(r["achieved_gflops"] + 2, yi, f"{r['share_of_peak']:.0%}, {r['epoch_s']:.2f} s/epoch", va="center",
                fontsize=8)
    ax.set_yticks(y, [r["name"] for r in rows], fontsize=8)
    ax.set_xlabel("GFLOP/s (convolutions only)")
    ax.set_title("Demo U-Net training step on this CPU: achieved vs peak arithmetic", fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def train_speed_markdown(record: dict[str, Any] | None) -> str:
    """The training-step profile: sentence, table, context; or how to measure it."""
    if record is None:
        return missing_note(f"`benchmarks/results/{TRAIN_SPEED}.json`", ".venv/bin/python benchmarks/bench_train_speed.py")
    return record_part(record, TRAIN_SPEED, train_speed_sentence(record), to_markdown(train_speed_table(record)))


REPRODUCE = "bench_reproduce"  # benchmarks/bench_reproduce.py's record


def reproduce_sentence(record: dict[str, Any]) -> str:
    """What ``bench_reproduce``'s record says about issue 25's goal for ``make reproduce``."""
    total, goal = float(record["total_s"]), float(record["goal_s"])
    stages = record["stages"]
    by = stages["stopped_by"]
    patience = by.get("patience", 0)
    causes = {"max_epochs": "the epoch cap"}
    others = ", ".join(f"{n} by {causes.get(k, k)}" for k, n in sorted(by.items()) if k != "patience")
    commit = f" of git {record['git']}" if record.get("git") else ""
    clean = ("from a clean clone" if record.get("from_clean", True)
             else f"resumed (it skipped {', '.join(record.get('skipped_steps') or [])}), so not from a clean tree")
    verdict = ("met" if record["goal_met"] else
               "not met" + ("" if total > goal else ": the time fits, but not every stage stopped by patience"
                            if record.get("from_clean", True) else ": the run was not from a clean tree"))
    around = (f"; `make` around it {format_seconds(float(record['make_wall_s']))} wall"
              if record.get("make_wall_s") is not None else "")
    text = (f"`make reproduce` (profile {record['profile']}){commit}, {clean}, took **{format_seconds(total)}** (the run's "
            f"own total{around}; the goal is {goal / 60:g} min, {verdict}). ")
    text += (f"Its {stages['n']} stages trained {stages['epochs_total']} epochs (median {stages['epochs_median']:g} "
             f"per stage) and {'all' if patience == stages['n'] else patience} of them stopped by patience"
             + (f" ({others})" if others else "") + ".")
    steps = {s["step"]: float(s["seconds"]) for s in record["steps"]}
    training = steps.get("training (all stages)")
    if training:
        text += (f" Training took {format_seconds(training)}, {training / total:.0%} of the run, on "
                 f"{record.get('workers') or 'all'} worker processes.")
    return text


def reproduce_table(record: dict[str, Any]) -> pd.DataFrame:
    """The run's steps in order: minutes and share of the total."""
    import pandas as pd

    total = float(record["total_s"])
    rows = [{"step": s["step"], "time": format_seconds(float(s["seconds"])), "share": f"{float(s['seconds']) / total:.0%}"}
            for s in record["steps"]]
    rows.append({"step": "**total**", "time": format_seconds(total), "share": ""})
    return pd.DataFrame(rows)


def reproduce_markdown(record: dict[str, Any] | None) -> str:
    """``bench_reproduce``'s record: the goal sentence, the steps, the slowest pages; or how to measure it."""
    if record is None:
        return missing_note(f"`benchmarks/results/{REPRODUCE}.json`", ".venv/bin/python benchmarks/bench_reproduce.py")
    pages = sorted(record.get("pages_s", {}).items(), key=lambda kv: -kv[1])[:3]
    slowest = ("The slowest pages: " + ", ".join(f"`{k}` ({format_seconds(v)})" for k, v in pages) + ".") if pages else ""
    return record_part(record, REPRODUCE, reproduce_sentence(record), to_markdown(reproduce_table(record)),
                       *([slowest] if slowest else []))


SEGMENT_PROFILE = "bench_segment_profile"  # benchmarks/bench_segment_profile.py's record
_STEP_NAMES = {"read": "read the scan", "load_model": "load the networks", "prepare": "resample and normalise",
               "cascade": "the cascade (three stages)", "map_back": "map back to the scan's grid",
               "largest_component": "largest component", "measure": "measure and check", "write": "write"}


def segment_profile_table(record: dict[str, Any]) -> pd.DataFrame:
    """One ``innerear segment`` run's wall time split into start-up and the report's steps (medians)."""
    import pandas as pd

    seg = record["segment"]
    steps = dict(seg["median_steps_s"])
    inside = steps.pop("total_inside", sum(steps.values()))
    rows = [{"step": "start-up: interpreter, imports, argument checks",
             "seconds": f"{seg['median_wall_s'] - inside:.1f}"}]
    order = [k for k in _STEP_NAMES if k in steps] + [k for k in steps if k not in _STEP_NAMES]  # pipeline order
    rows += [{"step": _STEP_NAMES.get(k, k.replace("_", " ")), "seconds": f"{steps[k]:.1f}"} for k in order]
    rows.append({"step": "**wall time** (median)", "seconds": f"{seg['median_wall_s']:.1f}"})
    table = pd.DataFrame(rows)
    table["share"] = [f"{float(s) / seg['median_wall_s']:.0%}" if i < len(rows) - 1 else ""
                      for i, s in enumerate(table["seconds"])]
    return table


#: the configurations' names on the page, in the order of its table (oldest code first; others after)
_CONFIG_NAMES = {"before": "before the speed-up (an earlier checkout)", "previous": "the previous record's code",
                 "shipped": "as shipped (ONNX Runtime)", "keras runtime": "`--runtime keras` (TensorFlow)"}


def _commit(run: dict[str, Any]) -> str:
    """' (git abc1234)' for a configuration whose record names its commit, else ''."""
    return f" (git {run['git']})" if run.get("git") else ""


def _config_name(name: str, run: dict[str, Any]) -> str:
    """A configuration's name on the page, with the commit it ran for an earlier checkout."""
    label = _CONFIG_NAMES.get(name, name)
    earlier = name not in ("shipped", "keras runtime")  # the code measured, not this checkout
    return f"{label}, git {run['git']}" if earlier and run.get("git") else label


def segment_configurations_table(record: dict[str, Any]) -> pd.DataFrame:
    """``innerear segment`` configurations side by side: median wall seconds, runs, speed-up over the first."""
    import pandas as pd

    runs = _in_order(record.get("configurations") or {"shipped": record["segment"]})
    first = next(iter(runs.values()))["median_wall_s"]
    compared = any("same_mask_as_shipped" in r for r in runs.values())  # records from 2026-12-06 on
    return pd.DataFrame([{"configuration": _config_name(name, r), "median wall seconds": f"{r['median_wall_s']:.1f}",
                          "runs": str(r["runs"]), "load the networks": f"{r['median_steps_s'].get('load_model', 0):.1f}",
                          "cascade": f"{r['median_steps_s'].get('cascade', 0):.1f}",
                          "speed-up": f"{first / r['median_wall_s']:.1f}x",
                          **({"same mask as shipped": _yes_no(r.get("same_mask_as_shipped"))} if compared else {})}
                         for name, r in runs.items()])


def segment_cascade_table(record: dict[str, Any]) -> pd.DataFrame:
    """The engine in a warm process: seconds per stage with/without mirroring, stage 1's probe, batch sizes."""
    import pandas as pd

    rows = []
    for r in record["cascade"]:
        row = {"test-time mirroring": "yes" if r["mirror"] else "no",
               "stage 1 probe": f"every {r['probe_step']}th slice" if r.get("probe_step") else "no (every slice)",
               "slices per call": str(r["batch"]), "cascade seconds": f"{r['seconds']:.1f}"}
        for s in r["stages"]:  # the engine counts a mirrored pass's pixels too
            passes = s.get("passes", 2 if r["mirror"] else 1)  # records before 2026-12-06: two with mirroring
            row[f"{s['view']} seconds (share of slice area)"] = f"{s['seconds']:.1f} ({s['pixel_fraction'] / passes:.0%})"
        rows.append(row)
    return pd.DataFrame(rows)


def segment_profile_sentence(record: dict[str, Any]) -> str:
    """The goal, the median, the change from before, and the largest parts, computed from the record."""
    seg, start = record["segment"], record["startup_s"]
    steps = {k: v for k, v in seg["median_steps_s"].items() if k != "total_inside"}
    top = sorted(steps.items(), key=lambda kv: -kv[1])[:2]
    keras_s = start.get("python + keras (tensorflow)")
    ort_s = start.get("python + onnxruntime")
    runs = record.get("configurations") or {}
    shipped = [r for r in record["cascade"] if r["mirror"] and r["batch"] == 8 and r.get("probe_step", 0)]
    full = [r for r in record["cascade"] if r["mirror"] and r["batch"] == 8 and not r.get("probe_step")]
    verdict = "met" if record["goal_met"] else "not met"
    if record["goal_met"] and seg["median_wall_s"] > 0.95 * record["goal_wall_s"]:  # within the runs' noise
        verdict = f"met at the limit ({seg['median_wall_s']:.2f} s; the runs spread from {min(seg['wall_s']):.2f} " \
                  f"to {max(seg['wall_s']):.2f} s)"
    elif record["goal_met"] and max(seg["wall_s"]) > 0.95 * record["goal_wall_s"]:  # a run near or over it
        verdict = f"met, with little to spare (the runs spread from {min(seg['wall_s']):.2f} to {max(seg['wall_s']):.2f} s)"
    text = (f"`innerear segment` on the block takes {seg['median_wall_s']:.1f} s wall (median of {seg['runs']} runs); "
            f"the goal is {record['goal_wall_s']:.0f} s, {verdict}.")
    if "before" in runs:
        before = runs["before"]["median_wall_s"]
        text += (f" Before the speed-up{_commit(runs['before'])} it took {before:.1f} s, {before / seg['median_wall_s']:.1f} times as long "
                 f"(side by side in one run).")
    if "previous" in runs:
        prev = runs["previous"]
        text += (f" The code of the previous record{_commit(prev)} took "
                 f"{prev['median_wall_s']:.1f} s in the same run, {prev['median_wall_s'] / seg['median_wall_s']:.2f} "
                 f"times as long.")
    text += (f" The largest parts: {_STEP_NAMES.get(top[0][0], top[0][0])} ({top[0][1]:.1f} s) and "
             f"{_STEP_NAMES.get(top[1][0], top[1][0])} ({top[1][1]:.1f} s).")
    if keras_s is not None and ort_s is not None:
        text += (f" A fresh interpreter needs {keras_s:.1f} s only to import Keras and TensorFlow, which the "
                 f"shipped runtime avoids, and {ort_s:.1f} s to import ONNX Runtime.")
    elif keras_s is not None:
        text += f" A fresh interpreter needs {keras_s:.1f} s only to import Keras and TensorFlow."
    if "keras runtime" in runs:
        text += f" With `--runtime keras` the same run takes {runs['keras runtime']['median_wall_s']:.1f} s."
    if shipped and full:
        text += (f" In a warm process the cascade takes {shipped[0]['seconds']:.1f} s with stage 1's probe (the "
                 f"shipped setting) and {full[0]['seconds']:.1f} s when stage 1 predicts every slice at full size.")
    plain = [r for r in record["cascade"] if not r["mirror"] and r["batch"] == 8 and r.get("probe_step")]
    if shipped and plain:
        once = [s["view"] for s in shipped[0]["stages"] if s.get("passes") == 1]
        text += (f" Test-time mirroring, which makes a left ear and its mirror image get mirror-image answers, "
                 f"costs {shipped[0]['seconds'] - plain[0]['seconds']:.1f} s of it ({plain[0]['seconds']:.1f} s "
                 f"without)")
        text += (f"; the {' and '.join(once)} stage predicts once, since the mirror only reverses the order of "
                 f"its slices." if once else ".")
    if record.get("network_floor"):
        text += " " + _network_floor_sentence(record)
    return text


def _network_floor_sentence(record: dict[str, Any]) -> str:
    """The cascade's network time at this machine's measured throughput, against the goal."""
    floor, seg = record["network_floor"], record["segment"]
    startup = seg["median_wall_s"] - seg["median_steps_s"].get("total_inside", seg["median_wall_s"])
    views = [s["view"] for s in record["cascade"][0]["stages"]] if record.get("cascade") else []
    views += [v for v in floor["per_slice_ms"] if v not in views]  # the cascade's order (a record's keys are sorted)
    ms = ", ".join(f"{v} {floor['per_slice_ms'][v]:.1f}" for v in views if v in floor["per_slice_ms"])
    least = floor["floor_s"] + startup
    verdict = (f"above the goal of {record['goal_wall_s']:.0f} s before the scan is read, prepared or measured, so "
               f"on this machine the goal needs fewer or smaller slices predicted, not faster code"
               if least > record["goal_wall_s"] else f"within the goal of {record['goal_wall_s']:.0f} s")
    return (f"The stage networks take {ms} ms per {floor['slice_shape'].replace('x', '×')} slice on this machine "
            f"(both cores), so the slices the shipped cascade predicts need at least {floor['floor_s']:.1f} s of "
            f"network time ({floor['floor_s'] / floor['cascade_s']:.0%} of its {floor['cascade_s']:.1f} s); with the "
            f"{startup:.1f} s of start-up and exit outside the report's steps that is {least:.1f} s, {verdict}.")


def _in_order(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Configurations in the page's order (:data:`_CONFIG_NAMES`; a record's keys come back sorted by name)."""
    order = list(_CONFIG_NAMES)
    return dict(sorted(runs.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def _yes_no(value: bool | None) -> str:
    return "n/a" if value is None else ("yes" if value else "no")


def segment_turned_table(record: dict[str, Any]) -> pd.DataFrame:
    """The turned block per configuration: median wall seconds, runs, realigned passes, Dice, same mask."""
    import pandas as pd

    runs = _in_order(record["turned"]["configurations"])
    return pd.DataFrame([{"configuration": _config_name(name, r), "median wall seconds": f"{r['median_wall_s']:.1f}",
                          "runs": str(r["runs"]), "cascade": f"{r['median_steps_s'].get('cascade', 0):.1f}",
                          "realigned passes": str(r["realigned_passes"]),
                          "Dice against the label": f"{r['dice']:.3f}" if r.get("dice") is not None else "n/a",
                          "same mask as shipped": _yes_no(r.get("same_mask_as_shipped"))}
                         for name, r in runs.items()])


def segment_turned_sentence(record: dict[str, Any]) -> str:
    """The turned block's wall time, its realigned passes and Dice, and earlier code's time beside it."""
    turned = record["turned"]
    runs = turned["configurations"]
    seg = runs["shipped"]
    text = (f"Acquired {turned['turn_deg']:g}° further turned, the block takes {seg['median_wall_s']:.1f} s wall "
            f"(median of {seg['runs']} runs, {seg['median_wall_s'] / record['segment']['median_wall_s']:.1f} times "
            f"the block as acquired): the engine finds the labyrinth turned and segments it "
            f"{seg['realigned_passes']} more time{'s' if seg['realigned_passes'] != 1 else ''} in its own frame")
    text += f", Dice {seg['dice']:.3f} against the phantom's label." if seg.get("dice") is not None else "."
    for name in ("previous", "before"):
        if name in runs:
            r = runs[name]
            same = {True: "the same mask voxel for voxel", False: "a different mask"}.get(r.get("same_mask_as_shipped"),
                                                                                        "a mask not compared")
            whose = "The previous record's code" if name == "previous" else "The code from before the speed-up"
            text += (f" {whose}{_commit(r)} took "
                     f"{r['median_wall_s']:.1f} s in the same run, {r['median_wall_s'] / seg['median_wall_s']:.2f} "
                     f"times as long, with {same}.")
    return text


def segment_profile_markdown(record: dict[str, Any] | None) -> str:
    """``bench_segment_profile``'s record: sentence, the steps, the engine per stage, the turned block (when
    measured); or how to measure it."""
    if record is None:
        return missing_note(f"`benchmarks/results/{SEGMENT_PROFILE}.json`",
                            ".venv/bin/python benchmarks/bench_segment_profile.py")
    parts = [to_markdown(segment_configurations_table(record)), to_markdown(segment_profile_table(record)),
             to_markdown(segment_cascade_table(record))]
    if record.get("turned"):
        parts += [segment_turned_sentence(record), to_markdown(segment_turned_table(record))]
    return record_part(record, SEGMENT_PROFILE, segment_profile_sentence(record), *parts)


STOPPING = "bench_stopping"  # benchmarks/bench_stopping.py's record
RECIPE = "bench_recipe"  # benchmarks/bench_recipe.py's record


def _rule(rule: dict[str, Any]) -> str:
    """A stopping rule (a dict with ``min_delta`` and ``patience``) in words."""
    return f"`min_delta` {rule['min_delta']:g}, patience {rule['patience']}"


def stopping_table(record: dict[str, Any]) -> pd.DataFrame:
    """Each stopping rule on the replayed stages: epochs, share of the tree's rule's, held-out Dice kept."""
    import pandas as pd

    rows = []
    for r in sorted(record["rules"], key=lambda r: -r["epoch_share"]):
        mark = " (the replayed run's)" if r.get("baseline") else " (**the demo profile's**)" if r.get("profile_rule") else ""
        rows.append({"rule": _rule(r) + mark, "epochs": r["epochs"], "share of epochs": f"{r['epoch_share']:.2f}",
                     "mean held-out Dice": f"{r['mean_held_out_dice']:.4f}",
                     "mean change": f"{r['mean_dice_change']:+.4f}", "worst stage": f"{r['worst_dice_change']:+.4f}"})
    return pd.DataFrame(rows)


def stopping_sentence(record: dict[str, Any]) -> str:
    """What the replay says about the demo profile's stopping rule against the replayed run's."""
    stages = record["stages"]
    same = sum(1 for s in stages if s["recorded_losses"][: len(s["epochs"])] == [e["loss"] for e in s["epochs"]])
    by_rule = {(r["min_delta"], r["patience"]): r for r in record["rules"]}
    base = record["baseline_rule"]
    ours = by_rule[(record["profile_rule"]["min_delta"], record["profile_rule"]["patience"])]
    old = by_rule[(base["min_delta"], base["patience"])]
    when = str(record.get("replayed") or record["context"]["date"])[:10]
    return (f"{len(stages)} demo stages trained again epoch by epoch on their recorded inputs on {when} "
            f"({same} of {len(stages)} with exactly the training losses the run recorded). "
            f"The demo profile's rule ({_rule(record['profile_rule'])}) trains {ours['epoch_share']:.2f} of the "
            f"epochs of the replayed run's ({_rule(base)}): {ours['epochs']} against {old['epochs']}. "
            f"The networks it keeps score a mean held-out Dice of {ours['mean_held_out_dice']:.4f} against "
            f"{old['mean_held_out_dice']:.4f} ({ours['mean_dice_change']:+.4f}; the largest drop on one stage "
            f"{ours['worst_dice_change']:+.4f}).")


def stopping_figure(record: dict[str, Any]):
    """Held-out Dice after every epoch of each replayed stage, marking the epoch whose network each
    of the two rules (the replayed run's, the demo profile's) keeps."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    stages = record["stages"]
    cols = 3
    rows = math.ceil(len(stages) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(9, 2.3 * rows + 0.8), sharey=True, squeeze=False)
    marks = (("baseline", f"kept by the replayed run's rule ({_rule(record['baseline_rule']).replace('`', '')})",
              "#999999", "o"),
             ("profile", f"kept by the demo profile's rule ({_rule(record['profile_rule']).replace('`', '')})",
              "#d62728", "v"))
    for ax, stage in zip(axes.flat, stages):
        dice = [e["held_out_dice"] for e in stage["epochs"]]
        ax.plot(range(1, len(dice) + 1), dice, color="#3b75af", lw=1.2)
        for key, label, color, marker in marks:
            kept = stage["stops"][key]["kept"]
            ax.plot(kept + 1, dice[kept], marker, color=color, ms=7, label=label, mfc="none" if key == "baseline" else color)
        label = BACKBONE_LABELS.get(stage["backbone"], stage["backbone"])
        ax.set_title(f"{label}, fold {stage['fold']}: {' → '.join(stage['order'])}", fontsize=8)
        ax.set_ylim(0.8, 1.0)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes.flat[len(stages):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("epoch", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("held-out Dice", fontsize=8)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle("Replayed demo stages: held-out Dice after each epoch (synthetic phantoms)", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def stopping_markdown(record: dict[str, Any] | None) -> str:
    """``bench_stopping``'s record: the sentence and the rules' table; or how to measure it."""
    if record is None:
        return missing_note(f"`benchmarks/results/{STOPPING}.json`",
                            ".venv/bin/python benchmarks/bench_stopping.py --tree FINISHED_DEMO_TREE")
    return record_part(record, STOPPING, stopping_sentence(record), to_markdown(stopping_table(record)))


def recipe_table(record: dict[str, Any]) -> pd.DataFrame:
    """Each method's mean held-out Dice with the slower and the faster recipe, paired by specimen."""
    import pandas as pd

    return pd.DataFrame([{"method": m["method"], "mean Dice, slower rule": f"{m['mean_before']:.4f}",
                          "faster rule": f"{m['mean_after']:.4f}", "difference": f"{m['difference']:+.4f}",
                          "largest change on one specimen": f"{m['largest_change']:+.4f}",
                          "Wilcoxon p": f"{m['wilcoxon_p']:.3f}",
                          f"within ±{record['tolerance']:g}": _yes_no(m["within_tolerance"])}
                         for m in record["methods"]])


def recipe_sentence(record: dict[str, Any]) -> str:
    """What the paired full trainings say: the Dice check and what the faster rule saved."""
    before, after = record["runs"]["before"], record["runs"]["after"]
    tol = record["tolerance"]
    outside = [f"{m['method']} {m['difference']:+.4f}" for m in record["methods"] if not m["within_tolerance"]]
    largest = f"the largest mean difference {record['worst_difference']:+.4f}"
    verdict = (f"every method's mean held-out Dice stays within ±{tol:g} ({largest})" if record["passed"] else
               f"**not every method's mean held-out Dice stays within ±{tol:g}** (outside it: {', '.join(outside)}; "
               f"{largest})")
    n = max((m["n"] for m in record["methods"]), default=0)
    text = (f"Trained in full with each rule on the same {n} prepared specimens (one hash of their voxels) and seed: "
            f"with {_rule(after)} (git {after['git']}) against {_rule(before)} (git {before['git']}), {verdict}. "
            f"The stages trained {after['epochs']} "
            f"epochs instead of {before['epochs']} ({record['epoch_ratio']:.2f}×; a median of "
            f"{after['epochs_median']:g} per stage instead of {before['epochs_median']:g})")
    if record.get("training_ratio"):
        text += (f", and training took {format_seconds(after['training_s'])} instead of "
                 f"{format_seconds(before['training_s'])} ({record['training_ratio']:.2f}×)")
    stopped = after["stopped_by"]
    text += (f". {'All' if stopped.get('patience') == after['stages'] else stopped.get('patience', 0)} of its "
             f"{after['stages']} stages stopped by patience.")
    return text


def recipe_markdown(record: dict[str, Any] | None) -> str:
    """``bench_recipe``'s record: the sentence and each method's paired Dice; or how to measure it."""
    if record is None:
        return missing_note(f"`benchmarks/results/{RECIPE}.json`",
                            ".venv/bin/python benchmarks/bench_recipe.py --before OLD_TREE --after NEW_TREE")
    return record_part(record, RECIPE, recipe_sentence(record), to_markdown(recipe_table(record)))
