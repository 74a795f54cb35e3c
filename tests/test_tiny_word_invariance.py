"""The text encoder's word-invariance loss: twins of captions with one word swapped, and
training with the loss keeps a word's state from depending on another word's value."""

import dataclasses

import numpy as np
import torch

from sdlab.tiny import world
from sdlab.tiny.common import ClipConfig, TinyConfig, step_rng
from sdlab.tiny.train_clip import (
    AttributeHeads,
    build_clip,
    clip_batch,
    clip_step,
    load_tokenizer,
    tokenize,
    word_invariance_loss,
)


def test_twins_differ_in_one_attribute_word_and_leave_the_batch_alone():
    tok = load_tokenizer()
    plain = clip_batch(np.random.default_rng(3), 64, filler_prob=0.5)
    batch = clip_batch(np.random.default_rng(3), 64, filler_prob=0.5, twins=True)
    assert batch.captions == plain.captions and plain.twins is None
    names = set(world.COLOR_NAMES) | set(world.SHAPES)
    for caption, twin in zip(batch.captions, batch.twins, strict=True):
        a, b = caption.split(" "), twin.split(" ")
        changed = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
        words = [(x.strip(","), y.strip(",")) for x, y in changed if x not in ("a", "an")]
        assert len(words) == 1 and set(words[0]) <= names, (caption, twin)
        for pair in world.HELD_OUT:  # a twin never names a held-out pair
            assert " ".join(pair) not in twin
    ids, twin_ids = (tokenize(tok, c, 24) for c in (batch.captions, batch.twins))
    assert set((ids != twin_ids).sum(1).tolist()) <= {1, 2}  # the word (and a/an)


def _state_change(model, tok, seed: int, padding: bool) -> float:
    batch = clip_batch(np.random.default_rng(seed), 64, twins=True)
    ids = tokenize(tok, batch.captions, 24)
    with torch.no_grad():
        states = model.text_model(input_ids=ids).last_hidden_state
        twin_ids = tokenize(tok, batch.twins, 24)
        both = word_invariance_loss(model, ids, states, twin_ids, padding=True).item()
        words = word_invariance_loss(model, ids, states, twin_ids, padding=False).item()
    n_words = ((ids == twin_ids) & (ids != 49407)).sum().item()
    n_pad = ((ids == 49407).sum() - len(ids)).item()
    return (both * (n_words + n_pad) - words * n_words) / n_pad if padding else words


def _train(cfg: ClipConfig, steps: int) -> torch.nn.Module:
    torch.manual_seed(0)
    tok, model, heads = load_tokenizer(), build_clip(cfg), AttributeHeads(cfg.projection_dim)
    opt = torch.optim.AdamW(list(model.parameters()) + list(heads.parameters()), lr=cfg.lr)
    for step in range(steps):
        batch = clip_batch(step_rng(0, 2, step), cfg.batch_size, twins=cfg.word_invariance > 0)
        values = clip_step(model, heads, opt, tok, cfg, batch)
        assert ("word_invariance" in values) == (cfg.word_invariance > 0)
    return model.eval()


def test_training_with_the_loss_makes_word_states_invariant():
    """Words: with the loss, a word's state barely moves when another word is swapped; the
    padding after the end token only when invariant_padding asks for it."""
    tok = load_tokenizer()
    cfg = dataclasses.replace(TinyConfig.quick().clip, steps=30, text_len=24,
                              pair_additivity=0.0, padding_readout=0.0)
    runs = {
        "without": dataclasses.replace(cfg, word_invariance=0.0),
        "words": dataclasses.replace(cfg, word_invariance=5.0, invariant_padding=False),
        "padding": dataclasses.replace(cfg, word_invariance=5.0, invariant_padding=True),
    }
    models = {name: _train(c, cfg.steps) for name, c in runs.items()}
    words = {name: _state_change(m, tok, 99, padding=False) for name, m in models.items()}
    pad = {name: _state_change(m, tok, 99, padding=True) for name, m in models.items()}
    assert words["words"] < 0.5 * words["without"], words
    assert words["padding"] < 0.5 * words["without"], words
    assert pad["padding"] < 0.5 * min(pad["without"], pad["words"]), pad


def test_the_loss_is_zero_for_identical_captions():
    model = build_clip(TinyConfig.quick().clip)
    ids = tokenize(load_tokenizer(), ["a red circle on a blue background"], 24)
    states = model.text_model(input_ids=ids).last_hidden_state
    for padding in (False, True):
        assert word_invariance_loss(model, ids, states, ids, padding).item() == 0.0
