"""Atomic file writes: a temporary file in the same folder, then os.replace.

A crash (or a kill) mid-write leaves the previous file or none, never a
truncated one; readers never see a half-written emb.h5.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from Engineering.errors import UserError
from Engineering.io.runlock import process_alive


def _umask() -> int:
    umask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(umask)
    return umask


@contextmanager
def atomic_path(path: str | Path, copy_existing: bool = False, create_parent: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write to; it replaces ``path`` only if the block succeeds.

    copy_existing: the temporary file starts as a copy of ``path`` (to append to it).
    create_parent: make a missing destination folder; False makes it an error (a user's --out typo).
    """
    path = Path(path)
    if path.is_dir():  # os.replace cannot put a file there: refused before anything is computed into it
        raise UserError(
            f"{path} is an existing folder, not a file that can be written: give a file name (e.g. {path}/<name>)"
        )
    if create_parent:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.parent.exists():
        raise UserError(f"output folder does not exist: {path.parent}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs are shared like any other file
    try:
        if copy_existing and path.exists():
            shutil.copyfile(path, tmp)
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def require_free(folder: str | Path, nbytes: int, what: str) -> None:
    """A UserError before writing ``nbytes`` into ``folder`` when the disk cannot take them (cheap to check, and
    HDF5 and torch handle a full disk badly: truncated files, even crashes)."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < nbytes * 1.05 + 2**20:
        raise UserError(
            f"not enough free space for {what}: {nbytes / 2**20:.1f} MiB needed, {free / 2**20:.1f} MiB "
            f"free in {folder}; earlier outputs and checkpoints are untouched"
        )


def tensor_bytes(obj) -> int:
    """Bytes of every tensor/array in a nested structure (a checkpoint's size, near enough)."""
    if hasattr(obj, "nbytes") and not isinstance(obj, (bytes, str)):
        return int(obj.nbytes)
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def fsync_file(path: str | Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def replace_dir(new: str | Path, out: str | Path) -> None:
    """Put the complete folder ``new`` at ``out``. The previous folder is kept until the new one is in place (and
    put back if that fails): an interruption leaves the old set of files or the new one, never a mixture."""
    new, out = Path(new), Path(out)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        out.replace(old)
    try:
        new.replace(out)
    except BaseException:
        if old is not None:
            old.replace(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def staging_dir(out: str | Path) -> Path:
    """A fresh hidden folder beside ``out`` to build its new contents in (same filesystem: the swap is a rename)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging", dir=out.parent))
    os.chmod(stage, 0o777 & ~_umask())  # mkdtemp makes 0700 folders; outputs are shared like any other folder
    return stage


def remove_stale(folder: str | Path, owner: str = "") -> list[Path]:
    """Remove what interrupted writes of earlier runs left in ``folder`` (temp files, staging and old folders)
    whose writer process is gone; returns what was removed. ``owner``: only the leftovers of writes to
    ``folder/owner`` (a writer that shares the folder with others running now, such as one shard of a test)."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    name = glob.escape(owner) if owner else "*"
    for p in [*folder.glob(f".{name}.*.tmp"), *folder.glob(f".{name}.staging*"), *folder.glob(f".{name}.old*")]:
        pid = "".join(ch for ch in p.name.rsplit("old", 1)[-1] if ch.isdigit()) if ".old" in p.name else ""
        if pid and process_alive(int(pid)):
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def check_replaceable(
    out: str | Path,
    own: Sequence[str],
    is_ours: Callable[[Path], bool],
    flag: str = "--out",
    protect: Sequence[Path] = (),
) -> None:
    """The one rule for a tool that writes a whole folder and swaps it in (replace_dir): ``out`` must be new, empty,
    or hold only files named in ``own`` (names or glob patterns) and pass ``is_ours`` (an earlier output of the same
    tool, replaced
    atomically). Anything else (a folder of other files, a file, a dangling link, a folder that is or holds one of
    ``protect``) is refused before anything is written: a mistyped --out never deletes a thing."""
    out = Path(out)
    if out.is_symlink() and not out.exists():
        raise UserError(f"{flag} {out} is a dangling symbolic link: give a new or empty folder")
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out} is a file: give a new or empty folder")
    if not out.is_dir():
        return
    for kept in protect:
        if out.resolve() == Path(kept).resolve() or Path(kept).resolve().is_relative_to(out.resolve()):
            raise UserError(
                f"{flag} {out} is (or holds) {kept}: writing there would replace it; give a new or empty folder"
            )
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    if not (all(any(fnmatch.fnmatchcase(e, pattern) for pattern in own) for e in entries) and is_ours(out)):
        shown = ", ".join(entries[:5]) + (f", ... ({len(entries) - 5} more)" if len(entries) > 5 else "")
        raise UserError(
            f"{flag} {out} is not empty and is not an earlier output of this tool (it holds {shown}): "
            "it would be replaced, so give a new or empty folder"
        )
