"""Bounds on the work and memory one request may ask for, checked before any work.

The limits that cost memory or time can be raised through the environment
(`SDLAB_MAX_PIXELS`, `SDLAB_MAX_BATCH`, `SDLAB_MAX_STEPS`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sdlab.errors import SdlabError


@dataclass(frozen=True)
class Limits:
    """Bounds on the work and memory one run may ask for."""

    max_pixels: int = 4 * 1024 * 1024  # height * width * batch
    max_side: int = 4096
    max_batch: int = 16
    max_steps: int = 1000
    max_guidance: float = 100.0
    max_weight: float = 100.0  # |mix weight|
    max_guide_scale: float = 1e6
    max_prompt_chars: int = 10_000
    max_edits: int = 64  # swaps, mix terms, embeddings, guides: each
    max_file_bytes: int = 256 * 1024 * 1024  # latents, traces, uploads read whole

    @classmethod
    def from_env(cls) -> Limits:
        """The defaults, with any raised through the environment."""
        values = {}
        for name, var in RAISE_HINT.items():
            text = os.environ.get(var)
            if text is not None:
                try:
                    values[name] = int(text)
                except ValueError:
                    raise SdlabError(f"{var}={text!r} is not a whole number") from None
        return cls(**values)


RAISE_HINT = {"max_pixels": "SDLAB_MAX_PIXELS", "max_batch": "SDLAB_MAX_BATCH",
              "max_steps": "SDLAB_MAX_STEPS"}


def over(what: str, value: object, limit: object, name: str) -> SdlabError:
    hint = f" (set {RAISE_HINT[name]} to raise it)" if name in RAISE_HINT else ""
    return SdlabError(f"{what} {value} is over the limit of {limit}{hint}")


def check_pixels(height: int, width: int, batch: int, limits: Limits | None = None) -> None:
    """A run's pixels (height x width x batch) within the limit."""
    limits = limits or Limits.from_env()
    pixels = height * width * batch
    if pixels > limits.max_pixels:
        raise over(f"{height}x{width} x batch {batch} =", f"{pixels} pixels",
                   limits.max_pixels, "max_pixels")


def check_steps(steps: int, train_steps: int | None = None,
                limits: Limits | None = None) -> None:
    """A step count of at least 1, within the limit and the model's training timesteps."""
    limits = limits or Limits.from_env()
    if steps < 1:
        raise SdlabError(f"--steps must be at least 1 (got {steps})")
    if steps > limits.max_steps:
        raise over("--steps", steps, limits.max_steps, "max_steps")
    if train_steps is not None and steps > train_steps:
        raise SdlabError(f"--steps {steps} is more than the {train_steps} timesteps the "
                         "model was trained with: use fewer steps")
