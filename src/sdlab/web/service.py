"""Every call the web app makes into the library, in one place.

The views never import the pipelines, the VAE or the writers themselves: they call these
functions, so that the app follows the library's run service with one edit here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from sdlab import vae
from sdlab.attention import AttentionRecorder, centroid, normalise_maps, overlay
from sdlab.errors import SdlabError
from sdlab.generate import Generation
from sdlab.limits import check_steps
from sdlab.models import Parts, load, resolve
from sdlab.preview import DECODERS, decoder_for, preview_for
from sdlab.recipe import Img2ImgParams, Recipe, params_from_dict, parse, strength_for
from sdlab.run import Outputs, check_for_model, check_outputs, execute
from sdlab.sampler import Callback, StepRecord, StopSampling
from sdlab.schedule import SCHEDULERS, make_scheduler, noise_to_step, schedule_table
from sdlab.surgery import load_embedding
from sdlab.text import TokenRow, token_rows
from sdlab.trace import progression_frame

__all__ = [
    "DECODERS", "SCHEDULERS", "Img2ImgParams", "Parts", "Recipe", "StepRecord", "StopSampling",
    "RunOutputs", "load_model", "make_recipe", "run", "frame", "guidance_size",
    "preview_image", "tokens", "check_embedding", "vae_roundtrip", "schedule_rows",
    "noised_to_step", "load_picture", "strength_for", "planned_steps", "StepAttention",
    "step_pictures", "attention_overlay", "centroid",
]


@dataclass
class RunOutputs:
    """A finished (or stopped) run, its step records and the files written for it."""

    generation: Generation
    records: list[StepRecord]
    pngs: list[Path]  # each carries the recipe (`sdlab generate --from` re-runs it)
    latents: Path
    video: Path | None = None
    trace: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    attention: StepAttention | None = None


@dataclass(frozen=True)
class StepAttention:
    """A run's cross-attention: `maps` (steps, tokens, h, w) on the latent grid, one per kept
    record in the records' order (each pixel's entries sum to 1), and the token strings
    (start and end tokens, the words, the padding summed last)."""

    maps: torch.Tensor
    labels: tuple[str, ...]

    def entry(self, k: int) -> int:
        """A token entry the page names, checked."""
        if not 0 <= k < len(self.labels):
            raise SdlabError(f"token {k} is not one of the last run's {len(self.labels)} "
                             "tokens: pick one from the list")
        return k

    def at_step(self, step: int, k: int) -> torch.Tensor:
        """(h, w): entry k's map at the step-th kept step."""
        return self.maps[step, self.entry(k)]

    def summed(self, k: int) -> torch.Tensor:
        """(h, w): entry k's map summed over every step, as a distribution over pixels."""
        return normalise_maps(self.maps[:, self.entry(k)].sum(0))

    @property
    def default(self) -> int:
        """The first word after the start token."""
        return 1 if len(self.labels) > 1 else 0


def load_model(model: str) -> tuple[Parts, str]:
    """The loaded parts and the name a recipe stores for them."""
    folder = resolve(model)
    ref = str(folder.resolve()) if Path(model).exists() else model
    return load(model), ref


def make_recipe(parts: Parts, settings: dict[str, Any]) -> Recipe:
    """A request's settings checked as any recipe is (types, values, limits, the model's
    size rules): text to image, or image to image when they name an image."""
    settings = {k: _whole(v) if k in WHOLE else v for k, v in settings.items()}
    recipe = parse(params_from_dict(settings, "the request"))
    check_for_model(recipe, parts.folder)
    return recipe


WHOLE = ("steps", "seed", "width", "height", "batch", "guide_every")


def _whole(value: Any) -> Any:
    """A page's number widgets may send 20.0 for 20."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def planned_steps(recipe: Recipe) -> int:
    p = recipe.params
    return p.steps - p.start_step() if isinstance(p, Img2ImgParams) else p.steps


def run(parts: Parts, model_ref: str, recipe: Recipe, folder: Path,
        callbacks: Sequence[Callback] = (), video: bool = False, trace: bool = False,
        attention: bool = False) -> RunOutputs:
    """The library's run service: the recipe run and its outputs written into `folder`
    (PNG(s) with the recipe, the final latents, on request the video and the trace), with
    `attention` each kept step's cross-attention maps."""
    outputs = check_outputs(Outputs(
        image=folder / "sdlab.png", latents=folder / "latents.safetensors",
        video=folder / "progression.mp4" if video else None,
        trace=folder / "trace.safetensors" if trace else None))
    done = execute(parts, recipe, outputs, callbacks, keep_records=True, model_ref=model_ref,
                   attention=attention)
    written = {p.name: p for p in done.written}
    pngs = [p for p in done.written if p.suffix == ".png"]
    return RunOutputs(done.generation, done.records, pngs, written["latents.safetensors"],
                      written.get("progression.mp4"), written.get("trace.safetensors"),
                      done.meta, _step_attention(done.attention, done.records))


