"""Token grounding: the UNet's cross-attention of the words that name the shape and the
background kept where those things are (the token loss of TokenCompose, Wang et al. 2024,
arXiv 2312.03626, with the world's exact masks in place of a segmenter's).

The text encoder is causal, so the state of a prompt's last content word carries the whole
prompt, and a UNet trained on SD's loss alone reads the shape's attributes from wherever it
finds them -- often from the background colour word when it comes last. The maps of the
deep dive's "where does each word act" question then show the background word on the
shape. This loss asks, for every cross-attention layer, that the shape word's attention lie
inside the shape's mask and the background colour word's outside it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from transformers import CLIPTokenizer

from sdlab.tiny import world

CROSS_ATTENTION = "attn2.processor"
LATENT = world.IMAGE_SIZE // 8  # the latent grid the masks are kept at


class AttentionKeeper:
    """A cross-attention processor computing the layer's output as the stock one does
    (softmax(Q Kᵀ · scale) V), keeping the head-averaged probabilities (B, HW, 77) in
    `kept` while they are asked for."""

    def __init__(self, kept: list[torch.Tensor]):
        self.kept = kept

    def __call__(self, attn: Attention, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, **_: object) -> torch.Tensor:
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        v = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(q, k, None)
        batch = hidden_states.shape[0]
        self.kept.append(probs.view(batch, attn.heads, *probs.shape[1:]).mean(1))
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        return attn.to_out[1](attn.to_out[0](out))


def keep_attention(unet: UNet2DConditionModel) -> list[torch.Tensor]:
    """Set an AttentionKeeper on every cross-attention layer; returns the list they fill."""
    kept: list[torch.Tensor] = []
    unet.set_attn_processor({name: AttentionKeeper(kept) if name.endswith(CROSS_ATTENTION)
                             else AttnProcessor2_0() for name in unet.attn_processors})
    return kept


def word_positions(tokenizer: CLIPTokenizer, captions: list[str],
                   scenes: list[world.Scene]) -> torch.Tensor:
    """(N, 2) token positions of each caption's shape word and background colour word
    (-1 where the caption does not name it)."""
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True).input_ids

    def position(row: list[int], word: str) -> int:
        token = tokenizer.convert_tokens_to_ids(word + "</w>")
        return row.index(token) if token in row else -1

    return torch.tensor([[position(row, s.shape), position(row, s.background)]
                         for row, s in zip(ids, scenes, strict=True)], dtype=torch.int16)


def shape_masks(scenes: list[world.Scene]) -> torch.Tensor:
    """(N, LATENT, LATENT) share of each latent cell the scene's shape covers."""
    masks = torch.from_numpy(np.stack([world.render_mask(s.shape, s.cx, s.cy, s.radius)
                                       for s in scenes]))
    return F.adaptive_avg_pool2d(masks[:, None], LATENT)[:, 0].half()


def grounding_loss(kept: list[torch.Tensor], positions: torch.Tensor,
                   masks: torch.Tensor) -> torch.Tensor:
    """Mean over layers and named words of the share of the word's attention on the wrong
    side of the mask: outside it for the shape word, inside it for the background word.
    `positions` (B, 2) as word_positions; rows of -1 are left out."""
    total, count = torch.zeros(()), 0
    for probs in kept:  # (B, HW, 77)
        side = int(round(probs.shape[1] ** 0.5))
        mask = F.adaptive_avg_pool2d(masks[:, None].float(), side).flatten(1)  # (B, HW)
        for j, inside in ((0, True), (1, False)):
            rows = positions[:, j] >= 0
            if not rows.any():
                continue
            index = positions[rows, j].long()[:, None, None].expand(-1, probs.shape[1], 1)
            word = probs[rows].gather(2, index)[..., 0]  # (b, HW)
            share = (word * mask[rows]).sum(1) / word.sum(1).clamp_min(1e-8)
            total = total + ((1 - share) if inside else share).sum()
            count += int(rows.sum())
    return total / max(count, 1)
