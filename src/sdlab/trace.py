"""The record of a run: every step's tensors saved to one safetensors file (the recipe and
per-step numbers as JSON in its header), frames of the progression, and MP4 video."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import imageio.v2 as imageio
import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from sdlab import vae
from sdlab.errors import SdlabError
from sdlab.outputs import atomic_write
from sdlab.preview import Decoder
from sdlab.sampler import StepRecord

TENSOR_FIELDS = ("latents", "pred_uncond", "pred_cond", "pred", "x0_pred", "next_latents")

def progression_frame(decode: Decoder, record: StepRecord, index: int = 0) -> Image.Image:
    """The deep dive's frame: the current latents | the predicted x0, side by side."""
    with torch.no_grad():
        pair = torch.cat([record.latents[index : index + 1], record.x0_pred[index : index + 1]])
        left, right = vae.to_pil(decode(pair))
    return vae.side_by_side([left, right])


class VideoFrames:
    """A callback that renders one progression frame per step."""

    def __init__(self, decode: Decoder) -> None:
        self.decode = decode
        self.frames: list[Image.Image] = []

    def __call__(self, record: StepRecord) -> None:
        self.frames.append(progression_frame(self.decode, record))


def write_video(frames: list[Image.Image], path: str | Path, fps: int = 8) -> Path:
    """MP4 (H.264, yuv420p: sides padded to even) via the ffmpeg inside imageio-ffmpeg,
    written atomically."""
    if not frames:
        raise SdlabError("no frames to write")

    def write(tmp: Path) -> None:
        with imageio.get_writer(tmp, fps=fps, codec="libx264", quality=8,
                                macro_block_size=2, ffmpeg_log_level="error") as writer:
            for frame in frames:
                writer.append_data(np.asarray(frame.convert("RGB")))

    return atomic_write(path, write)


def read_video(path: str | Path) -> list[np.ndarray]:
    return list(imageio.mimread(path, memtest=False))


@dataclass
class Trace:
    """Every step of a run: stacked tensors (S, N, C, h, w) plus JSON-able facts."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return int(self.tensors["t"].shape[0])

    def record(self, k: int) -> StepRecord:
        get = self.tensors.get
        return StepRecord(int(self.tensors["i"][k]), self.tensors["t"][k],
                          self.tensors["sigma"][k], get("latents")[k],
                          get("pred_uncond")[k] if "pred_uncond" in self.tensors else None,
                          get("pred_cond")[k], get("pred")[k], get("x0_pred")[k],
                          get("next_latents")[k] if "next_latents" in self.tensors else None)


def to_trace(records: list[StepRecord], meta: dict[str, Any]) -> Trace:
    tensors: dict[str, torch.Tensor] = {
        "i": torch.tensor([r.i for r in records]),
        "t": torch.stack([torch.as_tensor(r.t).float().cpu() for r in records]),
        "sigma": torch.stack([torch.as_tensor(r.sigma).float().cpu() for r in records]),
    }
    for name in TENSOR_FIELDS:
        values = [getattr(r, name) for r in records]
        if all(v is not None for v in values):
            tensors[name] = torch.stack([v.detach().float().cpu() for v in values])
    return Trace(tensors, meta)


def save_trace(trace: Trace, path: str | Path) -> Path:
    """One safetensors file; the JSON facts ride in its header under `sdlab`."""
    tensors = {k: v.contiguous() for k, v in trace.tensors.items()}
    header = {"sdlab": json.dumps(trace.meta, sort_keys=True)}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))


REQUIRED = ("i", "t", "sigma", "latents", "pred_cond", "pred", "x0_pred")


def load_trace(path: str | Path) -> Trace:
    """A trace written by `save_trace`, checked: every per-step tensor present, one entry
    per step, finite values, JSON facts readable."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("sdlab", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except Exception as err:  # a damaged file, whatever the library's exception
        raise SdlabError(f"cannot read trace {path}: {_one_line(err)}") from err
    missing = [k for k in REQUIRED if k not in tensors]
    if missing:
        raise SdlabError(f"{path} is not an sdlab trace (missing {', '.join(missing)})")
    steps = {int(v.shape[0]) if v.ndim else -1 for v in tensors.values()}
    if len(steps) != 1 or steps == {0} or not isinstance(meta, dict):
        raise SdlabError(f"{path} is a damaged sdlab trace (its tensors disagree on the steps)")
    if not all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point()):
        raise SdlabError(f"{path} holds NaN or infinite values: it is damaged")
    return Trace(tensors, meta)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:200] or type(err).__name__
