"""Step caching (DeepCache, Ma et al. 2023, arXiv 2312.00858): the UNet's deep features
change little between neighbouring steps, so they are computed on refresh steps only and
reused on the steps between, where only the shallow path runs.

`branch` b picks the skip connection the cache sits on. On a refresh step the plain UNet
runs (its output is the UNet's, bit for bit) and the input of `up_blocks[-(b+1)]` -- the
deep path's result -- is kept. On the steps between, the shallow path runs: `conv_in`,
`down_blocks[:b+1]`, then `up_blocks[-(b+1):]` fed with the kept deep feature and the fresh
skip features, then the output head -- as `UNet2DConditionModel.forward` does it.
A step refreshes when `interval` model evaluations have passed since the last refresh (a
Heun step evaluates twice: both count), or when the batch changes (guidance truncation).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import UNet2DConditionModel

from sdlab.errors import SdlabError


def check_cache(unet: UNet2DConditionModel, interval: int, branch: int) -> None:
    """The settings fit this UNet: a deep path below the branch, no extra embeddings."""
    deepest = len(unet.down_blocks) - 2
    if interval > 1 and not 0 <= branch <= deepest:
        raise SdlabError(f"--cache-branch {branch} does not fit this UNet: choose 0..{deepest} "
                         f"(it has {len(unet.down_blocks)} down blocks)")
    config = unet.config
    extras = (config.class_embed_type, config.num_class_embeds, config.addition_embed_type,
              config.encoder_hid_dim_type, config.time_cond_proj_dim)
    if interval > 1 and any(e is not None for e in extras):
        raise SdlabError("step caching supports SD 1/2-style UNets (no class, added or "
                         "projected embeddings): use --cache-interval 1")


class StepCache:
    """The UNet with step caching: call it as `(x, t, states, i) -> prediction`."""

    def __init__(self, unet: UNet2DConditionModel, interval: int, branch: int = 0) -> None:
        check_cache(unet, interval, branch)
        self.unet = unet
        self.interval = interval
        self.branch = branch
        self.deep: torch.Tensor | None = None  # the input of up_blocks[-(branch+1)]
        self.refreshed_at = 0
        self.refreshes = 0  # refresh steps taken (full UNet passes)
        self.shallow_steps = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor, states: torch.Tensor,
                 i: int) -> torch.Tensor:
        if self.deep is None or self.deep.shape[0] != x.shape[0] or (
                i - self.refreshed_at >= self.interval or i < self.refreshed_at):
            return self.refresh(x, t, states, i)
        self.shallow_steps += 1
        return self.shallow(x, t, states)

    @torch.no_grad()
    def refresh(self, x: torch.Tensor, t: torch.Tensor, states: torch.Tensor,
                i: int) -> torch.Tensor:
        """The plain UNet's forward, keeping the deep feature on the way."""
        kept: dict[str, torch.Tensor] = {}

        def keep(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
            kept["deep"] = kwargs["hidden_states"]

        block = self.unet.up_blocks[-(self.branch + 1)]
        handle = block.register_forward_pre_hook(keep, with_kwargs=True)
        try:
            out = self.unet(x, t, encoder_hidden_states=states, return_dict=False)[0]
        finally:
            handle.remove()
        self.deep, self.refreshed_at = kept["deep"], i
        self.refreshes += 1
        return out

    @torch.no_grad()
    def shallow(self, x: torch.Tensor, t: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """The shallow path with the kept deep feature (UNet2DConditionModel.forward with
        the blocks below the branch left out)."""
        unet, b = self.unet, self.branch
        up_factor = 2**unet.num_upsamplers
        forward_upsample_size = any(d % up_factor for d in x.shape[-2:])
        if unet.config.center_input_sample:
            x = 2 * x - 1.0
        emb = unet.time_embedding(unet.get_time_embed(sample=x, timestep=t), None)
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        sample = unet.conv_in(x)
        res: tuple[torch.Tensor, ...] = (sample,)
        for block in unet.down_blocks[: b + 1]:
            sample, block_res = _run_block(block, sample, emb, states)
            res += block_res
        up_blocks = unet.up_blocks[-(b + 1):]
        res = res[: sum(len(block.resnets) for block in up_blocks)]
        sample = self.deep
        for k, block in enumerate(up_blocks):
            is_final = k == len(up_blocks) - 1
            skips, res = res[-len(block.resnets):], res[: -len(block.resnets)]
            upsample_size = res[-1].shape[2:] if not is_final and forward_upsample_size else None
            sample = _run_block(block, sample, emb, states, skips, upsample_size)
        if unet.conv_norm_out:
            sample = unet.conv_act(unet.conv_norm_out(sample))
        return unet.conv_out(sample)


def _run_block(block: torch.nn.Module, sample: torch.Tensor, emb: torch.Tensor,
               states: torch.Tensor, skips: tuple[torch.Tensor, ...] | None = None,
               upsample_size: Any = None) -> Any:
    """One down block (skips None) or up block, called as the UNet's forward calls it."""
    kwargs: dict[str, Any] = {"hidden_states": sample, "temb": emb}
    if skips is not None:
        kwargs.update(res_hidden_states_tuple=skips, upsample_size=upsample_size)
    if getattr(block, "has_cross_attention", False):
        kwargs.update(encoder_hidden_states=states, attention_mask=None,
                      cross_attention_kwargs=None, encoder_attention_mask=None)
    return block(**kwargs)


# The speed preset (`--fast`): the settings that paid in BENCHMARKS.md (guidance truncation,
# `cfg_until`, costs the bundled model's shapes there and is left to be asked for).
FAST = {"cache_interval": 3, "cache_branch": 0}
