"""Speed options: guidance truncation (`cfg_until`) and step caching (`sdlab.cache`) as
recipe settings; exactness where they promise it (the refresh step is the UNet's output bit
for bit, the shallow path with the same step's deep feature is the UNet), and what they
change where they do not; `--fast` recorded in the PNG and re-run from it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from sdlab.cache import FAST, StepCache
from sdlab.cli import main
from sdlab.errors import SdlabError
from sdlab.generate import GenerateParams, generate, generate_steps, prepare
from sdlab.models import Parts, load
from sdlab.recipe import parse

PROMPT = "a watercolor painting of an otter"


def records(parts: Parts, **settings: object) -> list:
    return list(generate_steps(parts, GenerateParams(PROMPT, steps=6, **settings)))


def test_cfg_until_one_is_the_plain_run(tiny: Parts) -> None:
    plain = records(tiny)
    same = records(tiny, cfg_until=1.0)
    assert all(r.pred_uncond is not None for r in same)
    for a, b in zip(plain, same, strict=True):
        assert torch.equal(a.next_latents, b.next_latents)


def test_cfg_until_drops_the_unconditional_pass_after_the_cut(tiny: Parts) -> None:
    plain = records(tiny)
    cut = records(tiny, cfg_until=0.5)  # 6 steps: 3 with guidance, 3 without
    assert [r.pred_uncond is None for r in cut] == [False] * 3 + [True] * 3
    for a, b in zip(plain[:3], cut[:3], strict=True):  # before the cut: the plain run
        assert torch.equal(a.next_latents, b.next_latents)
    after = cut[3]
    assert torch.equal(after.pred, after.pred_cond)
    assert (cut[-1].next_latents - plain[-1].next_latents).abs().max() > 1e-3


def test_cfg_until_zero_is_guidance_one(tiny: Parts) -> None:
    none = records(tiny, cfg_until=0.0)
    one = records(tiny, guidance=1.0)
    assert all(r.pred_uncond is None for r in none)
    assert torch.equal(none[-1].next_latents, one[-1].next_latents)


def unet_inputs(parts: Parts, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    run = prepare(parts, GenerateParams(PROMPT, steps=4, batch=batch // 2))
    x = torch.cat([run.latents] * 2)
    states = torch.cat([run.text.uncond, run.text.cond])
    return x, run.scheduler.timesteps[1], states


@pytest.mark.parametrize("branch", [0, 1])
def test_refresh_is_the_unet_and_shallow_path_reproduces_it(branch: int) -> None:
    parts = load("sdlab-tiny")  # three down blocks: branches 0 and 1
    x, t, states = unet_inputs(parts)
    plain = parts.unet(x, t, encoder_hidden_states=states, return_dict=False)[0]
    cache = StepCache(parts.unet, interval=3, branch=branch)
    assert torch.equal(cache(x, t, states, 0), plain)  # refresh step: bit for bit
    shallow = cache(x, t, states, 1)  # the same inputs through the shallow path
    assert cache.refreshes == 1 and cache.shallow_steps == 1
    torch.testing.assert_close(shallow, plain, rtol=0, atol=1e-5)
    later = cache(x + 0.1, t, states, 2)  # other inputs: the kept deep feature is stale
    fresh = parts.unet(x + 0.1, t, encoder_hidden_states=states, return_dict=False)[0]
    assert not torch.equal(later, fresh)


def test_odd_latent_sizes_take_the_upsample_sizes_of_the_full_forward(tiny: Parts) -> None:
    x = torch.randn(2, 4, 5, 7, generator=torch.Generator().manual_seed(0))
    _, t, states = unet_inputs(tiny)
    plain = tiny.unet(x, t, encoder_hidden_states=states, return_dict=False)[0]
    cache = StepCache(tiny.unet, interval=2, branch=0)
    assert torch.equal(cache(x, t, states, 0), plain)
    torch.testing.assert_close(cache(x, t, states, 1), plain, rtol=0, atol=1e-5)


@pytest.mark.parametrize("scheduler,evaluations", [("lms", 6), ("heun", 11)])
def test_cache_refreshes_every_interval_evaluations(tiny: Parts, scheduler: str,
                                                    evaluations: int) -> None:
    run = prepare(tiny, GenerateParams(PROMPT, steps=6, scheduler=scheduler, cache_interval=3))
    cache = run.model.unet
    assert isinstance(cache, StepCache)
    got = list(run.steps())
    assert len(got) == evaluations  # one record per model evaluation
    assert cache.refreshes == -(-evaluations // 3)
    assert cache.shallow_steps == evaluations - cache.refreshes
    plain = records(tiny, scheduler=scheduler)
    assert torch.equal(got[0].pred, plain[0].pred)  # the first step is a refresh
    assert (got[-1].next_latents - plain[-1].next_latents).abs().max() > 1e-4


def test_cache_with_guidance_truncation_refreshes_at_the_cut(tiny: Parts) -> None:
    run = prepare(tiny, GenerateParams(PROMPT, steps=6, cache_interval=4, cfg_until=0.5))
    got = list(run.steps())
    assert [r.pred_uncond is None for r in got] == [False] * 3 + [True] * 3
    assert run.model.unet.refreshes == 2  # i=0, and i=3 where the batch halves


@pytest.mark.parametrize("settings,message", [
    ({"cfg_until": 1.5}, "--cfg-until must be in 0..1"),
    ({"cfg_until": float("nan")}, "--cfg-until must be a finite number"),
    ({"cache_interval": 0}, "--cache-interval must be at least 1"),
    ({"cache_branch": -1}, "--cache-branch must be at least 0"),
])
def test_bad_speed_settings_are_refused(settings: dict, message: str) -> None:
    with pytest.raises(SdlabError, match=message):
        parse(GenerateParams(PROMPT, **settings))


def test_a_branch_the_unet_lacks_is_one_line(tiny: Parts) -> None:
    with pytest.raises(SdlabError, match="--cache-branch 1 does not fit this UNet"):
        generate(tiny, GenerateParams(PROMPT, steps=2, cache_interval=2, cache_branch=1))


def test_fast_is_recorded_in_the_png_and_reruns_exactly(tiny_folder: Path,
                                                        tmp_path: Path) -> None:
    out = tmp_path / "fast.png"
    runner = CliRunner()
    result = runner.invoke(main, ["generate", PROMPT, "--model", str(tiny_folder), "--steps",
                                  "6", "--fast", "--cache-branch", "0", "--out", str(out),
                                  "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    params = json.loads(Image.open(out).info["sdlab"])["params"]
    assert {k: params[k] for k in FAST} == FAST
    again = tmp_path / "again.png"
    result = runner.invoke(main, ["generate", "--from", str(out), "--out", str(again),
                                  "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))
    plain = generate(load(tiny_folder), GenerateParams(PROMPT, steps=6)).images[0]
    assert not np.array_equal(np.asarray(plain), np.asarray(Image.open(out)))
