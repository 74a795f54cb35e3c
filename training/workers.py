"""Stage workers that die with the run that started them (standard library only, so that a
worker's initializer costs nothing to import)."""

from __future__ import annotations

import os
import threading
import time


def exit_with_parent(poll_seconds: float = 1.0) -> None:
    """In a stage worker: exit as soon as the process that started it is gone, so that a
    killed training run does not leave a stage training (and writing its checkpoints and
    log) behind it, beside the run that resumes it."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()
