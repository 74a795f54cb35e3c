"""Embedding surgery and mixing: swaps, learned (textual-inversion) embeddings from safe
files only, weighted prompt mixes -- all without touching the loaded model."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sdlab.errors import SdlabError
from sdlab.generate import GenerateParams, generate
from sdlab.models import Parts
from sdlab.recipe import parse, parse_swap
from sdlab.surgery import (
    conditioning,
    edited_embeddings,
    interpolation_mixes,
    load_embedding,
    prompt_states,
    prompt_tokens,
    resolve_swap,
)
from sdlab.text import encode, token_embedding_table

ATOL = 1e-5


def cond(parts: Parts, prompt: str, guidance: float = 1.0, negative: str = "",
         **edits: tuple[str, ...]) -> torch.Tensor:
    """The run's encoder states, [uncond, cond] with guidance."""
    text = conditioning(parts, parse(GenerateParams(prompt, negative=negative,
                                                    guidance=guidance, **edits)))
    return text.cond if text.uncond is None else torch.cat([text.uncond, text.cond])


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= ATOL


# --- swap ------------------------------------------------------------------------------


def test_swap_edits_the_input_at_that_position_only(tiny: Parts) -> None:
    swaps = [resolve_swap(tiny, parse_swap("puppy=skunk"))]
    assert swaps == [(6829, 42194)]  # the deep dive's ids
    tokens = prompt_tokens(tiny, "A picture of a puppy")
    plain, was_edited = edited_embeddings(tiny, tokens, [], [])
    edited, now_edited = edited_embeddings(tiny, tokens, swaps, [])
    assert (was_edited, now_edited) == (False, True)
    changed = (edited != plain).any(dim=-1).nonzero().flatten().tolist()
    assert changed == [5]
    assert torch.equal(edited[5], token_embedding_table(tiny)[42194])
    # the encoder is causal: states before the swapped token are untouched, from it on not
    before = prompt_states(tiny, tokens)
    after = prompt_states(tiny, tokens, swaps)
    assert torch.equal(before[0, :5], after[0, :5])
    assert not torch.allclose(before[0, 5], after[0, 5])


def test_swap_equals_the_prompt_with_the_other_word(tiny: Parts) -> None:
    swapped = cond(tiny, "a puppy", swap=("puppy=skunk",))
    assert_close(swapped, encode(tiny, ["a skunk"]))
    # every occurrence, and with guidance the negative prompt is left alone
    swapped = cond(tiny, "a puppy and a puppy", 7.5, "a puppy", swap=("puppy=skunk",))
    assert_close(swapped, encode(tiny, ["a puppy", "a skunk and a skunk"]))


@pytest.mark.parametrize(("swap", "says"), [
    ("teddybear=skunk", "'teddybear' is 2 tokens"),
    ("puppy=teddybear", "'teddybear' is 2 tokens"),
    ("kitten=skunk", "'kitten' is not a token of the prompt"),
    ("puppy", "not WORD=WORD"),
])
def test_bad_swap_is_one_line_that_says_what_to_do(tiny: Parts, swap: str, says: str) -> None:
    with pytest.raises(SdlabError, match=says) as err:
        cond(tiny, "a puppy", swap=(swap,))
    assert "\n" not in str(err.value)


# --- learned embeddings (textual inversion) -------------------------------------------


def word_vectors(parts: Parts, *words: str) -> torch.Tensor:
    ids = [parts.tokenizer(w, add_special_tokens=False).input_ids[0] for w in words]
    return token_embedding_table(parts)[ids].clone()  # (n, d)


def write_formats(folder: Path, vectors: torch.Tensor) -> dict[str, Path]:
    """The same learned vectors as diffusers .safetensors and .bin, and as A1111 .pt."""
    files = {"safetensors": folder / "learned_embeds.safetensors",
             "bin": folder / "learned_embeds.bin", "a1111": folder / "cat-toy.pt"}
    save_file({"<cat-toy>": vectors.contiguous()}, str(files["safetensors"]))
    torch.save({"<cat-toy>": vectors}, files["bin"])
    param = torch.nn.Parameter(vectors.clone())
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": param},
                "name": "cat-toy", "step": 3000, "sd_checkpoint": "abcd1234",
                "sd_checkpoint_name": "v1-5"}, files["a1111"])
    return files


