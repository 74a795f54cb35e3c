"""Text: prompt -> token ids -> CLIP text encoder states (the UNet's conditioning).

Besides the encoder as a whole (`encode`), its stages one by one, as the deep dive shows
them: token ids with their strings, the token embedding table (vocab × d), the position
embedding table (77 × d), their sum, and the transformer run by hand from those input
embeddings (`encode_embeddings`) -- the path embedding surgery (`sdlab.surgery`) edits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers import CLIPTokenizer

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
    return tokenize_with(parts.tokenizer, prompt)


def tokenize_with(tok: CLIPTokenizer, prompt: str) -> Tokens:
    """`tokenize` for a tokenizer alone (no text encoder loaded): one tokenizer call."""
    return fit_ids(tok, prompt, tok(prompt).input_ids)


def fit_ids(tok: CLIPTokenizer, prompt: str, ids: list[int]) -> Tokens:
    """Full token ids (<|startoftext|> ... <|endoftext|>) cut or padded to the encoder's
    length, as the tokenizer's own truncation and padding do; a cut is logged once."""
    length = tok.model_max_length
    dropped = ""
    if len(ids) > length:
        # the cut sits between the last kept word and the final <|endoftext|>
        dropped = tok.decode(ids[length - 1 : -1]).strip()
        log.warning("prompt longer than %d tokens; dropped: %r", length, dropped)
        ids = [*ids[: length - 1], tok.eos_token_id]
    ids = [*ids, *[tok.pad_token_id] * (length - len(ids))]
    return Tokens(prompt, torch.tensor(ids), dropped)


@torch.no_grad()
def encode(parts: Parts, prompts: list[str]) -> torch.Tensor:
    """The text encoder's last hidden states for each prompt: (B, 77, d)."""
    return encode_ids(parts, torch.stack([tokenize(parts, p).ids for p in prompts]))


@torch.no_grad()
def encode_ids(parts: Parts, ids: torch.Tensor) -> torch.Tensor:
    """The text encoder's last hidden states for token ids (B, 77): (B, 77, d)."""
    ids = ids.to(parts.device)
    mask = None
    if getattr(parts.text_encoder.config, "use_attention_mask", False):
        mask = (ids != parts.tokenizer.pad_token_id).long()
    states = parts.text_encoder(ids, attention_mask=mask)[0]
    return states.to(parts.dtype)


# --- the stages of the text encoder, one by one ---------------------------------------


@dataclass(frozen=True)
class TokenRow:
    """One token of a prompt: where it sits, its id, and its vocabulary string."""

    position: int
    id: int
    token: str  # e.g. 'puppy</w>' (</w> marks the end of a word)


def token_rows(tok: CLIPTokenizer, prompt: str) -> list[TokenRow]:
    """The prompt's tokens from <|startoftext|> to the first <|endoftext|> (padding left out)."""
    ids = tokenize_with(tok, prompt).ids.tolist()
    end = ids.index(tok.eos_token_id) + 1 if tok.eos_token_id in ids else len(ids)
    return [TokenRow(i, t, tok.convert_ids_to_tokens(t)) for i, t in enumerate(ids[:end])]


def text_model(parts: Parts) -> torch.nn.Module:
    """The module with `embeddings`, `encoder` and `final_layer_norm` (transformers 5 puts
    them on CLIPTextModel itself; 4.x had them under `.text_model`)."""
    return getattr(parts.text_encoder, "text_model", parts.text_encoder)


def token_embedding_table(parts: Parts) -> torch.Tensor:
    """The token embedding table, (vocab, d): 49408 × 768 for SD 1.x. Read only."""
    return text_model(parts).embeddings.token_embedding.weight


def position_embedding_table(parts: Parts) -> torch.Tensor:
    """The position embedding table, (77, d). Read only."""
    return text_model(parts).embeddings.position_embedding.weight


def token_embeddings(parts: Parts, ids: torch.Tensor) -> torch.Tensor:
    """Look up the token embeddings of ids (B, L) -> (B, L, d): a new tensor, safe to edit."""
    return token_embedding_table(parts)[ids.to(parts.device)]


def causal_mask(length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive attention mask (1, 1, L, L): 0 where a token may look (itself and earlier
    tokens), the dtype's most negative number where it may not (later tokens)."""
    mask = torch.full((length, length), torch.finfo(dtype).min, dtype=dtype, device=device)
    return mask.triu(1)[None, None]


@torch.no_grad()
def encode_embeddings(parts: Parts, token_embeds: torch.Tensor,
                      ids: torch.Tensor | None = None) -> torch.Tensor:
    """The text encoder run by hand from token embeddings (B, L, d): add the position
    embeddings, run the transformer layers under a causal mask, apply the final layer norm.
    Gives `encode`'s states (within float rounding) when `token_embeds` are unedited.
    `ids` only matters for encoders whose config asks for a padding mask (not SD's)."""
    model = text_model(parts)
    length = token_embeds.shape[1]
    x = token_embeds.to(parts.device) + position_embedding_table(parts)[:length]  # (B, L, d)
    mask = causal_mask(length, x.dtype, x.device)  # (1, 1, L, L)
    if ids is not None and getattr(parts.text_encoder.config, "use_attention_mask", False):
        padding = ids.to(x.device) == parts.tokenizer.pad_token_id  # (B, L) keys to hide
        mask = (mask + padding[:, None, None, :] * torch.finfo(x.dtype).min)
        mask = mask.clamp(min=torch.finfo(x.dtype).min)
    x = model.encoder(inputs_embeds=x, attention_mask=mask).last_hidden_state
    return model.final_layer_norm(x).to(parts.dtype)


def encode_by_hand(parts: Parts, prompts: list[str]) -> torch.Tensor:
    """`encode`, but through the open path: ids -> token embeddings -> `encode_embeddings`."""
    ids = torch.stack([tokenize(parts, p).ids for p in prompts])
    return encode_embeddings(parts, token_embeddings(parts, ids), ids)


@dataclass(frozen=True)
class EmbeddingReport:
    """The deep dive's text-embedding walk-through for one prompt."""

    rows: list[TokenRow]  # the prompt's tokens (no padding)
    token_table_shape: tuple[int, ...]  # (vocab, d)
    position_table_shape: tuple[int, ...]  # (77, d)
    token_embeds: torch.Tensor  # (77, d) looked-up token embeddings
    position_embeds: torch.Tensor  # (77, d)
    input_embeds: torch.Tensor  # (77, d) their sum, what the transformer layers see
    states: torch.Tensor  # (77, d) the text encoder's output
    max_abs_diff: float  # |by-hand output - text encoder output|, largest entry


@torch.no_grad()
def embedding_report(parts: Parts, prompt: str) -> EmbeddingReport:
    """Token and position embeddings of a prompt, their sum, the encoder's output, and how
    far the by-hand encoder is from the text encoder itself."""
    ids = tokenize(parts, prompt).ids[None]  # (1, 77)
    tok_embeds = token_embeddings(parts, ids)[0]
    pos_embeds = position_embedding_table(parts)[: ids.shape[1]]
    states = encode(parts, [prompt])[0]
    by_hand = encode_embeddings(parts, tok_embeds[None], ids)[0]
    diff = (by_hand.float() - states.float()).abs().max().item()
    return EmbeddingReport(token_rows(parts.tokenizer, prompt),
                           tuple(token_embedding_table(parts).shape),
                           tuple(position_embedding_table(parts).shape),
                           tok_embeds, pos_embeds, tok_embeds + pos_embeds, states, diff)
