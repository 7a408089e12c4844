"""Files written safely: the one atomic writer (temporary file in the destination folder, fsync,
rename, the umask's mode), the one JSON writer and compressed NumPy archives."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np


def current_umask() -> int:
    """The process's file-creation mask (read from ``/proc`` where possible, without changing it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no way to read it without setting it elsewhere
    os.umask(mask)
    return mask


def _publish_mode(path: Path, is_dir: bool) -> int:
    """The mode a new file (0o666) or folder (0o777) gets under the umask, or ``path``'s own
    mode when it already exists (overwriting keeps a file's permissions)."""
    if path.exists() and path.is_dir() == is_dir:
        return path.stat().st_mode & 0o7777
    return (0o777 if is_dir else 0o666) & ~current_umask()


@contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True, suffix: str = ".tmp",
                folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    The one atomic-write helper of the package: every file (or, with ``folder``, every
    folder) innerear writes goes through it. With ``overwrite=False`` an existing ``path``
    raises :class:`FileExistsError` first. On any exception (including an interrupt, and
    SIGTERM under the command line) the temporary file is removed and ``path`` is left
    untouched. The result has the permissions a plain ``open()`` would give it under the
    umask (temporary files are created private), or the replaced file's own.
    ``suffix`` ends the temporary name (writers that pick a format by extension need it).
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent}: output folder does not exist")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (refusing to overwrite)")
    if folder:
        tmp_path = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent))
    else:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
    try:
        yield tmp_path
        tmp_path.chmod(_publish_mode(path, folder))
        if folder and path.is_dir():
            shutil.rmtree(path)
        elif folder and path.exists():
            path.unlink()
        os.replace(tmp_path, path)
    finally:
        if tmp_path.is_dir() and not tmp_path.is_symlink():
            shutil.rmtree(tmp_path, ignore_errors=True)
        elif tmp_path.exists():
            tmp_path.unlink()




def json_text(obj: object, indent: int = 2) -> str:
    """The text of a JSON file of ``obj`` as the package writes them: indented, sorted keys, a final newline."""
    return json.dumps(obj, indent=indent, sort_keys=True, default=json_default) + "\n"


def write_json(path: str | os.PathLike, obj: object, indent: int = 2) -> Path:
    """Write :func:`json_text` atomically and return the path: the package's one JSON writer."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json_text(obj, indent))
    return path


def json_round_trip(value: object) -> object:
    """``value`` as it reads back from JSON (tuples become lists, numpy scalars numbers), for comparing."""
    return json.loads(json.dumps(value, default=json_default))


def json_default(obj: object) -> object:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """Save arrays to a compressed ``.npz`` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return path
