"""Killing a training rank the way a lost node does, for the restart tests (test_train, test_checkpoint_steps)."""
from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Callable

from classeg.training import checkpoints


def _kill_when(path: Path, ready: Callable[[dict], bool] | None, killed: list, stop: threading.Event) -> None:
    import psutil

    mtime = None
    while not stop.is_set() and not killed:
        stop.wait(0.05)
        if ready is None:  # at once, without the seconds that loading the checkpoint takes
            if not path.exists():
                continue
            checkpoint = {}
        else:
            checkpoint = _changed_checkpoint(path, mtime)
            if checkpoint is None:
                continue
            mtime = checkpoint.pop("_mtime")
            if not ready(checkpoint):
                continue
        for process in psutil.Process().children(recursive=True):
            try:
                if "gloo_exec_fn" in " ".join(process.cmdline()):
                    process.send_signal(signal.SIGKILL)
                    killed.append({"epoch": checkpoint.get("epoch"), "micro": checkpoint.get("micro", 0),
                                   "step": checkpoint.get("step"), "pid": process.pid})
                    return
            except psutil.Error:
                continue


def _changed_checkpoint(path: Path, mtime) -> dict | None:
    """``path``'s checkpoint (with its ``_mtime``) if it was written since ``mtime``; None if not, or if it
    is not there or only half written (torch.load's errors vary)."""
    try:
        stamp = path.stat().st_mtime_ns
        if stamp == mtime:
            return None
        return {**checkpoints.load(str(path)), "_mtime": stamp}
    except Exception:  # noqa: BLE001
        return None


@contextlib.contextmanager
def killing_a_rank(path: Path, ready: Callable[[dict], bool] | None = None):
    """While the body runs: once ``path`` (a ``last.pt``) exists, or with ``ready`` once it holds a checkpoint
    for which ``ready(checkpoint)`` holds, SIGKILL one Horovod training process (a descendant of this test
    process running horovod's gloo_exec_fn). Yields the list that then holds what was killed: that
    checkpoint's epoch, micro and step (not known without ``ready``: it is not loaded), and the pid."""
    killed: list = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_when, args=(Path(path), ready, killed, stop), daemon=True)
    killer.start()
    try:
        yield killed
    finally:
        stop.set()
        killer.join()
