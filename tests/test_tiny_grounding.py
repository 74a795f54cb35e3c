"""The token grounding loss (training/grounding.py): its processor computes what the stock
one does, its loss reads the right side of the mask, and the batches ground only the pool
samples that carry their own clean caption."""

from __future__ import annotations

import numpy as np
import torch

from sdlab.tiny import world
from training.clip import load_tokenizer
from training.config import TinyConfig
from training.grounding import (
    AttentionKeeper,
    grounding_loss,
    keep_attention,
    shape_masks,
    word_positions,
)
from training.unet import Pool, build_unet, ddpm_scheduler, training_batch


def test_the_keeper_computes_the_stock_output_and_keeps_each_layers_map():
    torch.manual_seed(0)
    unet = build_unet(TinyConfig.quick().unet, 32).eval()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    ctx = torch.randn(2, 77, 32)
    with torch.no_grad():
        stock = unet(x, t, encoder_hidden_states=ctx).sample
        kept = keep_attention(unet)
        mine = unet(x, t, encoder_hidden_states=ctx).sample
    assert torch.allclose(mine, stock, atol=1e-5)
    layers = [n for n in unet.attn_processors if n.endswith("attn2.processor")]
    assert len(kept) == len(layers) and layers
    assert all(isinstance(unet.attn_processors[n], AttentionKeeper) for n in layers)
    for probs in kept:
        assert probs.shape[0] == 2 and probs.shape[2] == 77
        assert torch.allclose(probs.sum(-1), torch.ones(probs.shape[:2]), atol=1e-5)


def _maps(inside: float, side: int = 2) -> torch.Tensor:
    """(1, side², 77) attention: token 1 puts `inside` of its mass on cell 0, the rest on
    the others; token 2 the reverse."""
    probs = torch.full((1, side * side, 77), 1e-3)
    probs[0, 0, 1], probs[0, 1:, 1] = inside, (1 - inside) / (side * side - 1)
    probs[0, 0, 2], probs[0, 1:, 2] = 1 - inside, inside / (side * side - 1)
    return probs


def test_the_loss_asks_the_shape_word_inside_and_the_background_word_outside():
    mask = torch.zeros(1, 8, 8)
    mask[0, :4, :4] = 1.0  # cell 0 of the 2x2 grid
    positions = torch.tensor([[1, 2]], dtype=torch.int16)  # shape word 1, background word 2
    assert grounding_loss([_maps(1.0)], positions, mask).item() < 1e-6
    assert grounding_loss([_maps(0.0)], positions, mask).item() > 1 - 1e-6
    assert abs(grounding_loss([_maps(0.75)], positions, mask).item() - 0.25) < 1e-5
    # a caption that names no background grounds its shape word alone
    only_shape = torch.tensor([[1, -1]], dtype=torch.int16)
    assert abs(grounding_loss([_maps(0.75)], only_shape, mask).item() - 0.25) < 1e-5
    assert grounding_loss([_maps(0.3)], torch.tensor([[-1, -1]], dtype=torch.int16),
                          mask).item() == 0.0


def test_word_positions_and_masks_follow_the_scene():
    tokenizer = load_tokenizer()
    scene = world.make_scene("star", "red", "blue", "left", "large")
    captions = ["a red star on the left, blue background", "a red star on the left"]
    positions = word_positions(tokenizer, captions, [scene, scene])
    ids = tokenizer(captions[0]).input_ids
    star, blue = (tokenizer.convert_tokens_to_ids(w + "</w>") for w in ("star", "blue"))
    assert positions[0].tolist() == [ids.index(star), ids.index(blue)]
    assert positions[1].tolist() == [ids.index(star), -1]
    mask = shape_masks([scene])[0].float()
    assert mask.shape == (8, 8)
    assert mask[:, :4].sum() > 3 * mask[:, 4:].sum()  # on the left
    assert 0.0 <= mask.min() and mask.max() <= 1.0


def test_batches_ground_only_pool_samples_with_their_own_clean_caption():
    n, d = 40, 4
    pool = Pool(latents=torch.zeros(n, 4, 8, 8), states=torch.zeros(n, 77, d),
                empty=-torch.ones(1, 77, d), noisy_states=torch.ones(n, 77, d),
                mix_latents=torch.zeros(10, 4, 8, 8), mix_states=torch.full((10, 77, d), 2.0),
                positions=torch.tensor([[3, 7]] * n, dtype=torch.int16),
                masks=torch.ones(n, 8, 8))
    scheduler = ddpm_scheduler(TinyConfig().unet)
    batch = training_batch(pool, 2000, 0, 3, 0.2, True, scheduler, mix_share=0.25)
    kind = batch.ctx[:, 0, 0]  # 0 clean, 1 noisy, -1 empty, 2 mix
    grounded = batch.positions[:, 0] >= 0
    assert torch.equal(grounded, kind == 0)
    assert (batch.positions[grounded] == torch.tensor([3, 7], dtype=torch.int16)).all()
    mixes = kind[-500:]  # the mix samples come last, some left empty
    assert ((mixes == 2) | (mixes == -1)).all() and (kind[:-500] != 2).all()
    assert (batch.masks[-500:] == 0).all() and (batch.masks[:-500] == 1).all()
    assert np.isclose((kind == -1).float().mean().item(), 0.2, atol=0.03)
