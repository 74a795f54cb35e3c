"""The text encoder's stages one by one: token ids and strings, the embedding tables, and
the encoder run by hand from input embeddings giving the text encoder's own output."""

from __future__ import annotations

import torch

from sdlab.models import Parts
from sdlab.text import (
    embedding_report,
    encode,
    encode_by_hand,
    encode_embeddings,
    token_embeddings,
    token_rows,
    tokenize,
)

PUPPY = "A picture of a puppy"


def test_tokens_of_the_deep_dive_prompt(tiny: Parts) -> None:
    rows = token_rows(tiny.tokenizer, PUPPY)
    assert [(r.position, r.id, r.token) for r in rows] == [
        (0, 49406, "<|startoftext|>"), (1, 320, "a</w>"), (2, 1674, "picture</w>"),
        (3, 539, "of</w>"), (4, 320, "a</w>"), (5, 6829, "puppy</w>"),
        (6, 49407, "<|endoftext|>")]


def test_embedding_tables_and_their_sum(tiny: Parts) -> None:
    report = embedding_report(tiny, PUPPY)
    assert report.token_table_shape == (49408, 32)
    assert report.position_table_shape == (77, 32)
    ids = tokenize(tiny, PUPPY).ids
    table = tiny.text_encoder.embeddings.token_embedding.weight
    assert torch.equal(report.token_embeds, table[ids])  # an index look-up
    assert torch.equal(report.position_embeds,
                       tiny.text_encoder.embeddings.position_embedding.weight)
    assert torch.equal(report.input_embeds, report.token_embeds + report.position_embeds)
    # the sum is what the transformer layers see: the library's own embedding layer agrees
    torch.testing.assert_close(report.input_embeds,
                               tiny.text_encoder.embeddings(input_ids=ids[None])[0])


def test_encoder_by_hand_matches_the_text_encoder(tiny: Parts) -> None:
    prompts = [PUPPY, "", "A watercolor painting of an otter", "word " * 100]  # + truncated
    by_hand = encode_by_hand(tiny, prompts)
    reference = encode(tiny, prompts)
    assert by_hand.shape == reference.shape == (4, 77, 32)
    assert (by_hand - reference).abs().max().item() <= 1e-5
    assert embedding_report(tiny, PUPPY).max_abs_diff <= 1e-5


def test_causal_mask_later_tokens_do_not_reach_earlier_ones(tiny: Parts) -> None:
    ids = tokenize(tiny, PUPPY).ids[None]
    embeds = token_embeddings(tiny, ids)
    edited = embeds.clone()
    edited[0, 5] += 1.0  # change "puppy" only
    before, after = encode_embeddings(tiny, embeds), encode_embeddings(tiny, edited)
    assert torch.equal(before[0, :5], after[0, :5])
    assert not torch.allclose(before[0, 5:], after[0, 5:])
