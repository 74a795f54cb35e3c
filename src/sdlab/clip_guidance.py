"""CLIP as a loss: how far the image is from a text, in a CLIP model's joint space.

The bundled model ships its CLIP image tower (`clip/` beside `text_encoder/`, which is the
text tower); any transformers `CLIPModel` folder (e.g. openai/clip-vit-large-patch14 from
the Hugging Face cache) works too, with its own preprocessing (`preprocessor_config.json`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import CLIPModel, CLIPTokenizer

from sdlab.errors import SdlabError
from sdlab.models import (
    Parts,
    clip_preprocessing,
    has_split_clip,
    load_split_clip,
    resolve_clip,
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's pixel statistics
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ClipScorer:
    model: CLIPModel
    tokenizer: CLIPTokenizer
    image_size: int
    mean: torch.Tensor  # (3,)
    std: torch.Tensor

    @torch.no_grad()
    def text_features(self, text: str) -> torch.Tensor:
        ids = self.tokenizer([text], padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length,
                             return_tensors="pt").input_ids.to(self.model.device)
        return F.normalize(_features(self.model.get_text_features(input_ids=ids)), dim=-1)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in [0, 1] -> unit CLIP embeddings; differentiable."""
        x = F.interpolate(images.float(), size=(self.image_size, self.image_size),
                          mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.mean.to(x)[None, :, None, None]) / self.std.to(x)[None, :, None, None]
        return F.normalize(_features(self.model.get_image_features(pixel_values=x)), dim=-1)

    def similarity(self, images: torch.Tensor, text: str) -> torch.Tensor:
        """Cosine similarity of each image to the text: (N,)."""
        return self.image_features(images) @ self.text_features(text).T[:, 0]

    def loss(self, text: str):  # -> Loss
        """1 - cosine similarity, averaged over the batch: lower is closer to the text."""
        target = self.text_features(text)

        def clip_loss(images: torch.Tensor) -> torch.Tensor:
            return 1 - (self.image_features(images) @ target.T.to(images.device)).mean()

        return clip_loss


def _features(out: torch.Tensor | object) -> torch.Tensor:
    """transformers 5 may return a model output instead of a bare tensor."""
    if isinstance(out, torch.Tensor):
        return out
    for name in ("pooler_output", "text_embeds", "image_embeds"):
        value = getattr(out, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"unexpected CLIP output {type(out).__name__}")


def clip_for(parts: Parts, clip_model: str | None = None) -> ClipScorer | None:
    """A scorer on the parts' device from `clip_model` (a CLIPModel folder or cached hub id),
    else the model folder's own `clip/`, else None."""
    if clip_model:
        folder = resolve_clip(clip_model)
        try:
            model = CLIPModel.from_pretrained(folder, use_safetensors=True)
            tokenizer = CLIPTokenizer.from_pretrained(folder)
        except Exception as err:  # every library failure becomes one line
            raise SdlabError(f"cannot load the CLIP in {folder}: {_first_line(err)}") from err
        return _scorer(model, tokenizer, clip_preprocessing(folder), parts.device)
    if has_split_clip(parts.folder):
        try:
            model = load_split_clip(parts.folder)
        except Exception as err:  # every library failure becomes one line
            raise SdlabError(f"cannot load the CLIP beside {parts.folder}'s text encoder: "
                             f"{_first_line(err)}") from err
        return _scorer(model, parts.tokenizer, clip_preprocessing(parts.folder / "clip"),
                       parts.device)
    return None


def _first_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300] or type(err).__name__


def _scorer(model: CLIPModel, tokenizer: CLIPTokenizer, preprocessing: dict,
            device: torch.device) -> ClipScorer:
    model = model.to(device).eval().requires_grad_(False)
    size = int(model.config.vision_config.image_size)
    mean = preprocessing.get("image_mean", CLIP_MEAN)
    std = preprocessing.get("image_std", CLIP_STD)
    return ClipScorer(model, tokenizer, size, torch.tensor(mean), torch.tensor(std))
