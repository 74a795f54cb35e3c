"""Stage 2: a tiny CLIP (transformers CLIPModel) trained contrastively on world images and
captions, with the real CLIP tokenizer. Its text tower becomes the frozen text encoder.

Half of each batch are "siblings" of the other half: the same scene with one attribute
changed (colour, shape, background, position or size), so the words that tell scenes
apart must be told apart by the encoder (hard negatives).

With `pair_additivity`, some captions also get their colour x shape "square": the same
caption with another colour, with another shape, and with both (all four pairs seen in
training), and the encoder's states at every position must add up like a parallelogram:
h(c, s) - h(c', s) - h(c, s') + h(c', s') = 0. The states of a pair never seen are then
those the seen pairs around it imply, and the UNet, which reads them, can draw it.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import torch
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTokenizer,
    CLIPVisionConfig,
)

from sdlab.random_models import TOKENIZER_DIR
from sdlab.tiny import world
from sdlab.tiny.imaging import images_to_tensor
from training.config import ClipConfig
from training.filler import add_filler
from training.fit import Losses, Phase, Schedule, Stage, step_rng

log = logging.getLogger("training.clip")
STAGE_ID = 2
BOS, EOS = 49406, 49407


def load_tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))


def build_clip(cfg: ClipConfig) -> CLIPModel:
    text = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=cfg.hidden_size,
        intermediate_size=4 * cfg.hidden_size,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=cfg.projection_dim,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=EOS,
    )
    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_hidden_size,
        intermediate_size=4 * cfg.vision_hidden_size,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.heads,
        image_size=world.IMAGE_SIZE,
        patch_size=8,
        hidden_act="quick_gelu",
        projection_dim=cfg.projection_dim,
    )
    config = CLIPConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(),
        projection_dim=cfg.projection_dim,
    )  # fmt: skip
    return CLIPModel(config)


_CHANGES = ("color", "shape", "background", "position", "size")


def sibling(scene: world.Scene, rng: np.random.Generator) -> world.Scene:
    """The same scene with one attribute changed (staying in the training split)."""
    for _ in range(100):
        attrs = scene.attributes
        key = _CHANGES[rng.integers(len(_CHANGES))]
        options = world.ATTRIBUTE_VALUES[key]
        attrs[key] = options[rng.integers(len(options))]
        if attrs[key] == getattr(scene, key) or not world.in_training_split(attrs):
            continue
        return world.make_scene(rng=rng, **attrs)
    return world.sample_scene(rng)


@dataclass
class ClipBatch:
    images: np.ndarray  # (n, 64, 64, 3) uint8
    captions: list[str]
    scenes: list[world.Scene]
    mentions: list[frozenset[str]]  # the attributes each caption names
    # the first captions' colour x shape squares: (other colour, other shape, both)
    squares: tuple[list[str], list[str], list[str]] | None = None


def pair_square(scene: world.Scene, rng: np.random.Generator
                ) -> tuple[world.Scene, world.Scene, world.Scene]:
    """The scene with another colour, with another shape, and with both: all four colour x
    shape pairs in the training split (and no shape the colour of its background)."""
    while True:
        color = world.COLOR_NAMES[rng.integers(len(world.COLOR_NAMES))]
        shape = world.SHAPES[rng.integers(len(world.SHAPES))]
        if color == scene.color or shape == scene.shape:
            continue
        square = (dataclasses.replace(scene, color=color),
                  dataclasses.replace(scene, shape=shape),
                  dataclasses.replace(scene, color=color, shape=shape))
        if all(world.in_training_split(s.attributes) for s in square):
            return square


def clip_batch(rng: np.random.Generator, n: int, filler_prob: float = 0.0,
               squares: int = 0) -> ClipBatch:
    """n images and captions: n/2 random training scenes, then one sibling of each;
    `filler_prob` of the captions get random filler words (see filler.py); the first
    `squares` captions' colour x shape squares (see pair_additivity_loss)."""
    base = [world.sample_scene(rng) for _ in range(n // 2)]
    scenes = base + [sibling(s, rng) for s in base]
    scenes += [world.sample_scene(rng) for _ in range(n - len(scenes))]
    images = np.stack([world.render(s) for s in scenes])
    caption_states, filler_states = [], []
    texts = []
    keep = squares > 0  # the generator's state before each caption and its filler
    for s in scenes:
        caption_states.append(copy.deepcopy(rng) if keep else None)
        texts.append(world.caption_and_mentions(s, rng))
    captions = []
    for t, _ in texts:
        filler_states.append(copy.deepcopy(rng) if keep else None)
        captions.append(add_filler(t, rng, filler_prob))
    batch = ClipBatch(images, captions, scenes, [m for _, m in texts])
    if squares > 0:  # the same template, wording and filler: only the pair's words differ
        square_rng = np.random.default_rng(rng.integers(2**63))
        corners = [pair_square(s, square_rng) for s in scenes[:squares]]
        batch.squares = tuple(
            [add_filler(world.caption(c[k], copy.deepcopy(cs)), copy.deepcopy(fs), filler_prob)
             for c, cs, fs in zip(corners, caption_states, filler_states, strict=False)]
            for k in range(3))
    return batch


def end_position(ids: torch.Tensor) -> torch.Tensor:
    """Index of each caption's first end token, shape (batch, 1): the states before it are
    the words, the ones after it the padding."""
    return (ids == EOS).int().argmax(dim=1, keepdim=True)


def _labels(batch: ClipBatch, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Each scene's value of `key` as a class index, and the same with -100 (ignored) where
    the caption does not name it."""
    values = world.ATTRIBUTE_VALUES[key]
    labels = torch.tensor([values.index(getattr(s, key)) for s in batch.scenes])
    named = torch.tensor([key in m for m in batch.mentions])
    return labels, torch.where(named, labels, torch.full_like(labels, -100))


class AttributeHeads(torch.nn.Module):
    """Linear read-outs of every attribute from the text and image embeddings.

    Contrastive loss alone let the text tower merge words the image tower could not yet
    tell apart (left/right came out nearly identical): naming each attribute from the
    text embedding keeps every word distinct, which is what the UNet's conditioning needs.
    With `padding_dim`, a third set reads every attribute the caption names from the mean
    of the text states after the end token (the padding, which SD's UNet reads most).
    Used in training only; not shipped.
    """

    def __init__(self, dim: int, padding_dim: int = 0):
        super().__init__()
        self.text = torch.nn.ModuleDict(
            {k: torch.nn.Linear(dim, len(v)) for k, v in world.ATTRIBUTE_VALUES.items()})
        self.image = torch.nn.ModuleDict(
            {k: torch.nn.Linear(dim, len(v)) for k, v in world.ATTRIBUTE_VALUES.items()})
        if padding_dim:
            self.padding = torch.nn.ModuleDict({k: torch.nn.Linear(padding_dim, len(v))
                                                for k, v in world.ATTRIBUTE_VALUES.items()})

    def padding_loss(self, ids: torch.Tensor, states: torch.Tensor,
                     batch: ClipBatch) -> torch.Tensor:
        """Cross-entropy of the padding read-outs (attributes the caption does not name are
        not asked for)."""
        after = (torch.arange(ids.shape[1]).unsqueeze(0) > end_position(ids)).float()
        after = after.unsqueeze(-1)
        padding = (states * after).sum(1) / after.sum(1).clamp(min=1)
        total = 0.0
        for key in world.ATTRIBUTE_VALUES:
            total = total + torch.nn.functional.cross_entropy(
                self.padding[key](padding), _labels(batch, key)[1], ignore_index=-100)
        return total / len(world.ATTRIBUTE_VALUES)

    def loss(self, text_embeds: torch.Tensor, image_embeds: torch.Tensor,
             batch: ClipBatch) -> torch.Tensor:
        total = 0.0
        for key in world.ATTRIBUTE_VALUES:
            labels, text_labels = _labels(batch, key)
            ce = torch.nn.functional.cross_entropy
            total = total + ce(self.text[key](text_embeds), text_labels, ignore_index=-100)
            total = total + ce(self.image[key](image_embeds), labels)
        return total / (2 * len(world.ATTRIBUTE_VALUES))


def tokenize(tokenizer: CLIPTokenizer, captions: list[str], length: int) -> torch.Tensor:
    return tokenizer(
        captions, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
    ).input_ids


@torch.no_grad()
def retrieval_accuracy(model: CLIPModel, tokenizer: CLIPTokenizer, seed: int, n: int = 256,
                       text_len: int = 24) -> float:
    """Share of images whose own caption scores highest among n (a sanity metric)."""
    batch = clip_batch(step_rng(seed, STAGE_ID, 10**8), n)
    out = model(input_ids=tokenize(tokenizer, batch.captions, text_len),
                pixel_values=images_to_tensor(batch.images))
    return float((out.logits_per_image.argmax(1) == torch.arange(n)).float().mean())


def pair_additivity_loss(model: CLIPModel, states: torch.Tensor,
                         square_ids: list[torch.Tensor]) -> torch.Tensor:
    """Mean squared parallelogram residual h(c, s) - h(c', s) - h(c, s') + h(c', s') of the
    text states, at every position (the padding too: SD's UNet reads all 77), for the first
    len(square_ids[0]) captions, relative to the mean squared change one swap makes (so 1
    means pairs as entangled as the swaps are large); `square_ids`: the (c', s), (c, s')
    and (c', s') captions. The ratio keeps its gradient through the swaps' change: with that
    held fixed, the cheapest way down was to stop encoding the shape at all (weight 10:
    the UNet on that encoder drew the right shape 44% of the time)."""
    other_color, other_shape, both = (model.text_model(input_ids=ids).last_hidden_state
                                      for ids in square_ids)
    own = states[: len(both)]
    residual = ((own - other_color - other_shape + both) ** 2).mean()
    swaps = (((own - other_color) ** 2).mean() + ((own - other_shape) ** 2).mean()) / 2
    return residual / swaps.clamp(min=1e-8)


def clip_losses(model: CLIPModel, heads: AttributeHeads, tokenizer: CLIPTokenizer,
                cfg: ClipConfig, batch: ClipBatch) -> Losses:
    """Contrastive loss + attr_weight x the attribute read-out loss (+ pair_additivity x
    pair_additivity_loss where the batch has squares, + padding_readout x the padding
    read-out loss)."""
    ids = tokenize(tokenizer, batch.captions, cfg.text_len)
    out = model(input_ids=ids, pixel_values=images_to_tensor(batch.images), return_loss=True)
    states = out.text_model_output.last_hidden_state  # (B, text_len, hidden)
    attr = heads.loss(out.text_embeds, out.image_embeds, batch)
    loss = out.loss + cfg.attr_weight * attr
    values = {"contrastive": out.loss.item(), "attributes": attr.item()}
    if batch.squares is not None:
        add = pair_additivity_loss(model, states,
                                   [tokenize(tokenizer, c, cfg.text_len) for c in batch.squares])
        loss = loss + cfg.pair_additivity * add
        values["pair_additivity"] = add.item()
    if cfg.padding_readout > 0:
        pad = heads.padding_loss(ids, states, batch)
        loss = loss + cfg.padding_readout * pad
        values["padding_readout"] = pad.item()
    return loss, values


def clip_stage(cfg: ClipConfig, seed: int) -> Stage:
    """The tiny CLIP and its attribute heads (not shipped), AdamW with weight decay on the
    weight matrices but the embeddings; retrieval measured every 100 steps."""
    torch.manual_seed(seed)
    tokenizer = load_tokenizer()
    model = build_clip(cfg).train()
    heads = AttributeHeads(cfg.projection_dim, cfg.hidden_size if cfg.padding_readout else 0)
    named = list(model.named_parameters()) + list(heads.named_parameters())
    decays = [p.ndim >= 2 and "embedding" not in n for n, p in named]
    opt = torch.optim.AdamW([
        {"params": [p for (_, p), d in zip(named, decays, strict=True) if d],
         "weight_decay": cfg.weight_decay},
        {"params": [p for (_, p), d in zip(named, decays, strict=True) if not d],
         "weight_decay": 0.0},
    ], lr=cfg.lr)  # fmt: skip
    squares = cfg.additivity_captions if cfg.pair_additivity > 0 else 0

    def loss(step: int) -> Losses:
        batch = clip_batch(step_rng(seed, STAGE_ID, step), cfg.batch_size, cfg.filler_prob,
                           squares=squares)
        return clip_losses(model, heads, tokenizer, cfg, batch)

    def clamp_logit_scale(step: int) -> None:
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)  # at most 100, as in CLIP

    return Stage(
        model=model, opt=opt, clipped=[p for _, p in named],
        phases=[Phase("clip", cfg.steps, Schedule(cfg.lr, cfg.warmup, 0, cfg.steps), loss)],
        extra={"heads": heads}, after_step=clamp_logit_scale,
        evaluate=lambda: {"retrieval": retrieval_accuracy(model, tokenizer, seed,
                                                          text_len=cfg.text_len)},
        eval_every=100,
    )  # fmt: skip
