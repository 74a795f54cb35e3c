"""The UNet's end-token swap (UnetConfig.end_swap): a caption's end-token state, which sums up
the whole caption, is replaced by another caption's, so the UNet must read the words."""

import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from sdlab.tiny.common import TOKENIZER_DIR, UnetConfig
from sdlab.tiny.train_unet import Pool, ddpm_scheduler, encode_text, load_pool, training_batch


def _pool(n: int = 40, d: int = 3) -> Pool:
    """Each caption's states are its index + position/100 (so every state is traceable); the
    end token sits at position 5 + index % 7 (clean), 6 + index % 5 (noisy)."""
    pos = torch.arange(77).float() / 100
    states = (torch.arange(n).float()[:, None] + pos)[:, :, None].expand(n, 77, d).clone()
    return Pool(latents=torch.zeros(n, 4, 8, 8), states=states, empty=-torch.ones(1, 77, d),
                noisy_states=states + 1000, partial_states=None,
                ends=(5 + torch.arange(n) % 7, 6 + torch.arange(n) % 5, None))


def test_every_caption_gets_another_captions_end_state_and_nothing_else_changes():
    pool = _pool()
    cfg = UnetConfig(batch_size=400, end_swap=1.0)
    plain_cfg = UnetConfig(batch_size=400)
    scheduler = ddpm_scheduler()
    for noisy in (0.0, 1.0):  # phase 1, and the tune with noisy captions as t falls
        batch = training_batch(pool, cfg, 0, 3, 0.1, noisy, scheduler)
        plain = training_batch(pool, plain_cfg, 0, 3, 0.1, noisy, scheduler)
        empty = (batch.ctx == -1).all(dim=(1, 2))
        assert 0.03 < empty.float().mean() < 0.2
        assert torch.equal(batch.ctx[empty], plain.ctx[empty])  # the empty caption is kept
        swapped_from = []
        for row, ref in zip(batch.ctx[~empty], plain.ctx[~empty], strict=True):
            caption = int(ref[0, 0])  # index of the caption (+1000 when noisy)
            own = int(caption % 1000)
            end = int(pool.ends[1 if caption >= 1000 else 0][own])
            changed = (row != ref).any(dim=1).nonzero().squeeze(1).tolist()
            donor = int(row[end, 0])
            assert changed in ([end], [])  # only the end token (unchanged: its own donor)
            # the donor's own end state, clean, moved to this caption's end position
            assert row[end, 0].item() == pytest.approx(donor + int(pool.ends[0][donor]) / 100)
            swapped_from.append(donor != own)
        assert sum(swapped_from) / len(swapped_from) > 0.9
        assert torch.equal(batch.noise, plain.noise) and torch.equal(batch.t, plain.t)


def test_a_share_of_captions_is_swapped():
    pool = _pool()
    cfg = UnetConfig(batch_size=2000, end_swap=0.3)
    batch = training_batch(pool, cfg, 0, 5, 0.0, 0.0, ddpm_scheduler())
    ends = pool.ends[0][batch.ctx[:, 0, 0].long()]
    own = batch.ctx[torch.arange(2000), ends, 0].floor() == batch.ctx[:, 0, 0]
    assert abs((~own).float().mean().item() - 0.3 * (1 - 1 / 40)) < 0.04


def test_text_cache_records_where_each_end_token_is():
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    encoder = CLIPTextModel(CLIPTextConfig(vocab_size=tokenizer.vocab_size, hidden_size=8,
                                           intermediate_size=16, num_hidden_layers=1,
                                           num_attention_heads=2, max_position_embeddings=77))
    captions = ["a red circle", "a small blue square at the top, white background", ""]
    states, ends = encode_text(encoder, tokenizer, captions, progress=False)
    assert states.shape == (3, 77, 8)
    # <start>, the words' tokens, then <end>
    assert ends.tolist() == [len(tokenizer.tokenize(c)) + 1 for c in captions]


def test_a_text_cache_without_end_positions_is_refused_before_training(tmp_path):
    save_file({"states": torch.zeros(2, 77, 3), "empty": torch.zeros(1, 77, 3)},
              str(tmp_path / "text_cache.safetensors"))
    save_file({"latents": torch.zeros(2, 4, 8, 8)}, str(tmp_path / "latent_cache.safetensors"))
    cfg = UnetConfig(tune_steps=0, end_swap=1.0)
    with pytest.raises(ValueError, match="delete text_cache"):
        load_pool(cfg, 0, tmp_path, None, None, None, resume=True)
    assert load_pool(UnetConfig(tune_steps=0), 0, tmp_path, None, None, None, True).ends[0] is None
