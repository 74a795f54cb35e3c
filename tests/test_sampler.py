"""The per-step record and the callbacks: observe, edit, stop; x0_pred is right for
epsilon and v-prediction models."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import torch

from sdlab.generate import GenerateParams, generate, generate_steps, prepare
from sdlab.models import Parts
from sdlab.sampler import StepRecord, StopSampling
from sdlab.schedule import SD1_SCHEDULER_CONFIG, make_scheduler
from sdlab.text import tokenize


def test_records_cover_every_step(tiny: Parts) -> None:
    params = GenerateParams("a cat", steps=5)
    records = list(generate_steps(tiny, params))
    assert [r.i for r in records] == list(range(5))
    first = records[0]
    assert first.latents.shape == first.pred.shape == first.x0_pred.shape == (1, 4, 8, 8)
    assert first.pred_uncond is not None and first.pred_cond is not None
    guided = first.pred_uncond + 7.5 * (first.pred_cond - first.pred_uncond)
    torch.testing.assert_close(first.pred, guided)
    # sigmas fall and each record hands its result to the next
    sigmas = [float(r.sigma) for r in records]
    assert sigmas == sorted(sigmas, reverse=True)
    for a, b in zip(records, records[1:], strict=False):
        assert torch.equal(a.next_latents, b.latents)
    # generate() is the last record plus the decode
    assert torch.equal(records[-1].next_latents, generate(tiny, params).latents)


def test_guidance_one_skips_the_unconditional_pass(tiny: Parts) -> None:
    params = GenerateParams("a cat", steps=1, guidance=1.0)
    record = next(generate_steps(tiny, params))
    assert record.pred_uncond is None
    assert torch.equal(record.pred, record.pred_cond)


def test_lms_sigmas_are_the_deep_dive_ones() -> None:
    scheduler = make_scheduler("lms", SD1_SCHEDULER_CONFIG)
    scheduler.set_timesteps(15)
    sigmas = scheduler.sigmas.tolist()
    assert [round(s, 4) for s in sigmas[:3]] == [14.6146, 9.6826, 6.6780]
    assert round(sigmas[-2], 4) == 0.0292 and sigmas[-1] == 0


def test_callback_can_edit_the_run(tiny: Parts) -> None:
    params = GenerateParams("a cat", steps=4)
    plain = generate(tiny, params).latents

    def zero_pred_at_step_2(record: StepRecord) -> StepRecord | None:
        return replace(record, pred=torch.zeros_like(record.pred)) if record.i == 2 else None

    edited = generate(tiny, params, callbacks=[zero_pred_at_step_2]).latents
    assert (edited - plain).abs().max() > 1e-3
    # the same edit through the pipeline of records is deterministic
    again = generate(tiny, params, callbacks=[zero_pred_at_step_2]).latents
    assert torch.equal(edited, again)


def test_callback_can_stop_the_run(tiny: Parts) -> None:
    seen: list[int] = []

    def stop_at_3(record: StepRecord) -> None:
        seen.append(record.i)
        if record.i == 3:
            raise StopSampling

    params = GenerateParams("a cat", steps=10)
    records = list(generate_steps(tiny, params, callbacks=[stop_at_3]))
    assert seen == [0, 1, 2, 3]
    assert [r.i for r in records] == [0, 1, 2]  # the step that raised is not taken
    seen.clear()
    result = generate(tiny, params, callbacks=[stop_at_3])
    assert torch.equal(result.latents, records[-1].next_latents)


class Hooks:
    def __init__(self) -> None:
        self.events: list[object] = []

    def begin(self, total: int) -> None:
        self.events.append(("begin", total))

    def __call__(self, record: StepRecord) -> None:
        self.events.append(record.i)

    def end(self) -> None:
        self.events.append("end")


def test_callback_begin_and_end_hooks(tiny: Parts) -> None:
    hooks = Hooks()
    generate(tiny, GenerateParams("a cat", steps=3, scheduler="heun"), callbacks=[hooks])
    assert hooks.events == [("begin", 5), 0, 1, 2, 3, 4, "end"]  # Heun: 2 evaluations a step


@pytest.mark.parametrize("scheduler", ["lms", "euler", "euler-a", "heun", "ddim"])
@pytest.mark.parametrize("model", ["tiny", "tiny_vpred"])
def test_x0_pred_matches_the_schedulers_own(request: pytest.FixtureRequest, scheduler: str,
                                            model: str) -> None:
    """Schedulers that report `pred_original_sample` agree with the record's x0_pred."""
    parts: Parts = request.getfixturevalue(model)
    run = prepare(parts, GenerateParams("a dog", steps=5, scheduler=scheduler, seed=0))
    checked = 0

    def compare(record: StepRecord) -> None:
        nonlocal checked
        probe = make_scheduler(scheduler, parts.scheduler_config)
        probe.set_timesteps(5)
        if hasattr(probe, "_step_index"):
            probe._step_index = record.i  # a fresh copy, placed at this step
        kwargs = {"generator": torch.Generator()} if scheduler == "euler-a" else {}
        out = probe.step(record.pred, record.t, record.latents, **kwargs)
        if scheduler == "heun" and record.i % 2 == 0 and record.i > 0:
            return  # Heun's second evaluation reports the first's x0
        torch.testing.assert_close(record.x0_pred, out.pred_original_sample, rtol=1e-4,
                                   atol=1e-4)
        checked += 1

    for _ in run.steps([compare]):
        pass
    assert checked >= 3


def test_long_prompt_warns_with_the_dropped_words(tiny: Parts,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    prompt = "a red circle " * 30 + "and a purple elephant"
    with caplog.at_level(logging.WARNING):
        tokens = tokenize(tiny, prompt)
    assert tokens.ids.shape == (77,)
    assert tokens.dropped.endswith("and a purple elephant")
    assert "purple elephant" in caplog.text
    assert tokenize(tiny, "a red circle").dropped == ""
