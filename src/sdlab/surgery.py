"""Embedding surgery and mixing: the deep dive's text tricks as recipe settings.

- swap: replace a token's INPUT embedding by another token's ("puppy=skunk": 6829 -> 42194);
- learned embeddings (textual inversion): a word of the prompt is replaced by vectors
  learned for it (several vectors take consecutive positions);
- mix: a weighted sum of the encoder's OUTPUTS for several prompts ("A mouse:0.35").

Edits never touch the loaded model: token embeddings are looked up into a new tensor,
edited there, and run through the by-hand encoder (`text.encode_embeddings`). A run with
no edits takes the text encoder itself, so plain runs keep parity with diffusers.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdlab.errors import SdlabError
from sdlab.models import Parts
from sdlab.text import encode, encode_embeddings, token_embedding_table, tokenize, uses_cfg

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextEdits:
    """The text edits of a run, as stored in its recipe (strings, so JSON keeps them)."""

    swap: tuple[str, ...] = ()  # "WORD=WORD": the first word's input embedding -> the second's
    mix: tuple[str, ...] = ()  # "PROMPT:WEIGHT": the conditioning is the weighted sum
    embedding: tuple[str, ...] = ()  # textual-inversion files
    token: tuple[str, ...] = ()  # the prompt word each file replaces (empty: the file's own)

    @classmethod
    def of(cls, params: Any) -> TextEdits:
        """The edits held by a params object (GenerateParams or any with these fields)."""
        return cls(*(tuple(getattr(params, name, ())) for name in
                     ("swap", "mix", "embedding", "token")))


@dataclass(frozen=True)
class LearnedEmbedding:
    """Textual-inversion vectors and the prompt word they stand for."""

    token: str
    vectors: torch.Tensor  # (n, d): n consecutive positions
    source: str


def parse_swap(text: str) -> tuple[str, str]:
    """'puppy=skunk' -> ('puppy', 'skunk')."""
    old, sep, new = text.partition("=")
    if not sep or not old.strip() or not new.strip() or "=" in new:
        raise SdlabError(f"--swap '{text}' is not WORD=WORD (e.g. --swap puppy=skunk)")
    return old.strip(), new.strip()


def parse_mix(text: str) -> tuple[str, float]:
    """'A mouse:0.35' -> ('A mouse', 0.35); the weight follows the LAST colon."""
    prompt, sep, weight = text.rpartition(":")
    try:
        value = float(weight) if sep else None
    except ValueError:
        value = None
    if value is None or value != value or abs(value) == float("inf"):
        raise SdlabError(f"--mix '{text}' is not PROMPT:WEIGHT (e.g. --mix 'A mouse:0.35')")
    return prompt, value


def check_text(prompt: str, edits: TextEdits) -> None:
    """Check the edits' syntax (no model needed); raise a one-line SdlabError."""
    for swap in edits.swap:
        parse_swap(swap)
    for entry in edits.mix:
        parse_mix(entry)
    if edits.mix and prompt:
        raise SdlabError("give either a prompt or --mix entries (PROMPT:WEIGHT), not both")
    if edits.token and len(edits.token) != len(edits.embedding):
        raise SdlabError(f"{len(edits.token)} --token for {len(edits.embedding)} --embedding: "
                         "give one --token per --embedding, or none")
    for file in edits.embedding:
        if not Path(file).is_file():
            raise SdlabError(f"embedding file not found: {file}")


# --- learned embeddings (textual inversion) ------------------------------------------


def load_embedding(path: str | Path, token: str | None = None) -> LearnedEmbedding:
    """Read a textual-inversion file without running pickled code.

    diffusers `learned_embeds.bin` / `.safetensors` hold {token: (d,) or (n, d)}; A1111 `.pt`
    files hold `string_to_param` (and A1111 `.safetensors` `emb_params`), and are used under
    the file's name (A1111's rule). `.bin`/`.pt` are read with `torch.load(weights_only=True)`:
    a file that needs more than tensors and plain containers is refused.
    """
    path = Path(path)
    data = _read_tensors(path)
    own, vectors = _vectors_of(data, path)
    if vectors.ndim == 1:
        vectors = vectors[None]
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise SdlabError(f"{path}: expected (n, d) vectors, got shape {tuple(vectors.shape)}")
    return LearnedEmbedding(token or own, vectors.detach().float(), str(path))


