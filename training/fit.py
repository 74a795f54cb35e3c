"""The one training loop. A stage (VAE, CLIP, UNet, decoder fine-tune) is data: what it
trains, its optimizer, and its phases, each a loss over steps with a learning-rate
schedule. `fit` runs it: it resumes from the stage's last checkpoint, writes one loss-log
line per step, checkpoints every CKPT_EVERY steps and at the end of each phase, and saves
what the stage made to `final/`.

Every step draws its data from `step_rng(seed, stage, step)`, so a resumed run sees the
same batches as an unbroken one.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

log = logging.getLogger("training")

CKPT_EVERY = 200

# A step's losses: the one to minimise, and the values to log beside it.
Losses = tuple[torch.Tensor, dict[str, float]]


def step_rng(seed: int, stage: int, step: int) -> np.random.Generator:
    """The data generator for one training step: the same on a resumed run."""
    return np.random.default_rng([seed, stage, step])


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warmup then cosine decay to 5% of the base rate."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


@dataclass(frozen=True)
class Schedule:
    """Learning rate `lr` warmed up over `warmup` steps from step `start`, then a cosine
    down to 5% of it at step `end` (`lr_at` on steps counted from `start`)."""

    lr: float
    warmup: int
    start: int
    end: int

    def at(self, step: int) -> float:
        return lr_at(step - self.start, self.end - self.start, self.lr, self.warmup)


@dataclass
class Phase:
    """Steps from the end of the phase before up to `end`, with one loss and schedule."""

    name: str
    end: int
    schedule: Schedule
    loss: Callable[[int], Losses]  # step -> its losses (draws the step's batch itself)
    # called before its first step is run: with True if that is the phase's first step,
    # False if a run resumes inside it
    enter: Callable[[bool], None] | None = None


@dataclass
class Stage:
    """What `fit` trains: `model` (and `extra` modules, checkpointed beside it) with `opt`
    through `phases`; the gradients of `clipped` are clipped to norm 1 together. The
    modules come in the modes they train in."""

    model: torch.nn.Module
    opt: torch.optim.Optimizer
    clipped: list[torch.nn.Parameter]
    phases: list[Phase]
    extra: dict[str, torch.nn.Module] = field(default_factory=dict)
    after_step: Callable[[int], None] | None = None  # e.g. the EMA update
    evaluate: Callable[[], dict[str, float]] | None = None  # in eval mode, no grad
    eval_every: int = 0  # and at the last step
    result: Callable[[], torch.nn.Module] | None = None  # what is saved (default: model)


class LossLog:
    """Appends one JSON line per logged step to `<stage dir>/log.jsonl`."""

    def __init__(self, path: Path):
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.t0 = time.time()

    def write(self, step: int, **values: float) -> None:
        rec = {"step": step, "time": round(time.time() - self.t0, 2)}
        rec.update({k: float(v) for k, v in values.items()})
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")

    def keep_before(self, step: int) -> None:
        """Drop the records of `step` on: a run resuming from a checkpoint at `step` (or
        starting afresh, at 0) logs them again."""
        records = self.read()
        kept = [r for r in records if r["step"] < step]
        if len(kept) == len(records):
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        tmp.replace(self.path)

    def read(self) -> list[dict[str, float]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]


def fit(stage: Stage, workdir: Path, resume: bool = True,
        between_steps: Callable[[], None] | None = None) -> torch.nn.Module:
    """Train `stage` in `workdir` (from its checkpoint when resuming) and save its result
    to `workdir/final` with save_pretrained; returns the result. `between_steps` is called
    before every step (e.g. to take cores another stage has freed)."""
    ckpt = workdir / "ckpt"
    start = load_checkpoint(ckpt, stage.model, stage.opt, stage.extra) if resume else 0
    losses = LossLog(workdir / "log.jsonl")
    losses.keep_before(start)
    last = stage.phases[-1].end
    phase_start = 0
    for phase in stage.phases:
        begin = max(start, phase_start)
        if begin < phase.end and phase.enter is not None:
            phase.enter(begin == phase_start)
        phase_start = phase.end
        bar = tqdm(range(begin, phase.end), desc=phase.name, initial=begin, total=phase.end)
        for step in bar:
            if between_steps is not None:
                between_steps()
            for group in stage.opt.param_groups:
                group["lr"] = phase.schedule.at(step)
            loss, values = phase.loss(step)
            optimizer_step(stage.opt, loss, stage.clipped)
            if stage.after_step is not None:
                stage.after_step(step)
            values = {"loss": loss.item(), **values}
            if stage.evaluate is not None and ((step + 1) % stage.eval_every == 0
                                               or step + 1 == last):
                with eval_mode(stage.model), torch.no_grad():
                    values.update(stage.evaluate())
                log.info("%s step %d: %s", phase.name, step + 1, _show(values))
            losses.write(step, **values)
            bar.set_postfix(loss=f"{values['loss']:.4f}")
            if (step + 1) % CKPT_EVERY == 0 or step + 1 == phase.end:
                save_checkpoint(ckpt, step + 1, stage.model, stage.opt, stage.extra)
                log.info("%s step %d: loss %.4f (checkpoint)", phase.name, step + 1,
                         values["loss"])
    stage.model.eval()
    result = stage.result() if stage.result is not None else stage.model
    result.save_pretrained(workdir / "final")
    return result


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor,
                   clip: list[torch.nn.Parameter]) -> None:
    """Backpropagate `loss`, clip the gradients of `clip` to norm 1 together, step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(clip, 1.0)
    opt.step()


def _show(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in values.items())


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """`model` in eval mode inside, each submodule's own mode restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.train(training)


def save_checkpoint(path: Path, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    extra: dict[str, torch.nn.Module] | None = None) -> None:
    """Model (+ extra modules) as safetensors, optimizer state via torch.save (tensors only)."""
    path.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    for name, mod in (extra or {}).items():
        for k, v in mod.state_dict().items():
            tensors[f"{name}.{k}"] = v.detach().contiguous()
    save_file(tensors, str(path / "weights.tmp"))
    torch.save({"step": step, "opt": opt.state_dict()}, path / "state.tmp")
    (path / "weights.tmp").replace(path / "weights.safetensors")
    (path / "state.tmp").replace(path / "state.pt")


def load_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    extra: dict[str, torch.nn.Module] | None = None) -> int:
    """Restore a checkpoint written by `save_checkpoint`; returns the next step (0 if none)."""
    if not (path / "state.pt").is_file() or not (path / "weights.safetensors").is_file():
        return 0
    tensors = load_file(str(path / "weights.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    for name, mod in (extra or {}).items():
        p = name + "."
        mod.load_state_dict({k[len(p):]: v for k, v in tensors.items() if k.startswith(p)})
    state = torch.load(path / "state.pt", weights_only=True)
    opt.load_state_dict(state["opt"])
    return int(state["step"])
