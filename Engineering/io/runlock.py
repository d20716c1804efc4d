"""One run per run folder: a lock file with the holder's pid and host.

Two runs writing into one folder interleave checkpoints, metrics and configs. The
first takes ``<run_dir>/.lock`` (created exclusively); a second refuses with one
line naming the holder; a lock whose process is gone (same host) is taken over
with a warning. Only rank 0 locks: Lightning's DDP ranks are children of the holder.

Shards of one sharded inference (``--run_mode 2 --shard i/n``) write disjoint files (their own output and log
folders), so they run in parallel: shard i takes ``.lock_shard<i>of<n>``; a whole-run lock (training, an
unsharded test, merge_shards) and a shard lock refuse each other, and two runs of the same shard refuse each
other. Each side takes its own lock first and then looks for the other kind: of two racing starts at least one
refuses, never neither.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from Engineering.errors import UserError

LOCK_NAME = ".lock"


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return pid > 0


def _read_holder(path: Path) -> dict:
    """The holder recorded in a lock file ({} if unreadable or gone: a damaged lock is taken over)."""
    try:
        data = json.loads(path.read_text() or "{}")
        return data if isinstance(data, dict) and str(data.get("pid", "")).lstrip("-").isdigit() else {}
    except (OSError, ValueError):
        return {}


class RunLock:
    def __init__(self, run_dir: str | Path, shard: tuple[int, int] | None = None):
        self.shard = shard
        self.path = Path(run_dir) / (LOCK_NAME if shard is None else f"{LOCK_NAME}_shard{shard[0]}of{shard[1]}")
        self.held = False

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "slurm_job": os.environ.get("SLURM_JOB_ID", "")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                dead = holder.get("host") == me["host"] and not process_alive(int(holder.get("pid", -1)))
                requeued = bool(me["slurm_job"]) and holder.get("slurm_job") == me["slurm_job"]  # SLURM requeue
                if dead or requeued:
                    print(
                        f"warning: taking over the stale lock of run folder {self.path.parent} "
                        f"(process {holder.get('pid')} on {holder.get('host')} is gone)"
                    )
                    self.path.unlink(missing_ok=True)
                    continue
                raise UserError(
                    f"run folder {self.path.parent} is in use by process {holder.get('pid', '?')} on "
                    f"{holder.get('host', '?')} (lock {self.path}); wait for it or use another "
                    "--trainID/--fulltrainID (if that process is gone, e.g. a job on another node, "
                    "delete the lock file)"
                ) from None
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self.held = True
            self._refuse_other_kind(me)
            return self
        raise UserError(f"cannot take the lock {self.path}")

    def _refuse_other_kind(self, me: dict) -> None:
        """A shard may not run beside a whole-run writer, nor a whole-run writer beside any shard."""
        folder = self.path.parent
        others = [folder / LOCK_NAME] if self.shard is not None else sorted(folder.glob(f"{LOCK_NAME}_shard*of*"))
        for other in others:
            holder = _read_holder(other)
            if not holder or (holder.get("host") == me["host"] and not process_alive(int(holder.get("pid", -1)))):
                continue
            self.release()
            what = "a sharded inference (" + other.name.split("_", 1)[1] + ")" if self.shard is None else "a run"
            raise UserError(
                f"run folder {folder} is in use by {what}, process {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')} (lock {other}); wait for it (shards of one test run in "
                "parallel with each other only)"
            )

    def _holder(self) -> dict:
        return _read_holder(self.path)

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