def _read_tensors(path: Path) -> Any:
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # a damaged file, whatever the library's exception
            raise SdlabError(f"cannot read {path} as safetensors: {_short(err)}") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise SdlabError(f"refusing {path}: loading it would run pickled code "
                         f"({_short(err)}); sdlab reads only tensors -- convert it to "
                         ".safetensors where you trust it") from err
    except Exception as err:
        raise SdlabError(f"cannot read {path} as an embedding: {_short(err)}") from err


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return (text.split(". ")[0] or type(err).__name__)[:160]


def _vectors_of(data: Any, path: Path) -> tuple[str, torch.Tensor]:
    """(the file's own token, its vectors) for the formats in `load_embedding`."""
    if isinstance(data, dict) and "string_to_param" in data:  # A1111 .pt
        params = data["string_to_param"]
        if isinstance(params, dict) and len(params) == 1:
            value = next(iter(params.values()))
            if isinstance(value, torch.Tensor):
                return path.stem, value
    elif isinstance(data, dict) and isinstance(data.get("emb_params"), torch.Tensor):
        return path.stem, data["emb_params"]  # A1111 .safetensors
    elif isinstance(data, dict) and len(data) == 1:  # diffusers {token: tensor}
        key, value = next(iter(data.items()))
        if isinstance(key, str) and isinstance(value, torch.Tensor):
            return key, value
    keys = ", ".join(map(str, list(data)[:4])) if isinstance(data, dict) else type(data).__name__
    raise SdlabError(f"{path} is not a textual-inversion embedding ({keys}): expected "
                     "{token: tensor} (diffusers) or string_to_param (A1111)")


def load_embeddings(parts: Parts, edits: TextEdits) -> list[LearnedEmbedding]:
    """The run's learned embeddings, checked against the text encoder's width."""
    width = token_embedding_table(parts).shape[1]
    tokens = edits.token or ("",) * len(edits.embedding)
    learned = []
    for file, token in zip(edits.embedding, tokens, strict=True):
        emb = load_embedding(file, token or None)
        if emb.vectors.shape[1] != width:
            raise SdlabError(f"embedding {file} has width {emb.vectors.shape[1]} but this text "
                             f"encoder's is {width}: it was made for another model")
        learned.append(emb)
    return learned


# --- input embeddings of a prompt, with the edits --------------------------------------


@dataclass(frozen=True)
class Swap:
    old: str
    new: str
    old_id: int
    new_id: int


def resolve_swaps(parts: Parts, edits: TextEdits) -> list[Swap]:
    """Each WORD=WORD with both words checked to be single tokens."""
    return [Swap(old, new, _single_token(parts, old), _single_token(parts, new))
            for old, new in map(parse_swap, edits.swap)]


def _single_token(parts: Parts, word: str) -> int:
    tok = parts.tokenizer
    ids = tok(word, add_special_tokens=False).input_ids
    if len(ids) != 1:
        pieces = " ".join(tok.convert_ids_to_tokens(ids))
        raise SdlabError(f"--swap: '{word}' is {len(ids)} tokens ({pieces}), not one: pick "
                         f"a word that is a single token (see `sdlab tokens`)")
    return ids[0]