@pytest.mark.parametrize("fmt", ["safetensors", "bin", "a1111"])
def test_learned_embedding_takes_consecutive_positions(tiny: Parts, tmp_path: Path,
                                                       fmt: str) -> None:
    # a 2-vector embedding learned as exactly "teddy bear": the prompt with it must encode
    # as the prompt with those two words
    file = write_formats(tmp_path, word_vectors(tiny, "teddy", "bear"))[fmt]
    token = "cat-toy" if fmt == "a1111" else "<cat-toy>"  # A1111 goes by the file's name
    assert load_embedding(file).token == token
    prompt = f"a photo of {token} on a beach"
    states = cond(tiny, prompt, embedding=(str(file),))
    assert_close(states, encode(tiny, ["a photo of teddy bear on a beach"]))


def test_learned_embedding_under_another_token_and_in_the_negative(tiny: Parts,
                                                                   tmp_path: Path) -> None:
    file = write_formats(tmp_path, word_vectors(tiny, "skunk"))["safetensors"]
    edits = {"embedding": (str(file),), "token": ("<x>",)}
    states = cond(tiny, "a <X>", 7.5, "<x> and a dog", **edits)  # any case, like the words
    assert_close(states, encode(tiny, ["skunk and a dog", "a skunk"]))
    with pytest.raises(SdlabError, match="'<x>'.*is not a word of the prompt"):
        cond(tiny, "a dog", **edits)


