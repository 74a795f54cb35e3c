"""The text stage of a run: each prompt tokenized once, encoded once, with the recipe's
edits -- the deep dive's text tricks:

- swap: replace a token's INPUT embedding by another token's ("puppy=skunk": 6829 -> 42194);
- learned embeddings (textual inversion): a word of the prompt is replaced by vectors
  learned for it (several vectors take consecutive positions);
- mix: a weighted sum of the encoder's OUTPUTS for several prompts ("A mouse:0.35").

Edits never touch the loaded model: token embeddings are looked up into a new tensor,
edited there, and run through the by-hand encoder (`text.encode_embeddings`). A prompt with
no edit in it takes the text encoder itself, so plain runs keep parity with diffusers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from sdlab.errors import SdlabError
from sdlab.models import Parts, read_embedding_file
from sdlab.recipe import EmbeddingSpec, Recipe, Swap
from sdlab.text import Tokens, encode_embeddings, encode_ids, fit_ids, token_embedding_table


@dataclass(frozen=True)
class LearnedEmbedding:
    """Textual-inversion vectors and the prompt word they stand for."""

    token: str
    vectors: torch.Tensor  # (n, d): n consecutive positions
    source: str


@dataclass(frozen=True)
class PromptTokens:
    """A prompt tokenized once: its ids (learned words as placeholders) and where each
    learned word's vectors go."""

    tokens: Tokens
    slots: tuple[tuple[int, int], ...]  # (first position, learned index)


@dataclass(frozen=True)
class Conditioning:
    """The encoder states of a run: `cond` (N, 77, d), `uncond` likewise or None without
    classifier-free guidance, and each mix term's tokens (for labels)."""

    cond: torch.Tensor
    uncond: torch.Tensor | None
    tokens: tuple[Tokens, ...]


# --- learned embeddings (textual inversion) ------------------------------------------


def load_embedding(path: str | Path, token: str | None = None) -> LearnedEmbedding:
    """A textual-inversion file as (n, d) vectors, under `token` or the file's own."""
    own, vectors = read_embedding_file(path)
    if vectors.ndim == 1:
        vectors = vectors[None]
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise SdlabError(f"{path}: expected (n, d) vectors, got shape {tuple(vectors.shape)}")
    if not torch.isfinite(vectors).all():
        raise SdlabError(f"{path} holds NaN or infinite values: it is damaged")
    return LearnedEmbedding(token or own, vectors.detach().float(), str(path))


def load_embeddings(parts: Parts, specs: Sequence[EmbeddingSpec]) -> list[LearnedEmbedding]:
    """The run's learned embeddings, checked against the text encoder's width and the
    vocabulary: a token must be new, one word, and used by one file only."""
    width = token_embedding_table(parts).shape[1]
    learned: list[LearnedEmbedding] = []
    for spec in specs:
        emb = load_embedding(spec.file, spec.token)
        if emb.vectors.shape[1] != width:
            raise SdlabError(f"embedding {spec.file} has width {emb.vectors.shape[1]} but this "
                             f"text encoder's is {width}: it was made for another model")
        _check_token(parts, emb, learned)
        learned.append(emb)
    return learned


def _check_token(parts: Parts, emb: LearnedEmbedding, earlier: list[LearnedEmbedding]) -> None:
    token = emb.token
    if not token.strip() or any(c.isspace() for c in token):
        raise SdlabError(f"the learned token {token!r} of {emb.source} must be one word "
                         "without spaces: name it with --token")
    if any(e.token.lower() == token.lower() for e in earlier):
        raise SdlabError(f"two embeddings use the token '{token}': give each its own --token")
    ids = parts.tokenizer(token, add_special_tokens=False).input_ids
    if len(ids) == 1 and ids[0] != parts.tokenizer.unk_token_id:
        raise SdlabError(f"the learned token '{token}' ({emb.source}) is already a word of "
                         "the vocabulary: name it with --token, e.g. --token '<my-word>'")


# --- tokens of a prompt, with the edits --------------------------------------------------


def prompt_tokens(parts: Parts, prompt: str,
                  learned: Sequence[LearnedEmbedding] = ()) -> PromptTokens:
    """Tokenize a prompt once; each whole-word occurrence of a learned token takes n
    placeholder positions (any id but padding: its vectors go there)."""
    tok = parts.tokenizer
    pattern = _learned_pattern(learned)
    if pattern is None or not pattern.search(prompt):
        return PromptTokens(fit_ids(tok, prompt, tok(prompt).input_ids), ())
    by_word = {e.token.lower(): k for k, e in enumerate(learned)}
    body: list[int] = []
    slots: list[tuple[int, int]] = []
    for k, piece in enumerate(pattern.split(prompt)):
        if k % 2:  # a learned token
            index = by_word[piece.lower()]
            slots.append((1 + len(body), index))
            body += [tok.bos_token_id] * learned[index].vectors.shape[0]
        elif piece.strip():
            body += tok(piece, add_special_tokens=False).input_ids
    return PromptTokens(fit_ids(tok, prompt, [tok.bos_token_id, *body, tok.eos_token_id]),
                        tuple(slots))


def _learned_pattern(learned: Sequence[LearnedEmbedding]) -> re.Pattern[str] | None:
    """Whole words only: a learned token 'red' matches 'a red cat', not 'reddish'."""
    if not learned:
        return None
    words = sorted((re.escape(e.token) for e in learned), key=len, reverse=True)
    return re.compile(rf"(?<![\w-])({'|'.join(words)})(?![\w-])", re.IGNORECASE)


def resolve_swap(parts: Parts, swap: Swap) -> tuple[int, int]:
    """The (old, new) token ids of a swap, both checked to be single tokens."""
    return _single_token(parts, swap.old), _single_token(parts, swap.new)


