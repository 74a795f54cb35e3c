"""Text: prompt -> token ids -> CLIP text encoder states (the UNet's conditioning)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from sdlab.models import Parts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tokens:
    """A prompt tokenized to the encoder's fixed length (77 for CLIP)."""

    prompt: str
    ids: torch.Tensor  # (77,) int64, <|startoftext|> ... <|endoftext|> + padding
    dropped: str  # the words cut off because the prompt was too long ("" if none)


def tokenize(parts: Parts, prompt: str) -> Tokens:
    """Tokenize and pad/truncate to `model_max_length`, naming any words that were cut."""
    tok = parts.tokenizer
    ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids[0]
    full = tok(prompt, padding="longest", return_tensors="pt").input_ids[0]
    dropped = ""
    if len(full) > len(ids):
        # the cut sits between the last kept word and the final <|endoftext|>
        dropped = tok.decode(full[tok.model_max_length - 1 : -1]).strip()
        log.warning("prompt longer than %d tokens; dropped: %r", tok.model_max_length, dropped)
    return Tokens(prompt, ids, dropped)


@torch.no_grad()
def encode(parts: Parts, prompts: list[str]) -> torch.Tensor:
    """The text encoder's last hidden states for each prompt: (B, 77, d)."""
    ids = torch.stack([tokenize(parts, p).ids for p in prompts]).to(parts.device)
    mask = None
    if getattr(parts.text_encoder.config, "use_attention_mask", False):
        mask = (ids != parts.tokenizer.pad_token_id).long()
    states = parts.text_encoder(ids, attention_mask=mask)[0]
    return states.to(parts.dtype)


def conditioning(parts: Parts, prompt: str, negative: str, batch: int,
                 guidance: float) -> torch.Tensor:
    """Encoder states for one denoising batch: `[uncond × N, cond × N]` with guidance,
    `[cond × N]` when guidance is 1 (then the unconditional pass would be wasted)."""
    cond = encode(parts, [prompt]).repeat(batch, 1, 1)
    if not uses_cfg(guidance):
        return cond
    uncond = encode(parts, [negative]).repeat(batch, 1, 1)
    return torch.cat([uncond, cond])


def uses_cfg(guidance: float) -> bool:
    """Classifier-free guidance needs the unconditional pass unless the scale is exactly 1."""
    return guidance != 1.0
