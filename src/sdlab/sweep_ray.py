"""A sweep's cells on a Ray cluster: a pool of actors, each loading the model once.

Each actor takes the local run's torch settings (thread count, deterministic algorithms),
because a different thread count can change the order of floating-point reductions and so
the pixels. A cell carries its own seed (its recipe); nothing is seeded on a shared
pipeline. Images come back to the driver, which writes them into the sweep's folder, so a
cluster needs no shared disk. A cell whose actor dies is run again on a fresh actor.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from sdlab.errors import SdlabError
from sdlab.models import load, weights_hash
from sdlab.recipe import params_from_dict, parse
from sdlab.sweep import Cell, render

MAX_ATTEMPTS = 3  # runs of one cell whose actor died, before the sweep gives up


@dataclass(frozen=True)
class TorchSettings:
    """What decides the floating-point order of a CPU run, beside the recipe."""

    num_threads: int
    deterministic: bool

    @classmethod
    def local(cls) -> TorchSettings:
        return cls(torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())

    def apply(self) -> None:
        torch.set_num_threads(self.num_threads)
        torch.use_deterministic_algorithms(self.deterministic)


class CellWorker:
    """A Ray actor's body: the model loaded once, then one cell per call."""

    def __init__(self, model: str, device: str, settings: TorchSettings) -> None:
        settings.apply()
        self.parts = load(model, device=device)

    def weights_hash(self) -> str:
        return weights_hash(self.parts.folder)

    def run(self, params: dict[str, Any]) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        image = render(self.parts, parse(params_from_dict(params, "a sweep cell")))
        return np.asarray(image.convert("RGB")), time.perf_counter() - start


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster at `address`, or start a local Ray instance; nothing if connected."""
    try:
        import ray
    except ImportError:
        raise SdlabError("Ray is not installed: pip install 'sdlab[ray]'") from None
    if ray.is_initialized():
        return
    try:
        ray.init(address=address, num_cpus=None if address else num_cpus,
                 include_dashboard=False, log_to_driver=False, logging_level="warning")
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise SdlabError(f"cannot start or join {where}: {err}") from err


class RayRunner:
    """Runs cells on `workers` actors (default: as many as the cluster's CPUs allow at the
    local thread count), yielding (cell, image, seconds) as they finish."""

    def __init__(self, model: str, expected_hash: str, workers: int | None = None,
                 device: str = "cpu", settings: TorchSettings | None = None) -> None:
        import ray

        self.settings = settings or TorchSettings.local()
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = workers or max(1, cpus // self.settings.num_threads)
        self.remote = ray.remote(num_cpus=self.settings.num_threads)(CellWorker)
        self.model, self.device, self.expected_hash = model, device, expected_hash
        self.actors: list[Any] = []

    def _start_actor(self) -> Any:
        import ray

        actor = self.remote.remote(self.model, self.device, self.settings)
        found = ray.get(actor.weights_hash.remote())
        if found != self.expected_hash:
            raise SdlabError(f"a Ray worker loaded {self.model} with weights {found}, not "
                             f"{self.expected_hash}: install the same model on every node")
        return actor

    def __call__(self, cells: Sequence[Cell]) -> Iterator[tuple[Cell, Image.Image, float]]:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        queue = deque(cells)
        attempts: dict[str, int] = {}
        wanted = min(self.workers, len(cells))  # actors of an earlier call are kept
        self.actors += [self._start_actor() for _ in range(wanted - len(self.actors))]
        idle = list(self.actors)
        pending: dict[Any, tuple[Any, Cell]] = {}
        while queue or pending:
            while idle and queue:
                actor, cell = idle.pop(), queue.popleft()
                pending[actor.run.remote(cell.params.to_dict())] = (actor, cell)
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            actor, cell = pending.pop(ref)
            try:
                pixels, seconds = ray.get(ref)
            except RayActorError:
                attempts[cell.key] = attempts.get(cell.key, 0) + 1
                if attempts[cell.key] >= MAX_ATTEMPTS:
                    raise SdlabError(f"cell {cell.key}: its Ray worker died {MAX_ATTEMPTS} "
                                     "times; see the Ray logs") from None
                queue.appendleft(cell)
                idle.append(self._replace(actor))
                continue
            except RayTaskError as err:
                if isinstance(err.cause, SdlabError):
                    raise SdlabError(f"cell {cell.key}: {err.cause}") from None
                raise
            idle.append(actor)
            yield cell, Image.fromarray(pixels), seconds

    def _replace(self, dead: Any) -> Any:
        fresh = self._start_actor()
        self.actors = [fresh if a is dead else a for a in self.actors]
        return fresh
