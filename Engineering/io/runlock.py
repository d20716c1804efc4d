"""One run per run folder: a lock file with the holder's pid and host.

Two runs writing into one folder interleave checkpoints, metrics and configs. The
first takes ``<run_dir>/.lock`` (created exclusively); a second refuses with one
line naming the holder; a lock whose process is gone (same host) is taken over
with a warning. Only rank 0 locks: Lightning's DDP ranks are children of the holder.
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


class RunLock:
    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.held = False

    def acquire(self) -> "RunLock":
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
                    print(f"warning: taking over the stale lock of run folder {self.path.parent} "
                          f"(process {holder.get('pid')} on {holder.get('host')} is gone)")
                    self.path.unlink(missing_ok=True)
                    continue
                raise UserError(f"run folder {self.path.parent} is in use by process {holder.get('pid', '?')} on "
                                f"{holder.get('host', '?')} (lock {self.path}); wait for it or use another "
                                "--trainID/--fulltrainID (if that process is gone, e.g. a job on another node, "
                                "delete the lock file)") from None
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self.held = True
            return self
        raise UserError(f"cannot take the lock {self.path}")

    def _holder(self) -> dict:
        try:
            data = json.loads(self.path.read_text() or "{}")
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
