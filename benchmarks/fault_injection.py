"""Fault injection: SIGKILL ``innerear reproduce`` and a batch of ``innerear segment`` at random
moments, rerun them, and check that every rerun recovers.

**reproduce.** A fresh copy of the project (the files git tracks) in a temporary folder is the
project root (``INNEREAR_HOME``; runs, data and the book site ``--site`` all inside it, the
repository's own ``runs/`` is never touched). First an uninterrupted reference run in one copy,
then, in a second copy, ``--kills`` runs killed at chosen moments (``--seed``), each restarted,
and a last run left to finish. A resumed run has less left to do than the last, so a rerun can
finish the whole pipeline before the next kill lands: that copy's results are then checked
like a last run's and the kill is aimed again at a fresh copy (the record's ``copies``), so
every planned kill lands in work still to be done. The kill moments are aimed at phases, in pipeline order: data
preparation (phantoms, prepare), training (inside the training subprocess's epochs, and the
instant a checkpoint's temporary ``.keras`` file appears), notebook execution (papermill) and
the book build; each waits for its phase's marker (a log line, a process, a file) and then a
random delay drawn within the phase's length in the reference run. A kill is SIGKILL to the
whole process group and to every descendant that left it (Jupyter starts kernels in their own
session). What phase each kill hit is read from the log tail and the files present.

After every kill: every ``*.json``, ``*.ipynb``, ``*.csv``, ``*.npz`` and ``*.keras`` under the
run, data and site folders is read back (JSON parsed, archives' members CRC-checked and loaded);
temporaries (``.<name>.*`` of the atomic writer) are listed, and must be gone after the next
run. At the end of each copy: exit 0, no temporaries, every ``.keras`` loaded with Keras, and the evaluation's
``per_volume.csv`` compared with the reference run's (a difference is attributed to the stages
that resumed from a checkpoint).

**segment.** ``--scans`` smoke phantoms as NIfTI, segmented once as a reference, then in a fresh
output folder ``--segment-kills`` batch runs killed mid-run (half of them the instant the run
writes: a temporary output appears, or a scan's first output file while its others are still to
come; half after a random delay) and a last run: every mask and report readable, no
temporaries, ``summary.csv`` complete and equal to the reference's (bar seconds and status),
masks identical. A run that finishes the batch before its kill ends that folder, checked the
same way, and the kill is aimed again at a fresh folder.

The record goes to ``benchmarks/results/fault_injection.json`` (``--json``) through
:func:`innerear.reporting.performance.write_record`.

    .venv/bin/python benchmarks/fault_injection.py [--kills 20] [--seed 0] [--segment-kills 5] [--scans 6]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

PROFILE = "smoke"
PHASE_ORDER = ("startup", "data", "training", "notebooks", "book", "finished")
# share of the kills aimed at each target (in pipeline order)
TARGET_SHARES = (("data", 0.1), ("training", 0.2), ("checkpoint", 0.15), ("notebooks", 0.35), ("book", 0.2))
TEMP_RE = re.compile(r"^\..+\.(tmp|running\.ipynb|tmp\.[a-z]+)$")


# --------------------------------------------------------------------------- processes
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def descendants(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def kill_tree(run: "Logged") -> dict:
    """SIGKILL the process group of ``run`` and every descendant outside it; wait for it."""
    proc = run.proc
    tree = descendants(proc.pid)
    outside = []
    for pid in tree:
        try:
            if os.getpgid(pid) != proc.pid:
                outside.append(pid)
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in outside:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() and "zombie" not in _state(p) for p in tree):
        time.sleep(0.05)
    return {"processes": 1 + len(tree), "outside_group": len(outside),
            "outside_cmd": sorted({cmdline(p).split(" -f ")[0][-60:] for p in outside})[:3]}


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"


class Logged:
    """A process in its own session whose stdout+stderr (``\\r`` or ``\\n`` lines) is collected with times."""

    def __init__(self, cmd: list[str], cwd: Path, env: dict, log: Path) -> None:
        self.t0 = time.perf_counter()
        self.lines: list[tuple[float, str]] = []
        self.log = open(log, "ab")
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buf = b""
        while True:
            chunk = self.proc.stdout.read1(65536) if hasattr(self.proc.stdout, "read1") else self.proc.stdout.read(1)
            if not chunk:
                break
            self.log.write(chunk)
            buf += chunk
            parts = re.split(rb"[\r\n]", buf)
            buf = parts.pop()
            now = time.perf_counter() - self.t0
            self.lines += [(now, p.decode(errors="replace")) for p in parts if p.strip()]
        if buf.strip():
            self.lines.append((time.perf_counter() - self.t0, buf.decode(errors="replace")))
        self.log.flush()

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def finish(self) -> int:
        rc = self.proc.wait()
        self._reader.join(10)
        self.log.close()
        return rc


# --------------------------------------------------------------------------- project copies and checks
def project_copy(dest: Path) -> Path:
    """The files git tracks (as in the working tree) copied into ``dest``."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / os.fsdecode(name)
        if src.is_file():
            (dest / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / os.fsdecode(name))
    return dest


