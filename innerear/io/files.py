"""Files written safely: the one atomic writer (temporary file in the destination folder, fsync,
rename, the umask's mode), the one JSON writer and compressed NumPy archives."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
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


class WriteError(OSError):
    """Writing a file failed (disk full, quota, I/O error): the message names the file meant to be
    written, not its temporary name, and the system's reason; ``errno`` is the original one."""

    def __init__(self, path: str | os.PathLike, exc: OSError) -> None:
        super().__init__(exc.errno, exc.strerror or str(exc), str(path))
        self.path = Path(path)

    def __str__(self) -> str:
        return f"{self.path}: cannot be written ({' '.join(str(self.strerror).split())})"


def _names_temporary(exc: OSError, tmp_path: Path) -> bool:
    """Whether ``exc`` came from writing ``tmp_path`` (or names no file at all), not from another file."""
    name = exc.path if isinstance(exc, WriteError) else exc.filename
    if name is None:
        return not isinstance(exc, WriteError)
    name = Path(os.fsdecode(name)) if isinstance(name, (str, bytes, os.PathLike)) else None
    return name is not None and (name == tmp_path or tmp_path in name.parents)


# --------------------------------------------------------------------------- temporaries' owners
# A temporary name records its writer: ``.<name>.@<host>@<pid>@<start>@.<random><suffix>``, so that a
# later run can tell the leftovers of a killed writer (SIGKILL skips every ``finally``) from files
# another live process is still writing, and remove only the former (:func:`sweep_temporaries`).
_OWNER_RE = re.compile(r"^\..+\.@(?P<host>[^@/]+)@(?P<pid>\d+)@(?P<start>\d+)@\.")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname() or "host")


def _start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, Linux), or None where unknown or not running."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _owner_tag() -> str:
    pid = os.getpid()
    return f"@{_host()}@{pid}@{_start_ticks(pid) or 0}@"


def _owner_alive(host: str, pid: int, start: int) -> bool:
    """Whether the process that named a temporary may still be writing it (another host's: assume so)."""
    if host != _host():
        return True
    if os.path.isdir("/proc/self"):
        now = _start_ticks(pid)
        return now is not None and (start == 0 or now == start)  # a reused pid is another process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale_temporary(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a temporary of :func:`atomic_path` whose writer is gone (killed on this host)."""
    m = _OWNER_RE.match(Path(path).name)
    return bool(m) and not _owner_alive(m["host"], int(m["pid"]), int(m["start"]))


def sweep_temporaries(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Remove the temporaries that killed writers left in ``folder`` (and below, with ``recursive``).

    Only names :func:`atomic_path` made, whose process on this host has ended; a live writer's
    temporary, another host's, and every other file are left alone. Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = folder.rglob(".*@*") if recursive else folder.glob(".*@*")
    removed = []
    for path in sorted(found):
        if not is_stale_temporary(path):
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True, suffix: str = ".tmp",
                folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    The one atomic-write helper of the package: every file (or, with ``folder``, every
    folder) innerear writes goes through it. With ``overwrite=False`` an existing ``path``
    raises :class:`FileExistsError` first. On any exception (including an interrupt, and
    SIGTERM under the command line) the temporary file is removed and ``path`` is left
    untouched; an :class:`OSError` from writing the temporary file (disk full) is raised as
    :class:`WriteError`, whose message names ``path``. The result has the permissions a plain ``open()`` would give it under the
    umask (temporary files are created private), or the replaced file's own.
    ``suffix`` ends the temporary name (writers that pick a format by extension need it). The
    temporary's name records its writer (host, pid, start time): one left by a killed process
    (SIGKILL runs no cleanup) is removed by :func:`sweep_temporaries`, which reruns call.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent}: output folder does not exist")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (refusing to overwrite)")
    if folder:
        tmp_path = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_owner_tag()}.", suffix=suffix, dir=path.parent))
    else:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_owner_tag()}.", suffix=suffix, dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            if not folder:
                _fsync(tmp_path)  # the data on disk before the name points at it (power loss)
            tmp_path.chmod(_publish_mode(path, folder))
            if folder and path.is_dir():
                shutil.rmtree(path)
            elif folder and path.exists():
                path.unlink()
            os.replace(tmp_path, path)
            _fsync(path.parent)  # and the rename itself
        except OSError as exc:
            if _names_temporary(exc, tmp_path):
                raise WriteError(path, exc) from exc
            raise
    finally:
        if tmp_path.is_dir() and not tmp_path.is_symlink():
            shutil.rmtree(tmp_path, ignore_errors=True)
        elif tmp_path.exists():
            tmp_path.unlink()




def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
