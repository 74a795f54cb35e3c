"""The diffusion loop, written out: a generator that yields one record per step.

Per step i at timestep t: scale the latents for the model, ask the model (a denoiser:
the UNet wrapped with classifier-free guidance, see `sdlab.denoisers`) for its prediction,
let the callbacks look at (or change) the step, then take the scheduler step. Previews,
videos, traces, guidance by a loss and early stopping are all callbacks.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from sdlab.denoisers import Denoiser
from sdlab.schedule import step_sigma, x0_from_prediction


@dataclass(frozen=True)
class StepRecord:
    """What happened at one step of the loop.

    `latents` is what the step started from (after any callback edits); `pred_uncond`,
    `pred_cond` and `pred` the model's predictions (the noise eps for epsilon models, v for
    v-prediction models; `pred` is the guided one the scheduler steps with); `x0_pred` the
    clean latents they imply; `next_latents` the scheduler's result (None while callbacks
    run, before the step is taken).
    """

    i: int
    t: torch.Tensor
    sigma: torch.Tensor
    latents: torch.Tensor  # (N, 4, H/8, W/8)
    pred_uncond: torch.Tensor | None  # None without the unconditional pass
    pred_cond: torch.Tensor
    pred: torch.Tensor
    x0_pred: torch.Tensor
    next_latents: torch.Tensor | None = None


class StopSampling(Exception):  # noqa: N818 - a signal, not an error
    """Raised by a callback to end the loop: the current step is not taken and its record
    is not yielded; the last yielded record holds the run's final latents."""


# A callback sees the record before the scheduler step; it returns None to leave it as is
# or a changed record (e.g. `dataclasses.replace(record, latents=...)`) to edit the run.
# A callback object may also have `begin(total_steps)` and `end()`, called around the loop.
Callback = Callable[[StepRecord], StepRecord | None]


def initial_noise(shape: tuple[int, ...], generator: torch.Generator, device: torch.device,
                  dtype: torch.dtype) -> torch.Tensor:
    """Gaussian latents drawn on the generator's device (the CPU, so that a seed gives the
    same noise on every device), then moved -- as diffusers' `randn_tensor` does."""
    return torch.randn(shape, generator=generator, dtype=dtype).to(device)


def denoise(model: Denoiser, scheduler: SchedulerMixin, latents: torch.Tensor, *,
            generator: torch.Generator | None = None, callbacks: Sequence[Callback] = (),
            start: int = 0) -> Iterator[StepRecord]:
    """Run the scheduler's timesteps from index `start`, yielding a record after each step.

    `latents` are already scaled by `init_noise_sigma` (or noised to step `start`).
    """
    step_kwargs = _step_kwargs(scheduler, generator)
    prediction_type = scheduler.config.get("prediction_type", "epsilon")
    timesteps = scheduler.timesteps
    if start and hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    try:
        _each(callbacks, "begin", len(timesteps) - start)  # inside: a failed begin still ends
        for i in range(start, len(timesteps)):
            t = timesteps[i]
            record = predict(model, scheduler, latents, i, t, prediction_type)
            try:
                for callback in callbacks:
                    record = callback(record) or record
            except StopSampling:
                return
            latents = scheduler.step(record.pred, t, record.latents, **step_kwargs,
                                     return_dict=False)[0]
            yield replace(record, next_latents=latents)
    finally:
        _each(callbacks, "end")


def _each(callbacks: Sequence[Callback], event: str, *args: object) -> None:
    for callback in callbacks:
        hook = getattr(callback, event, None)
        if hook is not None:
            hook(*args)


def predict(model: Denoiser, scheduler: SchedulerMixin, latents: torch.Tensor, i: int,
            t: torch.Tensor, prediction_type: str) -> StepRecord:
    """One model evaluation as a record (not yet stepped)."""
    x = scheduler.scale_model_input(latents, t)  # (N, 4, h, w)
    out = model(x, t, i)
    sigma = step_sigma(scheduler, i, t)
    x0_pred = x0_from_prediction(x, out.pred, sigma, prediction_type)
    return StepRecord(i, t, sigma, latents, out.pred_uncond, out.pred_cond, out.pred, x0_pred)


def _step_kwargs(scheduler: SchedulerMixin, generator: torch.Generator | None) -> dict:
    """Ancestral samplers draw fresh noise each step from the run's generator."""
    accepted = inspect.signature(scheduler.step).parameters
    return {"generator": generator} if "generator" in accepted else {}
