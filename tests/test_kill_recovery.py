"""Issue 24 (2): a writer killed outright (SIGKILL runs no ``finally``) leaves its temporary file;
the next run removes it, and only it. Found by ``benchmarks/fault_injection.py``: before the fix every
kill during a checkpoint, a notebook or a batch's write left a ``.<name>.<random>.tmp`` behind for good.
Seconds each; no network is loaded."""
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from innerear.inference.batch import BatchOptions, segment_batch
from innerear.io import atomic_path, save_npz, sweep_temporaries
from innerear.io.files import is_stale_temporary

ROOT = Path(__file__).resolve().parents[1]


def _killed_writer(folder: Path, name: str) -> Path:
    """A process that opens an atomic write of ``folder/name`` and is SIGKILLed mid-write: its temporary."""
    code = textwrap.dedent(f"""
        import sys, time
        from innerear.io import atomic_path
        with atomic_path({str(folder / name)!r}) as tmp:
            tmp.write_bytes(b"half")
            print(tmp, flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    tmp = Path(proc.stdout.readline().strip())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert tmp.exists() and not (folder / name).exists()
    return tmp


def test_a_killed_writers_temporary_is_swept_and_a_live_ones_is_not(tmp_path):
    dead = _killed_writer(tmp_path, "state.json")
    assert is_stale_temporary(dead)
    (tmp_path / "sub").mkdir()
    dead_below = _killed_writer(tmp_path / "sub", "best.keras")
    keep = tmp_path / ".hidden.json"  # not a temporary of ours
    keep.write_text("{}")
    with atomic_path(tmp_path / "live.npz") as live:  # this process is writing it right now
        live.write_bytes(b"x")
        assert not is_stale_temporary(live)
        assert sweep_temporaries(tmp_path, recursive=False) == [dead]
        assert dead_below.exists() and live.exists()
        assert sweep_temporaries(tmp_path) == [dead_below]
        assert live.exists()
    assert keep.exists() and (tmp_path / "live.npz").read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.rglob("*")) == [".hidden.json", "live.npz", "sub"]


def test_another_hosts_temporary_is_left_alone(tmp_path):
    other = tmp_path / ".x.npz.@elsewhere@1@1@.abcd1234.tmp"
    other.write_bytes(b"")
    assert not is_stale_temporary(other) and sweep_temporaries(tmp_path) == []


def test_fit_resumes_next_to_a_killed_checkpoint_write(tmp_path):
    """``fit`` (under its stage lock) clears the run folder's dead temporaries before it resumes."""
    from innerear.training import fit as fit_module

    dead = _killed_writer(tmp_path, "last.keras")
    save_npz(tmp_path / "kept.npz", a=np.zeros(2))
    (tmp_path / "done.json").write_text("{}")  # finished: fit only loads, which we stop right there

    class Loaded(Exception):
        pass

    def stop(_):
        raise Loaded

    original = fit_module._finished
    fit_module._finished = stop
    try:
        fit_module.fit(lambda: None, None, tmp_path, max_epochs=1, patience=1)
    except Loaded:
        pass
    finally:
        fit_module._finished = original
    assert not dead.exists() and (tmp_path / "kept.npz").exists()


def test_a_batch_rerun_removes_what_the_killed_batch_was_writing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = _killed_writer(out, "ear_mask.nii.gz")
    rows = segment_batch(None, [], out, BatchOptions())  # no scans: only the sweep and the summary
    assert rows == [] and not dead.exists()
    assert sorted(p.name for p in out.iterdir()) == ["summary.csv"]
