"""The diffusion loop, written out: a generator that yields one record per step.

Per step i at timestep t: scale the latents for the UNet, predict the noise for the
unconditional and conditional prompt in one batch, combine them with classifier-free
guidance, let the callbacks look at (or change) the step, then take the scheduler step.
Previews, videos, traces, guidance by a loss and early stopping are all callbacks.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import torch
from diffusers import UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from sdlab.schedule import step_sigma, x0_from_prediction


@dataclass(frozen=True)
class StepRecord:
    """What happened at one step of the loop.

    `latents` is what the step started from (after any callback edits), `eps` the guided
    prediction the scheduler steps with (the UNet's output: noise for epsilon models, v for
    v-prediction models), `x0_pred` the clean latents it implies, and `next_latents` the
    scheduler's result (None while callbacks run, before the step is taken).
    """

    i: int
    t: torch.Tensor
    sigma: torch.Tensor
    latents: torch.Tensor  # (N, 4, H/8, W/8)
    eps_uncond: torch.Tensor | None  # None when guidance is 1 (no unconditional pass)
    eps_cond: torch.Tensor
    eps: torch.Tensor
    x0_pred: torch.Tensor
    next_latents: torch.Tensor | None = None


class StopSampling(Exception):  # noqa: N818 - a signal, not an error
    """Raised by a callback to end the loop after the current record."""


# A callback sees the record before the scheduler step; it returns None to leave it as is
# or a changed record (e.g. `dataclasses.replace(record, latents=...)`) to edit the run.
# A callback object may also have `begin(total_steps)` and `end()`, called around the loop.
Callback = Callable[[StepRecord], StepRecord | None]


def initial_noise(shape: tuple[int, ...], generator: torch.Generator, device: torch.device,
                  dtype: torch.dtype) -> torch.Tensor:
    """Gaussian latents drawn on the generator's device (the CPU, so that a seed gives the
    same noise on every device), then moved -- as diffusers' `randn_tensor` does."""
    return torch.randn(shape, generator=generator, dtype=dtype).to(device)


def denoise(unet: UNet2DConditionModel, scheduler: SchedulerMixin, latents: torch.Tensor,
            cond: torch.Tensor, guidance: float, *, prediction_type: str = "epsilon",
            generator: torch.Generator | None = None, callbacks: Sequence[Callback] = (),
            start: int = 0) -> Iterator[StepRecord]:
    """Run the scheduler's timesteps from index `start`, yielding a record after each step.

    `latents` are already scaled by `init_noise_sigma` (or noised to step `start`);
    `cond` holds the encoder states, `[uncond, cond]` stacked when `guidance != 1`.
    """
    step_kwargs = _step_kwargs(scheduler, generator)
    timesteps = scheduler.timesteps
    if start and hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    _each(callbacks, "begin", len(timesteps) - start)
    try:
        for i in range(start, len(timesteps)):
            t = timesteps[i]
            record = predict(unet, scheduler, latents, cond, guidance, i, t, prediction_type)
            try:
                for callback in callbacks:
                    record = callback(record) or record
            except StopSampling:
                return
            latents = scheduler.step(record.eps, t, record.latents, **step_kwargs,
                                     return_dict=False)[0]
            yield replace(record, next_latents=latents)
    finally:
        _each(callbacks, "end")


def _each(callbacks: Sequence[Callback], event: str, *args: object) -> None:
    for callback in callbacks:
        hook = getattr(callback, event, None)
        if hook is not None:
            hook(*args)


def predict(unet: UNet2DConditionModel, scheduler: SchedulerMixin, latents: torch.Tensor,
            cond: torch.Tensor, guidance: float, i: int, t: torch.Tensor,
            prediction_type: str) -> StepRecord:
    """One UNet evaluation with classifier-free guidance, as a record (not yet stepped)."""
    cfg = cond.shape[0] == 2 * latents.shape[0]
    model_input = torch.cat([latents] * 2) if cfg else latents
    model_input = scheduler.scale_model_input(model_input, t)  # (2N or N, 4, h, w)
    with torch.no_grad():
        out = unet(model_input, t, encoder_hidden_states=cond, return_dict=False)[0]
    if cfg:
        eps_uncond, eps_cond = out.chunk(2)
        eps = eps_uncond + guidance * (eps_cond - eps_uncond)
        model_input = model_input[latents.shape[0]:]
    else:
        eps_uncond, eps_cond, eps = None, out, out
    sigma = step_sigma(scheduler, i, t)
    x0_pred = x0_from_prediction(model_input, eps, sigma, prediction_type)
    return StepRecord(i, t, sigma, latents, eps_uncond, eps_cond, eps, x0_pred)


def _step_kwargs(scheduler: SchedulerMixin, generator: torch.Generator | None) -> dict:
    """Ancestral samplers draw fresh noise each step from the run's generator."""
    accepted = inspect.signature(scheduler.step).parameters
    return {"generator": generator} if "generator" in accepted else {}

