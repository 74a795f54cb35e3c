"""The text encoder's pair-additivity loss: colour x shape squares of captions, and training
with the loss makes the states of a pair what the pairs around it add up to."""

import dataclasses

import numpy as np
import pytest
import torch

from sdlab.tiny import world
from training.clip import (
    AttributeHeads,
    build_clip,
    clip_batch,
    clip_losses,
    load_tokenizer,
    pair_additivity_loss,
    pair_square,
    tokenize,
)
from training.config import TinyConfig
from training.fit import optimizer_step, step_rng


def test_a_square_changes_colour_shape_and_both_and_stays_in_training():
    rng = np.random.default_rng(0)
    for _ in range(300):
        scene = world.sample_scene(rng)
        other_color, other_shape, both = pair_square(scene, rng)
        assert other_color.shape == scene.shape and other_color.color != scene.color
        assert other_shape.color == scene.color and other_shape.shape != scene.shape
        assert (both.color, both.shape) == (other_color.color, other_shape.shape)
        for s in (other_color, other_shape, both):
            assert world.in_training_split(s.attributes)
            assert (s.background, s.position, s.size, s.cx) == (
                scene.background, scene.position, scene.size, scene.cx)


def test_square_captions_differ_only_in_the_pair_words_and_leave_the_batch_alone():
    plain = clip_batch(np.random.default_rng(3), 64, filler_prob=0.5)
    batch = clip_batch(np.random.default_rng(3), 64, filler_prob=0.5, squares=16)
    assert batch.captions == plain.captions and plain.squares is None
    assert [len(c) for c in batch.squares] == [16, 16, 16]
    words = set(world.COLOR_NAMES) | set(world.SHAPES) | {"a", "an"}
    for k, corner in enumerate(batch.squares):
        for caption, other in zip(batch.captions, corner, strict=False):
            a, b = caption.split(" "), other.split(" ")
            changed = [(x.strip(","), y.strip(",")) for x, y in zip(a, b, strict=True) if x != y]
            assert all(set(p) <= words for p in changed), (caption, other)
            named = sum(x not in ("a", "an") for x, _ in changed)
            assert named == (2 if k == 2 else 1), (caption, other)


def test_the_loss_is_zero_for_an_additive_encoder_and_not_for_a_trained_one():
    tok = load_tokenizer()
    batch = clip_batch(np.random.default_rng(4), 32, squares=32)
    ids = tokenize(tok, batch.captions, 77)
    square_ids = [tokenize(tok, c, 77) for c in batch.squares]

    class Additive(torch.nn.Module):  # states = sum of token embeddings so far: additive
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Embedding(49408, 8)

        def text_model(self, input_ids):
            out = type("Out", (), {})()
            out.last_hidden_state = self.table(input_ids).cumsum(dim=1)
            return out

    additive = Additive()
    states = additive.text_model(ids).last_hidden_state
    assert pair_additivity_loss(additive, states, square_ids).item() < 1e-10
    saturating = Additive()  # tanh of the same sums: the pair's words interact
    saturating.text_model = lambda input_ids: type("Out", (), {"last_hidden_state": torch.tanh(
        additive.text_model(input_ids).last_hidden_state)})()
    states = saturating.text_model(ids).last_hidden_state
    assert pair_additivity_loss(saturating, states, square_ids).item() > 0.05


def _train(cfg, steps: int) -> torch.nn.Module:
    torch.manual_seed(0)
    tok, model, heads = load_tokenizer(), build_clip(cfg), AttributeHeads(cfg.projection_dim)
    params = list(model.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    squares = cfg.additivity_captions if cfg.pair_additivity > 0 else 0
    for step in range(steps):
        batch = clip_batch(step_rng(0, 2, step), cfg.batch_size, squares=squares)
        loss, values = clip_losses(model, heads, tok, cfg, batch)
        optimizer_step(opt, loss, params)
        assert ("pair_additivity" in values) == (cfg.pair_additivity > 0)
    return model.eval()


def test_training_with_the_loss_makes_pairs_add_up():
    tok = load_tokenizer()
    cfg = dataclasses.replace(TinyConfig.quick().clip, steps=30, text_len=77,
                              additivity_captions=16, padding_readout=0.0)
    batch = clip_batch(np.random.default_rng(99), 64, squares=64)
    ids = tokenize(tok, batch.captions, 77)
    square_ids = [tokenize(tok, c, 77) for c in batch.squares]
    residual = {}
    for weight in (0.0, 10.0):
        model = _train(dataclasses.replace(cfg, pair_additivity=weight), cfg.steps)
        with torch.no_grad():
            states = model.text_model(input_ids=ids).last_hidden_state
            residual[weight] = pair_additivity_loss(model, states, square_ids).item()
    assert residual[10.0] < 0.5 * residual[0.0], residual


def test_padding_readout_reads_only_the_states_after_the_end_token():
    assert not hasattr(AttributeHeads(16), "padding")
    torch.manual_seed(0)
    heads = AttributeHeads(16, 8)
    batch = clip_batch(np.random.default_rng(6), 8)
    ids = tokenize(load_tokenizer(), batch.captions, 77)
    end = (ids == 49407).int().argmax(dim=1)
    after = torch.arange(77)[None, :] > end[:, None]
    states = torch.randn(8, 77, 8)
    loss = heads.padding_loss(ids, states, batch)
    words_changed = torch.where(after[..., None], states, 10 * torch.randn(8, 77, 8))
    assert heads.padding_loss(ids, words_changed, batch).item() == pytest.approx(loss.item())
    padding_changed = torch.where(after[..., None], torch.randn(8, 77, 8), states)
    assert heads.padding_loss(ids, padding_changed, batch).item() != pytest.approx(loss.item())


def test_training_with_the_padding_readout_makes_it_fall():
    cfg = dataclasses.replace(TinyConfig.quick().clip, steps=40, text_len=77,
                              padding_readout=4.0)
    torch.manual_seed(0)
    tok, model = load_tokenizer(), build_clip(cfg)
    heads = AttributeHeads(cfg.projection_dim, cfg.hidden_size)
    params = list(model.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    losses = []
    for step in range(cfg.steps):
        loss, values = clip_losses(model, heads, tok, cfg, clip_batch(step_rng(0, 2, step), 32))
        optimizer_step(opt, loss, params)
        losses.append(values["padding_readout"])
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5]), losses  # 1.75 -> 1.42