def _single_token(parts: Parts, word: str) -> int:
    tok = parts.tokenizer
    ids = tok(word, add_special_tokens=False).input_ids
    if len(ids) != 1:
        pieces = " ".join(tok.convert_ids_to_tokens(ids))
        raise SdlabError(f"--swap: '{word}' is {len(ids)} tokens ({pieces}), not one: pick "
                         f"a word that is a single token (see `sdlab tokens`)")
    return ids[0]


def edited_embeddings(parts: Parts, prompt: PromptTokens, swaps: Sequence[tuple[int, int]],
                      learned: Sequence[LearnedEmbedding]) -> tuple[torch.Tensor, bool]:
    """Token embeddings (77, d) of a tokenized prompt with the learned vectors and the swaps
    (old id, new id) written in, and whether anything was edited. The embedding table is
    only read: the edits go into a copy."""
    ids = prompt.tokens.ids
    table = token_embedding_table(parts)
    embeds = table[ids.to(table.device)].clone()  # (77, d)
    learned_at = torch.zeros(len(ids), dtype=torch.bool)
    for start, index in prompt.slots:  # a run cut by truncation keeps what fits before the end
        vectors = learned[index].vectors.to(embeds)[: max(0, len(ids) - 1 - start)]
        embeds[start : start + len(vectors)] = vectors
        learned_at[start : start + len(vectors)] = True
    edited = bool(prompt.slots)
    words = word_positions(parts, ids) & ~learned_at
    for old_id, new_id in swaps:
        hit = (ids == old_id) & words
        embeds[hit.to(embeds.device)] = table[new_id]
        edited = edited or bool(hit.any())
    return embeds, edited


def word_positions(parts: Parts, ids: torch.Tensor) -> torch.Tensor:
    """(77,) bool: the prompt's own tokens, between <|startoftext|> and <|endoftext|>."""
    end = int((ids == parts.tokenizer.eos_token_id).nonzero()[0])
    positions = torch.arange(len(ids))
    return (positions > 0) & (positions < end)


def prompt_states(parts: Parts, prompt: PromptTokens, swaps: Sequence[tuple[int, int]] = (),
                  learned: Sequence[LearnedEmbedding] = ()) -> torch.Tensor:
    """Encoder states (1, 77, d) of a tokenized prompt with the edits; the text encoder
    itself when there is nothing to edit in it."""
    embeds, edited = edited_embeddings(parts, prompt, swaps, learned)
    ids = prompt.tokens.ids[None]
    if not edited:
        return encode_ids(parts, ids)
    return encode_embeddings(parts, embeds[None], ids)


# --- conditioning: the one function every run calls --------------------------------------


def conditioning(parts: Parts, recipe: Recipe) -> Conditioning:
    """Encoder states for one denoising batch, with the run's text edits.

    cond = Σ weight · states(prompt) over the mix terms (or the one prompt), each with the
    swaps and learned embeddings; uncond = states(negative) with the learned embeddings (a
    learned word may be a negative one), never the swaps. Each distinct prompt is tokenized
    and encoded once."""
    learned = load_embeddings(parts, recipe.embeddings)
    swaps = [resolve_swap(parts, s) for s in recipe.swaps]
    prompts = {term.prompt: prompt_tokens(parts, term.prompt, learned) for term in recipe.terms}
    negative = recipe.params.negative
    if recipe.cfg and negative not in prompts:
        negative_tokens = prompt_tokens(parts, negative, learned)
    else:
        negative_tokens = prompts.get(negative)
    _check_used(recipe, list(prompts.values()), negative_tokens, swaps, learned, parts)
    states = {p: prompt_states(parts, t, swaps, learned) for p, t in prompts.items()}
    batch = recipe.params.batch
    cond = sum(term.weight * states[term.prompt] for term in recipe.terms)
    cond = cond.repeat(batch, 1, 1)  # (N, 77, d)
    tokens = tuple(prompts[term.prompt].tokens for term in recipe.terms)
    if not recipe.cfg:
        return Conditioning(cond, None, tokens)
    uncond = prompt_states(parts, negative_tokens, [], learned).repeat(batch, 1, 1)
    return Conditioning(cond, uncond, tokens)


def _check_used(recipe: Recipe, prompts: list[PromptTokens], negative: PromptTokens | None,
                swaps: list[tuple[int, int]], learned: list[LearnedEmbedding],
                parts: Parts) -> None:
    """An edit that changes nothing is a mistake: say so rather than run the plain prompt."""
    for swap, (old_id, _) in zip(recipe.swaps, swaps, strict=True):
        if not any(((p.tokens.ids == old_id) & word_positions(parts, p.tokens.ids)).any()
                   for p in prompts):
            raise SdlabError(f"--swap {swap.old}={swap.new}: '{swap.old}' is not a token of "
                             "the prompt (see `sdlab tokens PROMPT`)")
    used = {index for p in [*prompts, negative] if p is not None for _, index in p.slots}
    for index, emb in enumerate(learned):
        if index not in used:
            raise SdlabError(f"the learned token '{emb.token}' ({emb.source}) is not a word of "
                             "the prompt: write it there, or name it with --token")


def interpolation_mixes(prompt_a: str, prompt_b: str, frames: int) -> list[tuple[str, ...]]:
    """The --mix entries of each frame from A to B: weights (1 - a, a), a = 0 … 1 evenly."""
    if frames < 2:
        raise SdlabError(f"--frames must be at least 2 (got {frames})")
    alphas = [k / (frames - 1) for k in range(frames)]
    return [(f"{prompt_a}:{1.0 - a!r}", f"{prompt_b}:{a!r}") for a in alphas]
