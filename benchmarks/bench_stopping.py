"""What the demo recipe's stopping rule costs and buys: stages replayed epoch by epoch (issue 25).

Every demo stage trains until its training loss stops falling by ``min_delta`` for ``patience``
epochs. Training is most of ``make reproduce``, and its tail epochs each lower the loss a little.
This benchmark measures what a stricter rule would lose in held-out Dice:

1. From a finished demo run tree (``--tree``, default the project), it takes some stages
   (``--stages``) with their exact inputs: the fold's normalised images, the earlier stages'
   saved masks, the same context dropout and the same seed.
2. It trains each stage again for ``--epochs`` epochs without stopping. After every epoch, the
   engine predicts the fold's held-out specimens, and the held-out Dice is recorded with the
   training loss.
3. For each candidate rule (``min_delta``, ``patience``), it reads off the epoch where that rule
   stops and the network it keeps (the lowest training loss so far). It reports the epochs that
   rule trains and that network's held-out Dice, against the rule the run tree trained with.

A stage of a cascade is replayed on the run tree's earlier masks, so a rule's effect on later
stages' inputs is not part of this record, nor are the folds it does not replay; a full paired
training (``bench_recipe.py`` on two finished reproductions) measures that.

    .venv/bin/python benchmarks/bench_stopping.py --tree /path/to/finished/demo/tree

writes ``benchmarks/results/bench_stopping.json``. Stages run ``--workers`` at a time, each in
its own process with ``cores // workers`` threads, as ``innerear reproduce`` trains them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: stages replayed by default: every backbone's first stage (coronal), its last cascade stage
#: (axial, on the coronal and sagittal masks) and its axial baseline, on fold 0
DEFAULT_STAGES = tuple(f"{b}/0/{o}" for b in ("unet", "res_unet", "se_unet")
                       for o in ("coronal", "coronal,sagittal,axial", "axial"))
#: candidate rules (min_delta, patience); the profile's own is added
RULES = tuple((d, p) for d in (0.002, 0.003, 0.004, 0.005, 0.006, 0.008) for p in (1, 2, 3))


def stop_epoch(losses: list[float], min_delta: float, patience: int, max_epochs: int) -> int:
    """Epochs the training runs (``fit``'s rule): it stops after ``patience`` epochs in which the
    loss did not fall by more than ``min_delta`` below its value at the last such fall."""
    ref, wait = float("inf"), 0
    for epoch, loss in enumerate(losses[:max_epochs]):
        if loss < ref - min_delta:
            ref, wait = loss, 0
        else:
            wait += 1
            if wait >= patience:
                return epoch + 1
    return min(len(losses), max_epochs)


def kept_epoch(losses: list[float], epochs: int) -> int:
    """The epoch whose network the run keeps: the lowest training loss among the first ``epochs``."""
    head = losses[:epochs]
    return min(range(len(head)), key=head.__getitem__)


def _stage_file(tree: Path, spec: str, name: str) -> Path:
    """A file of a stage's folder in a demo run tree (``spec``: ``backbone/fold/view,view,...``)."""
    backbone, fold, views = spec.split("/")
    return tree / "runs" / "demo" / backbone / f"fold{fold}" / Path(*views.split(",")) / name


def recorded_rule(tree: Path, spec: str) -> tuple[float, int] | None:
    """The stopping rule ``(min_delta, patience)`` the run tree trained a stage with (its ``done.json``)."""
    path = _stage_file(tree, spec, "done.json")
    if not path.exists():
        return None
    done = json.loads(path.read_text())
    return float(done["min_delta"]), int(done["patience"])


def recorded_dice(tree: Path, spec: str) -> float | None:
    """The held-out Dice the run tree's own network for a stage scored (its ``stage.json``)."""
    path = _stage_file(tree, spec, "stage.json")
    return float(json.loads(path.read_text())["mean_test_dice"]) if path.exists() else None


def recorded_losses(tree: Path, spec: str) -> list[float]:
    """The training losses the run tree recorded for a stage (its ``history.csv``), if any."""
    path = _stage_file(tree, spec, "history.csv")
    return [float(line.split(",")[1]) for line in path.read_text().splitlines()[1:]] if path.exists() else []


def replay(tree: Path, spec: str, epochs: int | None, seed: int, learning_rate: float | None = None) -> dict:
    """Train one stage (``backbone/fold/view,view,...``) again for ``epochs`` epochs (default: as
    many as the run tree trained it), scoring each; ``learning_rate`` replaces the profile's."""
    import keras
    import numpy as np

    from innerear.data.cohort import load_cohort
    from innerear.data.normalize import fit_normalizer
    from innerear.data.preprocess import split_fold
    from innerear.inference.engine import InferenceSettings, run_stage, stage_inputs
    from innerear.metrics import dice
    from innerear.nets.backbones import build_for_profile
    from innerear.settings.layout import read_stage_masks, stage_dir
    from innerear.settings.profiles import get_profile
    from innerear.training.cascade import _stage_seed, drop_context
    from innerear.training.fit import SliceDataset, fit, set_output_prior

    backbone, fold_text, views = spec.split("/")
    fold, order = int(fold_text), tuple(views.split(","))
    profile = get_profile("demo", **({"learning_rate": learning_rate} if learning_rate else {}))
    cohort = load_cohort(profile, seed, tree)
    by_id = {c.case_id: c for c in cohort.cases}
    ids = sorted(by_id)
    train_ids, test_ids = split_fold(ids, cohort.folds, fold)
    normalizer = fit_normalizer(by_id[c].image for c in train_ids)
    images = {c: normalizer(by_id[c].image) for c in ids}
    earlier = [read_stage_masks(stage_dir(tree / "runs", profile, backbone, fold, order[: j + 1]), ids)
               for j in range(len(order) - 1)]
    masks = {c: [m[c] for m in earlier] for c in ids}
    k = len(order) - 1
    stage_seed = _stage_seed(seed, backbone, fold, order)
    rng = np.random.default_rng(stage_seed)
    context = {c: [drop_context(m, profile.context_dropout, rng) for m in masks[c]] for c in train_ids}
    data = SliceDataset([stage_inputs(images[c], context[c]) for c in train_ids],
                        [by_id[c].label for c in train_ids], order[k], profile.batch_size, seed=stage_seed)
    share = float(np.mean([by_id[c].label.mean() for c in train_ids]))

    def network() -> keras.Model:
        return set_output_prior(build_for_profile(backbone, 1 + k, profile), share)

    original = recorded_losses(tree, spec)
    epochs = epochs or len(original) or profile.max_epochs
    rows: list[dict] = []

    class Score(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self.t0
            scores = [dice(run_stage(self.model, order[k], images[c], masks[c], 0.5, InferenceSettings(),
                                     connectivity=profile.connectivity)[1], by_id[c].label) for c in test_ids]
            rows.append({"epoch": epoch, "loss": float(logs["loss"]), "seconds": seconds,
                         "held_out_dice": float(np.mean(scores))})

    with tempfile.TemporaryDirectory() as scratch:
        fit(network, data, scratch, max_epochs=epochs, patience=epochs + 1, learning_rate=profile.learning_rate,
            loss=profile.loss, monitor=profile.monitor, seed=stage_seed, min_delta=0.0, callbacks=[Score()])
    return {"stage": spec, "backbone": backbone, "fold": fold, "order": list(order), "test_ids": test_ids,
            "epochs": rows, "recorded_losses": original, "recorded_rule": recorded_rule(tree, spec),
            "learning_rate": profile.learning_rate, "recorded_dice": recorded_dice(tree, spec)}


def stops(losses: list[float], rule: tuple[float, int], max_epochs: int) -> dict[str, int]:
    """Where ``rule`` (``min_delta``, ``patience``) stops a loss curve: the epochs it trains and the
    epoch whose network it keeps."""
    n = stop_epoch(losses, *rule, max_epochs)
    return {"epochs": n, "kept": kept_epoch(losses, n)}


def summarise(stages: list[dict], rules, baseline: tuple[float, int], max_epochs: int,
              profile_rule: tuple[float, int] | None = None) -> list[dict]:
    """Per rule: epochs trained and held-out Dice kept, summed / averaged over the stages, and
    each against the ``baseline`` rule (the one the replayed tree trained with)."""
    curves = [([r["loss"] for r in s["epochs"]], [r["held_out_dice"] for r in s["epochs"]]) for s in stages]
    before = [stops(losses, baseline, max_epochs) for losses, _ in curves]
    reference = sum(b["epochs"] for b in before)
    out = []
    for rule in sorted(set(rules) | {baseline} | ({profile_rule} if profile_rule else set())):
        now = [stops(losses, rule, max_epochs) for losses, _ in curves]
        dices = [dice[n["kept"]] for n, (_, dice) in zip(now, curves)]
        changes = [d - dice[b["kept"]] for d, b, (_, dice) in zip(dices, before, curves)]
        epochs = sum(n["epochs"] for n in now)
        out.append({"min_delta": rule[0], "patience": rule[1], "epochs": epochs,
                    "epoch_share": round(epochs / reference, 3), "mean_held_out_dice": round(sum(dices) / len(dices), 4),
                    "mean_dice_change": round(sum(changes) / len(changes), 4),
                    "worst_dice_change": round(min(changes), 4), "baseline": rule == baseline,
                    "profile_rule": rule == profile_rule})
    return out


def _worker(tree: str, spec: str, epochs: int | None, seed: int, threads: int, out: str,
            learning_rate: float | None = None) -> None:
    """One stage's replay in a fresh process (the backend's threads are fixed at start-up), written to ``out``."""
    cmd = [sys.executable, __file__, "--tree", tree, "--replay-one", spec, "--out", out, "--seed", str(seed),
           "--threads", str(threads)]
    cmd += [*(["--epochs", str(epochs)] if epochs else []), *(["--learning-rate", str(learning_rate)] if learning_rate else [])]
    subprocess.run(cmd, check=True, cwd=ROOT)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tree", default=str(ROOT), help="a project tree on which make reproduce (demo) finished")
    ap.add_argument("--stages", nargs="*", default=list(DEFAULT_STAGES), help="backbone/fold/view,view,...")
    ap.add_argument("--epochs", type=int, default=None,
                    help="epochs per stage (default: as many as the tree trained it, which every stricter rule needs)")
    ap.add_argument("--workers", type=int, default=None, help="stages at a time (default: one per core)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--learning-rate", type=float, default=None, help="replay with this rate instead of the profile's")
    ap.add_argument("--json", default=None, help="record (default: benchmarks/results/bench_stopping.json)")
    ap.add_argument("--summarise", default=None, metavar="RECORD",
                    help="train nothing: summarise the replayed stages of an earlier record again")
    ap.add_argument("--replay-one", default=None, help=argparse.SUPPRESS)  # a worker process: one stage
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.replay_one:
        from innerear.nets.backend import set_threads

        set_threads(args.threads)
        Path(args.out).write_text(json.dumps(replay(Path(args.tree), args.replay_one, args.epochs, args.seed,
                                                    args.learning_rate)))
        return 0
    from innerear.reporting.performance import results_path, write_record
    from innerear.settings.profiles import get_profile

    profile = get_profile("demo")
    workers = args.workers or max(1, os.cpu_count() or 1)
    threads = max(1, (os.cpu_count() or 1) // workers)
    t0 = time.perf_counter()
    if args.summarise:
        earlier = json.loads(Path(args.summarise).read_text())
        stages, tree, seconds = earlier["stages"], earlier["tree"], earlier["seconds"]
        replayed = earlier.get("replayed") or earlier["context"]["date"]
        workers, threads = earlier["workers"], earlier["threads"]
    else:
        tree = args.tree
        with tempfile.TemporaryDirectory() as scratch, ThreadPoolExecutor(workers) as pool:
            outs = [str(Path(scratch) / f"{i}.json") for i in range(len(args.stages))]
            list(pool.map(lambda a: _worker(tree, a[0], args.epochs, args.seed, threads, a[1], args.learning_rate),
                          zip(args.stages, outs)))
            stages = [json.loads(Path(o).read_text()) for o in outs]
        seconds = round(time.perf_counter() - t0, 1)
        replayed = None  # this run: the record's context date
    baselines = {tuple(s["recorded_rule"]) for s in stages if s.get("recorded_rule")}
    if len(baselines) > 1:
        raise SystemExit(f"the replayed stages were trained with different rules: {sorted(baselines)}")
    if not baselines:
        raise SystemExit(f"{tree}: no done.json gives the rule the replayed stages were trained with")
    baseline = baselines.pop()
    today = (profile.min_delta, profile.patience)
    rules = summarise(stages, RULES, baseline, profile.max_epochs, today)
    for stage in stages:  # where the two rules stop on each stage (the Performance page's figure)
        losses = [e["loss"] for e in stage["epochs"]]
        stage["stops"] = {"baseline": stops(losses, baseline, profile.max_epochs),
                          "profile": stops(losses, today, profile.max_epochs)}
    for r in rules:
        mark = " (the tree's rule)" if r["baseline"] else " (the demo profile's rule)" if r["profile_rule"] else ""
        print(f"min_delta {r['min_delta']:.3f} patience {r['patience']}: {r['epochs']:4d} epochs "
              f"({r['epoch_share']:.2f} of the tree's), held-out Dice {r['mean_held_out_dice']:.4f} "
              f"(change {r['mean_dice_change']:+.4f}, worst {r['worst_dice_change']:+.4f}){mark}")
    record = {"what": "demo stages trained again epoch by epoch on their recorded inputs; held-out Dice of the "
                      "network each stopping rule keeps", "tree": str(tree),
              "epochs_per_stage": args.epochs or "as the tree trained it",
              "baseline_rule": {"min_delta": baseline[0], "patience": baseline[1]},
              "profile_rule": {"min_delta": today[0], "patience": today[1]}, "workers": workers, "threads": threads,
              "stages": stages, "rules": rules, "seconds": seconds, "replayed": replayed}
    print(f"wrote {write_record(args.json or results_path(ROOT, 'bench_stopping'), 'bench_stopping', record)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