def env_for(project: Path) -> dict:
    return dict(os.environ, INNEREAR_HOME=str(project), PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3",
                PYTHONUNBUFFERED="1")


def watched(project: Path) -> list[Path]:
    """The folders a reproduce run writes: runs, data (phantoms, cache) and the site's executed pages."""
    return [project / "runs", project / "data", project / "site" / "book" / "executed"]


def temporaries(folders: list[Path]) -> list[str]:
    out = []
    for folder in folders:
        if folder.exists():
            out += [str(p) for p in folder.rglob(".*") if TEMP_RE.match(p.name)]
    return sorted(out)


def unreadable(folders: list[Path]) -> list[str]:
    """Published files that do not read back (temporaries and locks are not published)."""
    import numpy as np

    bad = []
    for folder in folders:
        if not folder.exists():
            continue
        for p in folder.rglob("*"):
            if not p.is_file() or p.name.startswith("."):
                continue
            try:
                if p.suffix in (".json", ".ipynb"):
                    json.loads(p.read_text())
                elif p.suffix == ".csv":
                    rows = list(csv.reader(p.open(newline="")))
                    if not rows:
                        raise ValueError("empty")
                elif p.suffix == ".npz":
                    with np.load(p) as z:
                        for k in z.files:
                            z[k]
                elif p.suffix == ".keras":
                    with zipfile.ZipFile(p) as z:
                        broken = z.testzip()
                        if broken or "config.json" not in z.namelist():
                            raise ValueError(f"bad member {broken}")
                elif p.name.endswith(".nii.gz"):
                    import nibabel as nib

                    np.asarray(nib.load(p).dataobj)
            except Exception as exc:  # noqa: BLE001 - any failure to read back is the finding
                bad.append(f"{p}: {type(exc).__name__}: {str(exc)[:120]}")
    return bad