class Payload:
    """Unpickling this would run code: it touches a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_pickle_with_code_is_refused_and_not_run(tiny: Parts, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"string_to_param": {"*": torch.zeros(1, 32)}, "extra": Payload(marker)}, evil)
    with pytest.raises(SdlabError, match="refusing .*evil.pt: loading it would run pickled"
                       ) as err:
        cond(tiny, "a evil", embedding=(str(evil),))
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_embedding_errors_are_one_line(tiny: Parts, tmp_path: Path) -> None:
    wide = tmp_path / "wide.safetensors"
    save_file({"<wide>": torch.zeros(1, 768)}, str(wide))
    with pytest.raises(SdlabError, match="width 768 but this text encoder's is 32"):
        cond(tiny, "a <wide>", embedding=(str(wide),))
    two = tmp_path / "two.safetensors"
    save_file({"clip_l": torch.zeros(1, 32), "clip_g": torch.zeros(1, 32)}, str(two))
    with pytest.raises(SdlabError, match="not a textual-inversion embedding"):
        cond(tiny, "a <two>", embedding=(str(two),))
    with pytest.raises(SdlabError, match="one --token per --embedding"):
        cond(tiny, "a <two>", embedding=(str(two),), token=("a", "b"))


# --- mixing ------------------------------------------------------------------------------


def test_mix_weights_the_encoder_outputs(tiny: Parts) -> None:
    a, b = "A mouse", "A leopard"
    assert_close(cond(tiny, "", 7.5, mix=(f"{a}:1", f"{b}:0")), cond(tiny, a, 7.5))
    mixed = cond(tiny, "", mix=(f"{a}:0.35", f"{b}:0.65"))
    assert_close(mixed, 0.35 * encode(tiny, [a]) + 0.65 * encode(tiny, [b]))
    colon = cond(tiny, "", mix=("ratio 16:9 photo:1",))  # the weight follows the LAST colon
    assert_close(colon, encode(tiny, ["ratio 16:9 photo"]))
    with pytest.raises(SdlabError, match="either a prompt or --mix"):
        cond(tiny, a, mix=(f"{b}:1",))
    with pytest.raises(SdlabError, match="not PROMPT:WEIGHT"):
        cond(tiny, "", mix=(b,))


def test_interpolation_ends_are_the_two_prompts(tiny: Parts) -> None:
    mixes = interpolation_mixes("a red square", "a blue square", 5)
    assert len(mixes) == 5
    assert_close(cond(tiny, "", mix=mixes[0]), encode(tiny, ["a red square"]))
    assert_close(cond(tiny, "", mix=mixes[-1]), encode(tiny, ["a blue square"]))
    middle = 0.5 * encode(tiny, ["a red square"]) + 0.5 * encode(tiny, ["a blue square"])
    assert_close(cond(tiny, "", mix=mixes[2]), middle)


# --- runs stay independent, recipes keep the edits ----------------------------------------


def test_runs_do_not_affect_each_other_or_the_model(tiny: Parts, tmp_path: Path) -> None:
    weights = copy.deepcopy(tiny.text_encoder.state_dict())
    file = write_formats(tmp_path, word_vectors(tiny, "skunk"))["safetensors"]
    plain = GenerateParams("a puppy", steps=2, seed=3)
    first = generate(tiny, plain).latents
    swapped = generate(tiny, GenerateParams("a puppy", steps=2, seed=3,
                                            swap=("puppy=skunk",))).latents
    learned = generate(tiny, GenerateParams("a <cat-toy>", steps=2, seed=3,
                                            embedding=(str(file),))).latents
    again = generate(tiny, plain).latents
    assert torch.equal(first, again)
    assert not torch.equal(first, swapped)
    torch.testing.assert_close(swapped, learned, rtol=0, atol=1e-5)  # both are "a skunk"
    for name, tensor in tiny.text_encoder.state_dict().items():
        assert torch.equal(tensor, weights[name]), name
    assert len(tiny.tokenizer) == 49408  # no token was added to the tokenizer


def test_params_with_edits_survive_json(tmp_path: Path) -> None:
    params = GenerateParams("", mix=("a:0.5", "b:0.5"), swap=("a=b",),
                            embedding=("/x.pt",), token=("<x>",))
    again = GenerateParams(**json.loads(json.dumps(asdict(params))))
    assert again == params and isinstance(again.mix, tuple)


def test_learned_vectors_cut_by_truncation_keep_the_end_token(tiny: Parts,
                                                              tmp_path: Path) -> None:
    file = write_formats(tmp_path, torch.randn(4, 32))["safetensors"]
    for words in (73, 80):  # the run is cut in two / falls past the end entirely
        prompt = "word " * words + "<cat-toy>"
        learned = [load_embedding(file)]
        tokens = prompt_tokens(tiny, prompt, learned)
        embeds, _ = edited_embeddings(tiny, tokens, [], learned)
        ids = tokens.tokens.ids
        assert ids.shape == (77,) and ids[-1] == 49407  # <|endoftext|> still closes it
        assert torch.equal(embeds[-1], token_embedding_table(tiny)[49407])


def test_no_edits_is_the_plain_text_encoder_exactly(tiny: Parts) -> None:
    # plain runs must keep their bit-for-bit parity with diffusers' pipeline
    for guidance in (1.0, 7.5):
        text = conditioning(tiny, parse(GenerateParams("a dog", negative="blurry", batch=2,
                                                       guidance=guidance)))
        assert torch.equal(text.cond, encode(tiny, ["a dog"]).repeat(2, 1, 1))
        if guidance == 1.0:
            assert text.uncond is None
        else:
            assert torch.equal(text.uncond, encode(tiny, ["blurry"]).repeat(2, 1, 1))


def test_a_run_tokenizes_each_prompt_once_and_warns_once(tiny: Parts,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    calls: list[str] = []
    tokenizer_call = type(tiny.tokenizer).__call__

    def counting(self: object, text: str, *args: object, **kwargs: object) -> object:
        calls.append(text)
        return tokenizer_call(self, text, *args, **kwargs)

    monkeypatch.setattr(type(tiny.tokenizer), "__call__", counting)
    long = "a red circle " * 30 + "and a purple elephant"
    with caplog.at_level("WARNING"):
        generate(tiny, GenerateParams(long, negative="blurry", steps=2,
                                      guide=("blue:1",), guide_decoder="approx"))
    assert sorted(calls) == sorted([long, "blurry"])
    assert caplog.text.count("purple elephant") == 1


# --- learned tokens: whole words, new words, one file each ---------------------------------


def test_learned_token_matches_whole_words_only(tiny: Parts, tmp_path: Path) -> None:
    file = tmp_path / "x.safetensors"
    save_file({"<x>": word_vectors(tiny, "skunk").contiguous()}, str(file))
    edits = {"embedding": (str(file),), "token": ("zork",)}
    assert_close(cond(tiny, "a zork", **edits), encode(tiny, ["a skunk"]))
    with pytest.raises(SdlabError, match="'zork' .* is not a word of the prompt"):
        cond(tiny, "a zorkish cat", **edits)  # inside another word: not the learned token


@pytest.mark.parametrize(("tokens", "says"), [
    (("red",), "already a word of the vocabulary"),
    (("<a>", "<A>"), "two embeddings use the token"),
    ((" ",), "must be one word"),
    (("my word",), "must be one word"),
])
def test_bad_learned_tokens_are_refused(tiny: Parts, tmp_path: Path, tokens: tuple[str, ...],
                                        says: str) -> None:
    files = []
    for k in range(len(tokens)):
        files.append(str(tmp_path / f"e{k}.safetensors"))
        save_file({"<e>": torch.zeros(1, 32)}, files[-1])
    with pytest.raises(SdlabError, match=says) as err:
        cond(tiny, f"a {tokens[0]}", embedding=tuple(files), token=tokens)
    assert "\n" not in str(err.value)


def test_nan_embedding_is_refused(tiny: Parts, tmp_path: Path) -> None:
    file = tmp_path / "nan.safetensors"
    save_file({"<n>": torch.full((1, 32), float("nan"))}, str(file))
    with pytest.raises(SdlabError, match="NaN or infinite"):
        cond(tiny, "a <n>", embedding=(str(file),))