def prompt_ids(parts: Parts, prompt: str,
               learned: Sequence[LearnedEmbedding]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Token ids (77,) of a prompt whose learned tokens each take n placeholder positions,
    and the (position, learned index) of each such run's first position."""
    tok = parts.tokenizer
    by_word = {e.token.lower(): k for k, e in enumerate(learned)}
    if not by_word or not any(w in prompt.lower() for w in by_word):
        return tokenize(parts, prompt).ids, []
    pattern = "|".join(re.escape(w) for w in sorted(by_word, key=len, reverse=True))
    body: list[int] = []
    slots: list[tuple[int, int]] = []
    for k, piece in enumerate(re.split(f"({pattern})", prompt, flags=re.IGNORECASE)):
        if k % 2:  # a learned token: placeholders (any id but padding; its vectors go here)
            index = by_word[piece.lower()]
            slots.append((1 + len(body), index))
            body += [tok.bos_token_id] * learned[index].vectors.shape[0]
        elif piece.strip():
            body += tok(piece, add_special_tokens=False).input_ids
    room = tok.model_max_length - 2
    if len(body) > room:
        log.warning("prompt longer than %d tokens; the end was dropped", tok.model_max_length)
    ids = [tok.bos_token_id, *body[:room], tok.eos_token_id]
    ids += [tok.pad_token_id] * (tok.model_max_length - len(ids))
    return torch.tensor(ids), slots


def edited_embeddings(parts: Parts, prompt: str, swaps: Sequence[Swap],
                      learned: Sequence[LearnedEmbedding]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (77,), token embeddings (77, d)) of a prompt with the swaps and learned vectors
    written in. The embedding table is only read: the edits go into a copy."""
    ids, slots = prompt_ids(parts, prompt, learned)
    table = token_embedding_table(parts)
    embeds = table[ids.to(table.device)].clone()  # (77, d)
    learned_at = torch.zeros(len(ids), dtype=torch.bool)
    for start, index in slots:  # a run cut by truncation keeps what fits before the end
        vectors = learned[index].vectors.to(embeds)[: max(0, len(ids) - 1 - start)]
        embeds[start : start + len(vectors)] = vectors
        learned_at[start : start + len(vectors)] = True
    words = _word_positions(parts, ids) & ~learned_at
    for swap in swaps:
        embeds[((ids == swap.old_id) & words).to(embeds.device)] = table[swap.new_id]
    return ids, embeds


def _word_positions(parts: Parts, ids: torch.Tensor) -> torch.Tensor:
    """(77,) bool: the prompt's own tokens, between <|startoftext|> and <|endoftext|>."""
    end = int((ids == parts.tokenizer.eos_token_id).nonzero()[0])
    positions = torch.arange(len(ids))
    return (positions > 0) & (positions < end)


def prompt_states(parts: Parts, prompt: str, swaps: Sequence[Swap] = (),
                  learned: Sequence[LearnedEmbedding] = ()) -> torch.Tensor:
    """Encoder states (1, 77, d) of one prompt with the edits; the text encoder itself when
    there is nothing to edit in this prompt."""
    ids, embeds = edited_embeddings(parts, prompt, list(swaps), list(learned))
    plain = tokenize(parts, prompt).ids
    if torch.equal(ids, plain) and torch.equal(embeds, token_embedding_table(parts)[plain]):
        return encode(parts, [prompt])
    return encode_embeddings(parts, embeds[None], ids[None])


# --- conditioning: the one function generate() (and img2img) call ---------------------


def conditioning(parts: Parts, prompt: str, negative: str, batch: int, guidance: float,
                 edits: TextEdits = TextEdits()) -> torch.Tensor:  # noqa: B008 - frozen
    """Encoder states for one denoising batch, with the run's text edits:
    `[uncond × N, cond × N]` with guidance, `[cond × N]` when guidance is 1.

    cond = Σ weight · states(prompt) over the --mix entries (or the one prompt), each with
    the swaps and learned embeddings; uncond = states(negative) with the learned embeddings
    (a learned word may be a negative one), never the swaps."""
    check_text(prompt, edits)
    swaps = resolve_swaps(parts, edits)
    learned = load_embeddings(parts, edits)
    mix = [parse_mix(m) for m in edits.mix] or [(prompt, 1.0)]
    _check_used(parts, [p for p, _ in mix], negative, swaps, learned)
    cond = sum(w * prompt_states(parts, p, swaps, learned) for p, w in mix)
    cond = cond.repeat(batch, 1, 1)  # (N, 77, d)
    if not uses_cfg(guidance):
        return cond
    uncond = prompt_states(parts, negative, [], learned).repeat(batch, 1, 1)
    return torch.cat([uncond, cond])


def _check_used(parts: Parts, prompts: list[str], negative: str, swaps: list[Swap],
                learned: list[LearnedEmbedding]) -> None:
    """An edit that changes nothing is a mistake: say so rather than run the plain prompt."""
    ids = [prompt_ids(parts, p, learned)[0] for p in prompts]
    for swap in swaps:
        if not any(((i == swap.old_id) & _word_positions(parts, i)).any() for i in ids):
            raise SdlabError(f"--swap {swap.old}={swap.new}: '{swap.old}' is not a token of "
                             "the prompt (see `sdlab tokens PROMPT`)")
    text = " ".join([*prompts, negative]).lower()
    for emb in learned:
        if emb.token.lower() not in text:
            raise SdlabError(f"the learned token '{emb.token}' ({emb.source}) is not in the "
                             f"prompt: write it there, or name it with --token")


def interpolation_mixes(prompt_a: str, prompt_b: str, frames: int) -> list[tuple[str, ...]]:
    """The --mix entries of each frame from A to B: weights (1 - a, a), a = 0 … 1 evenly."""
    if frames < 2:
        raise SdlabError(f"--frames must be at least 2 (got {frames})")
    alphas = [k / (frames - 1) for k in range(frames)]
    return [(f"{prompt_a}:{1.0 - a!r}", f"{prompt_b}:{a!r}") for a in alphas]