def _step_attention(recorder: AttentionRecorder | None, records: list[StepRecord]
                    ) -> StepAttention | None:
    """The recorder's per-step maps of the kept records only (a stopped step is dropped);
    the recorder itself (and its hold on the UNet) is let go."""
    if recorder is None or not recorder.per_step or not records:
        return None
    maps = recorder.step_maps()
    kept = [recorder.step_indices.index(r.i) for r in records]
    return StepAttention(maps[kept].clone(), tuple(recorder.tokens.labels))


def guidance_size(record: StepRecord) -> float | None:
    """RMS of the guidance direction pred_cond - pred_uncond (None: no unconditional pass)."""
    if record.pred_uncond is None:
        return None
    return float(torch.sqrt(((record.pred_cond - record.pred_uncond) ** 2).mean()))


def load_picture(path: str, parts: Parts) -> Image.Image:
    """An uploaded image at the model's native size."""
    size = parts.native_size
    return vae.load_image(path, (size, size), parts.vae_scale_factor)


def frame(parts: Parts, record: StepRecord, decoder: str) -> Image.Image:
    """latents | predicted x0 of one step, through the linear preview or the full VAE."""
    return progression_frame(decoder_for(parts, decoder), record)


def step_pictures(parts: Parts, record: StepRecord, decoder: str
                  ) -> tuple[Image.Image, Image.Image]:
    """(latents | predicted x0, the predicted x0 alone) of one step, decoded once."""
    pair = frame(parts, record, decoder)
    half = pair.width // 2
    return pair, pair.crop((half, 0, pair.width, pair.height))


def attention_overlay(image: Image.Image, heat: torch.Tensor) -> Image.Image:
    """One word's map laid over a picture (the map stretched to its own range)."""
    return overlay(image, heat)


def preview_image(parts: Parts, x0_pred: torch.Tensor) -> Image.Image:
    """The cheap linear preview of the first image's predicted x0."""
    with torch.no_grad():
        return vae.to_pil(preview_for(parts)(x0_pred[:1]))[0]


def tokens(parts: Parts, prompt: str) -> list[TokenRow]:
    return token_rows(parts.tokenizer, prompt)


def check_embedding(path: str) -> str:
    """The token a textual-inversion file stands for (pickled code is refused, unrun)."""
    return load_embedding(path).token


def vae_roundtrip(parts: Parts, picture: Image.Image) -> tuple[Image.Image, Image.Image, float,
                                                                float]:
    """(the 4 latent channels, the reconstruction, PSNR in dB, compression factor)."""
    result = vae.roundtrip(parts, picture)
    return (vae.channels_picture(result.latents), result.reconstruction, result.psnr,
            result.compression)


def schedule_rows(parts: Parts, scheduler: str, steps: int) -> list[tuple[int, float, float]]:
    """(i, t, sigma) of each step of a scheduler set to `steps`."""
    return schedule_table(_scheduler(parts, scheduler, steps))


def _scheduler(parts: Parts, name: str, steps: int) -> Any:
    check_steps(steps, int(parts.scheduler_config.get("num_train_timesteps", 1000)))
    sched = make_scheduler(name, parts.scheduler_config)
    sched.set_timesteps(steps)
    return sched


def noised_to_step(parts: Parts, picture: Image.Image, scheduler: str, steps: int, step: int,
                   seed: int) -> Image.Image:
    """The image encoded, noised with `add_noise` to step `step`, decoded for viewing."""
    sched = _scheduler(parts, scheduler, steps)
    latents = vae.encode(parts, [picture], "mean")
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
    noisy = noise_to_step(sched, latents, noise.to(latents), step)
    return vae.to_pil(vae.decode(parts, noisy))[0]