def load_all_keras(folders: list[Path]) -> dict:
    """Load every ``.keras`` file with Keras in a fresh process (the full check, once at the end)."""
    files = [str(p) for f in folders if f.exists() for p in f.rglob("*.keras") if not p.name.startswith(".")]
    code = ("import sys, json\nfrom innerear.nets.checkpoints import load_model\nbad=[]\n"
            "for f in sys.argv[1:]:\n    try: load_model(f)\n    except Exception as e: bad.append(f'{f}: {e}'[:200])\n"
            "print(json.dumps(bad))")
    done = subprocess.run([sys.executable, "-c", code, *files], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3"))
    try:
        bad = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        bad = [f"loader failed: {done.stderr[-300:]}"]
    return {"n": len(files), "unloadable": bad}


# --------------------------------------------------------------------------- phases
def log_phase(text: str) -> str:
    """The pipeline's phase from its log so far."""
    if "Book built" in text:
        return "finished"
    if "Running Jupyter-Book" in text or "Running Sphinx" in text or "[book]" in text:
        return "book"
    if "[papermill]" in text:
        return "notebooks"
    if "[train " in text or "prepare: 100%" in text:
        return "training"
    if "[phantoms]" in text or "prepare:" in text:
        return "data"
    return "startup"


def detail(run: Logged, project: Path) -> str:
    """What was going on at this instant: the log's phase, refined by processes and files."""
    text = run.text()
    phase = log_phase(text)
    tree = descendants(run.proc.pid)
    cmds = [cmdline(p) for p in tree]
    temps = [Path(t) for t in temporaries(watched(project))]
    if any(" innerear run " in c for c in cmds):
        keras_tmp = [t for t in temps if t.name.endswith(".tmp.keras")]
        stages = sorted({str(t.parent.relative_to(project / "runs" / PROFILE)) for t in keras_tmp})
        if keras_tmp:
            return f"training: checkpoint write ({', '.join(t.name.split('.')[1] + '.keras' for t in keras_tmp)} " \
                   f"in {', '.join(stages)})"
        states = sorted((project / "runs" / PROFILE).rglob("state.json")) if (project / "runs").exists() else []
        done = sorted((project / "runs" / PROFILE).rglob("done.json")) if (project / "runs").exists() else []
        return f"training: epochs ({len(done)} stage(s) done, {len(states)} with a checkpoint)"
    if phase == "notebooks":
        running = [t.name.split(".running")[0].split(".", 2)[1] for t in temps if t.name.endswith(".running.ipynb")]
        return f"notebooks: {', '.join(sorted(running)) or 'between pages'}"
    if phase == "book" or any("jupyter-book" in c for c in cmds):
        return "book build"
    if phase == "data":
        last = [line for line in text.splitlines() if "[phantoms]" in line or "prepare" in line][-1:]
        return f"data preparation: {last[0][:60] if last else ''}"
    if phase == "training":
        return "training: starting (Dask, training subprocess start-up)"
    return phase


# --------------------------------------------------------------------------- reproduce
def reproduce_cmd(project: Path, seed: int) -> list[str]:
    return [sys.executable, "-m", "innerear", "reproduce", "--profile", PROFILE, "--seed", str(seed),
            "--site", str(project / "site")]


def phase_times(run: Logged) -> dict[str, float]:
    """Seconds from the start at which each phase began (first marker line), from a finished run's log."""
    starts: dict[str, float] = {}
    text = ""
    for t, line in run.lines:
        text += line + "\n"
        starts.setdefault(log_phase(text), t)
    starts["finished"] = run.elapsed()
    return starts


def plan_kills(n: int, rng: random.Random) -> list[str]:
    counts = {k: int(round(share * n)) for k, share in TARGET_SHARES}
    while sum(counts.values()) > n:
        counts[max(counts, key=counts.get)] -= 1
    while sum(counts.values()) < n:
        counts["notebooks"] += 1
    plan = []
    for k, _ in TARGET_SHARES:
        plan += [k] * counts[k]
    # training and checkpoint kills interleaved (both hit the training phase)
    tr = [t for t in plan if t in ("training", "checkpoint")]
    rng.shuffle(tr)
    it = iter(tr)
    return [next(it) if t in ("training", "checkpoint") else t for t in plan]


def wait_and_kill(run: Logged, project: Path, target: str, lengths: dict[str, float], rng: random.Random) -> dict:
    """Wait for ``target``'s marker, then a random delay within the phase, then kill. Returns what happened."""
    order = PHASE_ORDER.index
    phase_of_target = "training" if target == "checkpoint" else target
    delay = None
    fired_at = None
    note = ""
    while run.proc.poll() is None:
        text = run.text()
        phase = log_phase(text)
        now = run.elapsed()
        if fired_at is None:
            if target == "checkpoint":
                if any(t.endswith(".tmp.keras") for t in temporaries([project / "runs"])):
                    fired_at, delay = now, 0.0
            elif target == "training":
                if any(" innerear run " in cmdline(p) for p in descendants(run.proc.pid)):
                    fired_at, delay = now, rng.uniform(1.0, max(2.0, lengths["training"]))
            elif phase == phase_of_target:
                fired_at, delay = now, rng.uniform(0.0, max(0.5, lengths[phase_of_target]))
            if fired_at is None and order(phase) > order(phase_of_target):
                note = f"{phase_of_target} already complete: killed in {phase}"
                fired_at, delay = now, rng.uniform(0.0, min(20.0, max(0.5, lengths.get(phase, 5.0))))
        if fired_at is not None and now >= fired_at + delay:
            where = detail(run, project)
            info = kill_tree(run)
            return {"target": target, "at_s": round(now, 2), "delay_s": round(delay, 2), "phase": where,
                    "log_phase": log_phase(run.text()), "note": note, **info,
                    "log_tail": [line[:160] for _, line in run.lines[-3:]]}
        time.sleep(0.02 if target == "checkpoint" else 0.1)
    return {"target": target, "at_s": round(run.elapsed(), 2), "phase": "finished before the kill", "rc": run.proc.returncode,
            "log_tail": [line[:160] for _, line in run.lines[-3:]]}


def stage_records(project: Path) -> dict[str, dict]:
    out = {}
    base = project / "runs" / PROFILE
    for f in sorted(base.rglob("stage.json")):
        st = json.loads(f.read_text())
        hist = read_csv(f.parent / "history.csv") if (f.parent / "history.csv").exists() else []
        hist = [{k: v for k, v in row.items() if k != "seconds"} for row in hist]  # the losses, not wall time
        out[str(f.parent.relative_to(base))] = {"epochs": st["epochs"], "best_epoch": st["best_epoch"],
                                                 "test_dice": st["test_dice"], "history": hist}
    return out


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def compare_tables(a: list[dict], b: list[dict]) -> dict:
    if len(a) != len(b) or (a and a[0].keys() != b[0].keys()):
        return {"equal": False, "why": f"{len(a)} vs {len(b)} rows or other columns"}
    diffs = []
    for ra, rb in zip(a, b):
        for k in ra:
            if ra[k] != rb[k]:
                try:
                    d = abs(float(ra[k]) - float(rb[k]))
                except ValueError:
                    d = None
                diffs.append({"row": {c: ra[c] for c in list(ra)[:4]}, "column": k, "reference": ra[k], "faulted": rb[k],
                              "abs_diff": d})
    return {"equal": not diffs, "n_rows": len(a), "n_differences": len(diffs), "differences": diffs[:20],
            "max_abs_diff": max((d["abs_diff"] or 0 for d in diffs), default=0.0)}


def finish_round(ref_dir: Path, fault_dir: Path, final: Logged, final_rc: int, previous_temps: list[str]) -> dict:
    """The checks on one faulted copy once a rerun has finished the pipeline: exit status,
    temporaries, unreadable files, every ``.keras`` loadable, results equal to the reference's."""
    folders = watched(fault_dir)
    final_temps = temporaries(folders)
    pv = Path("runs") / PROFILE / "evaluation" / "per_volume.csv"
    per_volume = (compare_tables(read_csv(ref_dir / pv), read_csv(fault_dir / pv))
                  if (fault_dir / pv).exists() else {"equal": False, "why": "no per_volume.csv after the last run"})
    ref_stages, fault_stages = stage_records(ref_dir), stage_records(fault_dir)
    stages = {k: {"same_history": ref_stages[k]["history"] == fault_stages.get(k, {}).get("history"),
                  "reference_dice": ref_stages[k]["test_dice"], "faulted_dice": fault_stages.get(k, {}).get("test_dice"),
                  "epochs": [ref_stages[k]["epochs"], fault_stages.get(k, {}).get("epochs")]}
              for k in ref_stages}
    return {"copy": fault_dir.name, "final_exit": final_rc, "final_log_tail": final.text().splitlines()[-3:],
            "temporaries_after_final": final_temps, "carried_over": sorted(set(previous_temps) & set(final_temps)),
            "unreadable_after_final": unreadable(folders), "keras_loaded": load_all_keras(folders),
            "per_volume": per_volume, "stages": stages}


def run_reproduce(work: Path, n_kills: int, seed: int, pipeline_seed: int) -> dict:
    """The reference run, then the planned kills, each followed by a rerun. A rerun that finishes
    the pipeline before its kill lands ends that copy (its results are checked against the
    reference) and the kill is aimed again at a fresh copy, so every planned kill meets a pipeline
    with work left in the phase it aims at."""
    rng = random.Random(seed)
    ref_dir = project_copy(work / "reference")
    print(f"[reproduce] reference run (uninterrupted) in {ref_dir}", flush=True)
    ref = Logged(reproduce_cmd(ref_dir, pipeline_seed), ref_dir, env_for(ref_dir), work / "reference.log")
    rc = ref.finish()
    if rc != 0:
        raise RuntimeError(f"the reference run failed ({rc}):\n" + "\n".join(ref.text().splitlines()[-15:]))
    starts = phase_times(ref)
    names = [p for p in PHASE_ORDER if p in starts]
    lengths = {p: starts[names[i + 1]] - starts[p] for i, p in enumerate(names[:-1])}
    lengths.setdefault("book", 15.0)
    ref_seconds = ref.elapsed()
    print(f"[reproduce] reference: {ref_seconds:.0f} s; phase lengths {json.dumps({k: round(v, 1) for k, v in lengths.items()})}",
          flush=True)

    plan = plan_kills(n_kills, rng)
    kills, missed, reruns_failed, carried_over, rounds = [], [], [], [], []
    fault_dir: Path | None = None
    fresh = False
    previous_temps: list[str] = []
    t_all = time.perf_counter()
    pending = list(plan)
    while pending:
        if fault_dir is None:
            fault_dir = project_copy(work / f"faulted{len(rounds) + 1}")
            fresh, previous_temps = True, []
        target = pending[0]
        log = work / f"{fault_dir.name}.log"
        run = Logged(reproduce_cmd(fault_dir, pipeline_seed), fault_dir, env_for(fault_dir), log)
        result = wait_and_kill(run, fault_dir, target, lengths, rng)
        rc = run.finish()
        if result["phase"] == "finished before the kill":
            if rc != 0:
                reruns_failed.append({"copy": fault_dir.name, "rc": rc, "log_tail": "\n".join(run.text().splitlines()[-10:])})
            rounds.append(finish_round(ref_dir, fault_dir, run, rc, previous_temps))
            print(f"[reproduce] {fault_dir.name}: a rerun finished the pipeline (exit {rc}) before the kill aimed at "
                  f"{target}; its results checked, the kill aimed again at a fresh copy", flush=True)
            if fresh:  # even a fresh copy finished first: this target cannot be hit, do not loop
                missed.append(pending.pop(0))
            fault_dir = None
            continue
        fresh = False
        pending.pop(0)
        folders = watched(fault_dir)
        temps = temporaries(folders)
        still = sorted(set(previous_temps) & set(temps))
        if still:
            carried_over.append({"after_kill": len(kills) + 1, "files": still})
        previous_temps = temps
        result.update(kill=len(kills) + 1, copy=fault_dir.name, temporaries_left=len(temps), unreadable=unreadable(folders))
        failed_start = [line for line in run.text().splitlines() if "Traceback" in line or "Error" in line][:3]
        if failed_start:
            result["errors_in_log"] = failed_start
        kills.append(result)
        print(f"[kill {len(kills)}/{len(plan)}] aimed at {target}, at {result['at_s']:.1f} s in {fault_dir.name}: "
              f"{result['phase']}; {len(temps)} temporaries left, {len(result['unreadable'])} unreadable"
              + (f" ({result['note']})" if result.get("note") else ""), flush=True)
    if fault_dir is not None:
        print(f"[reproduce] {fault_dir.name}: last run, left to finish", flush=True)
        final = Logged(reproduce_cmd(fault_dir, pipeline_seed), fault_dir, env_for(fault_dir), work / f"{fault_dir.name}.log")
        final_rc = final.finish()
        if final_rc != 0:
            reruns_failed.append({"copy": fault_dir.name, "rc": final_rc, "log_tail": "\n".join(final.text().splitlines()[-10:])})
        rounds.append(finish_round(ref_dir, fault_dir, final, final_rc, previous_temps))
    fault_seconds = time.perf_counter() - t_all
    carried_over += [{"after_kill": f"final ({r['copy']})", "files": r["carried_over"]} for r in rounds if r["carried_over"]]
    hits: dict[str, int] = {}
    for k in kills:
        key = k["phase"].split(":")[0].split(" (")[0]
        if k["phase"].startswith("training: checkpoint"):
            key = "training: checkpoint write"
        hits[key] = hits.get(key, 0) + 1
    tables = [r["per_volume"] for r in rounds]
    return {
        "kills_planned": len(plan), "kills_done": len(kills), "kills_missed": missed, "copies": len(rounds),
        "phases_hit": hits, "kills": kills, "reruns_failed": reruns_failed,
        "final_exit": max((r["final_exit"] for r in rounds), key=abs, default=None),
        "final_log_tail": rounds[-1]["final_log_tail"] if rounds else [],
        "temporaries_after_final": [t for r in rounds for t in r["temporaries_after_final"]],
        "temporaries_carried_over_a_rerun": carried_over,
        "unreadable_after_final": [f for r in rounds for f in r["unreadable_after_final"]],
        "keras_loaded": {"n": sum(r["keras_loaded"]["n"] for r in rounds),
                         "unloadable": [f for r in rounds for f in r["keras_loaded"]["unloadable"]]},
        "per_volume_equal": bool(rounds) and all(t.get("equal") for t in tables),
        "per_volume": {"equal": bool(rounds) and all(t.get("equal") for t in tables),
                       "n_rows": sum(t.get("n_rows", 0) for t in tables),
                       "max_abs_diff": max((t.get("max_abs_diff", 0.0) for t in tables), default=0.0),
                       "by_copy": tables},
        "stages": {f"{k} ({r['copy']})": v for r in rounds for k, v in r["stages"].items()},
        "reference_seconds": ref_seconds, "reference_phase_seconds": lengths, "faulted_total_seconds": fault_seconds,
        "kernels_outside_group": sum(k.get("outside_group", 0) for k in kills),
    }


# --------------------------------------------------------------------------- segment
def segment_cmd(scans: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "innerear", "segment", str(scans), "-o", str(out), "--quiet"]


def masks_of(out: Path) -> dict:
    import nibabel as nib
    import numpy as np

    return {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(out.glob("*_mask.nii.gz"))}


def check_batch(out: Path, ref: Path, ref_rows: list[dict], n_scans: int, rc: int, previous: list[str]) -> dict:
    """One output folder once a batch run has finished: complete, readable, equal to the reference."""
    import numpy as np

    temps = temporaries([out])
    rows = read_csv(out / "summary.csv") if (out / "summary.csv").exists() else []
    drop = ("seconds", "status")
    same_rows = [{k: v for k, v in r.items() if k not in drop} for r in rows] == \
        [{k: v for k, v in r.items() if k not in drop} for r in ref_rows]
    ref_masks, masks = masks_of(ref), masks_of(out)
    same_masks = ref_masks.keys() == masks.keys() and all(np.array_equal(ref_masks[k], masks[k]) for k in ref_masks)
    reports_ok = all((out / f"{Path(r['file']).name.removesuffix('.nii.gz')}_report.json").exists() for r in rows)
    return {"folder": out.name, "final_exit": rc,
            "final_statuses": {s: sum(1 for r in rows if r["status"] == s) for s in {r["status"] for r in rows}},
            "final_errors": [r["error"] for r in rows if r["error"]], "summary_rows": len(rows),
            "summary_equal_to_reference": same_rows, "masks_equal_to_reference": same_masks,
            "every_scan_has_mask_and_report": len(masks) == n_scans and reports_ok,
            "temporaries_after_final": [Path(t).name for t in temps],
            "carried_over": sorted(set(previous) & set(temps)), "unreadable_after_final": unreadable([out])}


def run_segment(work: Path, n_scans: int, n_kills: int, seed: int) -> dict:
    """A reference batch, then ``n_kills`` batch runs into one output folder, each killed mid-run
    and rerun. Odd kills strike the instant this run writes (a temporary appears, or a scan's
    first output file while its others are still to come: small masks are written faster than
    a poll sees the temporary); even kills after a random delay. A run that finishes the batch
    before its kill ends that folder (checked like a last run) and the kill is aimed again at
    a fresh one."""
    import numpy as np

    from benchmarks.bench_batch import write_phantoms

    rng = random.Random(seed + 1)
    scans = work / "scans"
    scans.mkdir()
    write_phantoms(scans, n_scans, PROFILE, 0)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    (work / "seg_ref").mkdir()
    ref = Logged(segment_cmd(scans, work / "seg_ref"), work, env, work / "segment_ref.log")
    ref_rc = ref.finish()
    ref_rows = read_csv(work / "seg_ref" / "summary.csv")
    per_scan = float(np.median([float(r["seconds"]) for r in ref_rows if r["seconds"]]))
    print(f"[segment] reference batch of {n_scans}: exit {ref_rc}, {ref.elapsed():.0f} s, {per_scan:.1f} s per scan",
          flush=True)
    kills, carried, folders, missed = [], [], [], []
    out: Path | None = None
    previous: list[str] = []
    fresh = False
    i = 1
    while i <= n_kills:
        if out is None:
            out = work / f"seg_faulted{len(folders) + 1}"
            out.mkdir()
            previous, fresh = [], True
        before = {p.name for p in out.iterdir()}
        run = Logged(segment_cmd(scans, out), work, env, work / f"{out.name}.log")
        on_write = i % 2 == 1
        delay = None if on_write else rng.uniform(0.2, 1.5) * per_scan
        started = None
        result = None
        while run.proc.poll() is None:
            names = {p.name for p in out.iterdir()}
            temps = [n for n in names if TEMP_RE.match(n)]
            new = sorted(n for n in names - before - {"summary.csv"} if not TEMP_RE.match(n))
            if on_write and (temps or new):
                result = {"trigger": "a temporary output appeared" if temps else f"{new[0]} written, its scan's "
                          "other outputs still to come", "writing": temps}
            elif not on_write:
                if started is None and new:
                    started = run.elapsed()  # the first output of this run: the model is loaded
                if started is not None and run.elapsed() >= started + delay:
                    result = {"trigger": f"{delay:.1f} s after this run's first output", "writing": temps}
            if result is not None:
                done = sum(1 for n in names if n.endswith("_mask.nii.gz"))
                result.update(kill=i, folder=out.name, at_s=round(run.elapsed(), 2), masks_done=done, **kill_tree(run))
                break
            time.sleep(0.005)
        rc = run.finish()
        if result is None:
            folders.append(check_batch(out, work / "seg_ref", ref_rows, n_scans, rc, previous))
            print(f"[segment] {out.name}: a run finished the batch (exit {rc}) before kill {i}; checked, the kill aimed "
                  "again at a fresh folder", flush=True)
            if fresh:
                missed.append(i)
                i += 1
            out = None
            continue
        fresh = False
        temps = temporaries([out])
        still = sorted(set(previous) & set(temps))
        if still:
            carried.append({"after_kill": i, "files": still})
        previous = temps
        result.update(temporaries_left=[Path(t).name for t in temps], unreadable=unreadable([out]))
        kills.append(result)
        print(f"[segment kill {i}/{n_kills}] {result['trigger']}: {result['masks_done']} masks done, "
              f"{len(temps)} temporaries left, {len(result['unreadable'])} unreadable", flush=True)
        i += 1
    if out is not None:
        final = Logged(segment_cmd(scans, out), work, env, work / f"{out.name}.log")
        folders.append(check_batch(out, work / "seg_ref", ref_rows, n_scans, final.finish(), previous))
    carried += [{"after_kill": f"final ({f['folder']})", "files": f["carried_over"]} for f in folders if f["carried_over"]]
    return {"scans": n_scans, "kills": kills, "kills_done": len(kills), "kills_missed": missed, "folders": len(folders),
            "final_exit": max((f["final_exit"] for f in folders), key=abs, default=None),
            "final_statuses": folders[-1]["final_statuses"] if folders else {},
            "final_errors": [e for f in folders for e in f["final_errors"]],
            "summary_rows": sum(f["summary_rows"] for f in folders),
            "summary_equal_to_reference": bool(folders) and all(f["summary_equal_to_reference"] for f in folders),
            "masks_equal_to_reference": bool(folders) and all(f["masks_equal_to_reference"] for f in folders),
            "every_scan_has_mask_and_report": bool(folders) and all(f["every_scan_has_mask_and_report"] for f in folders),
            "temporaries_after_final": [t for f in folders for t in f["temporaries_after_final"]],
            "temporaries_carried_over_a_rerun": carried,
            "unreadable_after_final": [u for f in folders for u in f["unreadable_after_final"]],
            "reference_per_scan_s": per_scan, "by_folder": folders}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="kills of innerear reproduce (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--pipeline-seed", type=int, default=0, help="reproduce --seed")
    parser.add_argument("--segment-kills", type=int, default=5)
    parser.add_argument("--scans", type=int, default=6, help="phantoms in the segment batch")
    parser.add_argument("--skip-reproduce", action="store_true")
    parser.add_argument("--skip-segment", action="store_true")
    parser.add_argument("--workdir", default=None, help="where the copies go (default: a temporary folder, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--json", default=None, help="record path (default benchmarks/results/fault_injection.json)")
    args = parser.parse_args(argv)
    from innerear.reporting.performance import results_path, write_record

    work = Path(args.workdir or Path(tempfile.gettempdir()) / f"fault_injection_{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    record: dict = {"settings": {"kills": args.kills, "seed": args.seed, "pipeline_seed": args.pipeline_seed,
                                 "segment_kills": args.segment_kills, "scans": args.scans, "profile": PROFILE}}
    t0 = time.perf_counter()
    try:
        if not args.skip_segment:
            (work / "segment").mkdir(exist_ok=True)
            record["segment"] = run_segment(work / "segment", args.scans, args.segment_kills, args.seed)
        if not args.skip_reproduce:
            record["reproduce"] = run_reproduce(work, args.kills, args.seed, args.pipeline_seed)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    record["seconds"] = time.perf_counter() - t0
    ok = []
    if "reproduce" in record:
        r = record["reproduce"]
        ok.append(r["final_exit"] == 0 and not r["reruns_failed"] and not r["temporaries_after_final"]
                  and not r["unreadable_after_final"] and not r["keras_loaded"]["unloadable"]
                  and not any(k["unreadable"] for k in r["kills"]))
        print(f"reproduce: {r['kills_done']}/{r['kills_planned']} kills survived; phases hit {r['phases_hit']}; "
              f"final exit {r['final_exit']}; per_volume.csv equal to the reference: {r['per_volume_equal']}"
              f" (max |diff| {r['per_volume'].get('max_abs_diff')}); temporaries left {len(r['temporaries_after_final'])}, "
              f"carried over a rerun {len(r['temporaries_carried_over_a_rerun'])}; unreadable "
              f"{sum(len(k['unreadable']) for k in r['kills'])} after kills, {len(r['unreadable_after_final'])} at the end; "
              f".keras loaded {r['keras_loaded']['n']} ({len(r['keras_loaded']['unloadable'])} failed)")
    if "segment" in record:
        s = record["segment"]
        ok.append(s["final_exit"] == 0 and s["summary_equal_to_reference"] and s["masks_equal_to_reference"]
                  and not s["temporaries_after_final"] and not s["unreadable_after_final"])
        print(f"segment: {s['kills_done']} kills in {s['folders']} folder(s), missed {s['kills_missed']}; final exit {s['final_exit']}, statuses "
              f"{s['final_statuses']}; summary equal {s['summary_equal_to_reference']}, masks equal "
              f"{s['masks_equal_to_reference']}; temporaries left {s['temporaries_after_final']}")
    record["passed"] = all(ok)
    path = write_record(args.json or results_path(ROOT, "fault_injection"), "fault_injection", record)
    print(f"{'PASSED' if record['passed'] else 'FAILED'} in {record['seconds']:.0f} s; {path}")
    return 0 if record["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
