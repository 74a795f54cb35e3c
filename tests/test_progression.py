"""Progression video, traces and guidance by a loss, on a tiny random model (the meaning
checks live with the bundled model's tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from sdlab.cli import main
from sdlab.errors import SdlabError
from sdlab.generate import GenerateParams, generate, generate_steps
from sdlab.guidance import LossGuidance, blue_loss, color_loss, contrast_loss, loss_for
from sdlab.models import Parts
from sdlab.preview import decoder_for, fit_preview, preview_for
from sdlab.recipe import parse_guide
from sdlab.trace import load_trace, read_video, save_trace, to_trace


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_video_has_a_frame_per_step_at_twice_the_width(tiny_folder: Path, tmp_path: Path) -> None:
    video = tmp_path / "p.mp4"
    run("generate", "a cat", "--model", str(tiny_folder), "--steps", "6", "--video", str(video),
        "--out", str(tmp_path / "p.png"), "--quiet")
    frames = read_video(video)
    assert len(frames) == 6
    assert frames[0].shape == (64, 128, 3)
    run("generate", "a cat", "--model", str(tiny_folder), "--steps", "3", "--video",
        str(tmp_path / "full.mp4"), "--video-decoder", "full", "--out", str(tmp_path / "f.png"),
        "--quiet")
    assert len(read_video(tmp_path / "full.mp4")) == 3


def test_trace_round_trip_and_show(tiny: Parts, tiny_folder: Path, tmp_path: Path) -> None:
    trace_file = tmp_path / "run.safetensors"
    run("generate", "a cat", "--model", str(tiny_folder), "--steps", "5", "--trace",
        str(trace_file), "--guide", "blue:50", "--guide-every", "2",
        "--out", str(tmp_path / "t.png"), "--quiet")
    trace = load_trace(trace_file)
    assert trace.steps == 5 and trace.tensors["latents"].shape == (5, 1, 4, 8, 8)
    assert trace.meta["params"]["guide"] == ["blue:50"]
    assert [p[0] for p in trace.meta["losses"]["blue"]] == [0, 2, 4]
    # the trace holds exactly the run: its last next_latents are the final latents
    expected = generate(tiny, GenerateParams("a cat", steps=5, guide=("blue:50",),
                                             guide_every=2)).latents
    torch.testing.assert_close(trace.tensors["next_latents"][-1], expected)
    out = run("trace", "show", str(trace_file), "--out", str(tmp_path / "shown"),
              "--video", str(tmp_path / "shown.mp4"))
    assert "loss-blue.png" in out and "sigma.png" in out
    assert len(list((tmp_path / "shown").glob("frame-*.png"))) == 5
    assert len(read_video(tmp_path / "shown.mp4")) == 5


def test_trace_save_load_keeps_records(tiny: Parts, tmp_path: Path) -> None:
    records = list(generate_steps(tiny, GenerateParams("a dog", steps=3)))
    save_trace(to_trace(records, {"note": "x"}), tmp_path / "t.safetensors")
    trace = load_trace(tmp_path / "t.safetensors")
    assert trace.meta == {"note": "x"}
    for k, record in enumerate(records):
        again = trace.record(k)
        assert again.i == record.i
        torch.testing.assert_close(again.x0_pred, record.x0_pred)
        torch.testing.assert_close(again.pred_uncond, record.pred_uncond)


def test_guidance_moves_the_latents_down_the_loss(tiny: Parts) -> None:
    """One guided step lowers the loss of the decoded x0 (what the gradient step is for)."""
    params = GenerateParams("a cat", steps=4)
    record = list(generate_steps(tiny, params))[1]
    decode = decoder_for(tiny, "full")
    guide = LossGuidance(blue_loss, 1.0, decode, every=1)
    moved = guide(record)
    before = blue_loss(decode(record.x0_pred))
    after = blue_loss(decode(record.x0_pred + (moved.latents - record.latents)))
    assert after < before
    assert guide.losses == [(record.i, pytest.approx(float(before), rel=1e-5))]


def test_guides_are_part_of_the_recipe(tiny: Parts) -> None:
    plain = generate(tiny, GenerateParams("a cat", steps=4)).latents
    guided = generate(tiny, GenerateParams("a cat", steps=4, guide=("blue:500",),
                                           guide_every=1, guide_decoder="approx"))
    assert (guided.latents - plain).abs().max() > 1e-4
    assert len(guided.losses["blue"]) == 4


def test_guide_specs() -> None:
    assert parse_guide("blue:200").scale == 200.0
    spec = parse_guide("color:red:10")
    assert spec.name == "color:red" and spec.scale == 10.0
    loss = loss_for(spec)
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1
    assert float(loss(red)) == 0.0
    assert float(color_loss((0.0, 0.0, 1.0))(red)) > 0.5
    flat, checker = torch.full((1, 3, 4, 4), 0.5), torch.zeros(1, 3, 4, 4)
    checker[..., ::2, ::2] = 1
    assert contrast_loss(checker) < contrast_loss(flat)
    for bad, words in [("blue", "NAME:SCALE"), ("sparkle:3", "unknown guide"),
                       ("color:teal:3", "unknown colour"), ("blue:nan", "NAME:SCALE"),
                       ("blue:1e300", "at most"), ("color:2,0,0:1", "unknown colour")]:
        with pytest.raises(SdlabError, match=words):
            parse_guide(bad)
    with pytest.raises(SdlabError, match="CLIP model"):
        loss_for(parse_guide('clip:"a star":5'))


def test_custom_callable_loss_through_the_api(tiny: Parts) -> None:
    def redness(images: torch.Tensor) -> torch.Tensor:
        return -images[:, 0].mean()

    guide = LossGuidance(redness, 100.0, decoder_for(tiny, "approx"), every=1, name="red")
    result = generate(tiny, GenerateParams("a cat", steps=3), callbacks=[guide])
    assert [i for i, _ in guide.losses] == [0, 1, 2] and result.images


def test_fitted_preview_tracks_the_vae(tiny: Parts) -> None:
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0),
              (255, 255, 0), (0, 255, 255), (128, 128, 128)]
    images = [Image.new("RGB", (64, 64), c) for c in colors]
    preview = fit_preview(tiny, images)
    assert preview.weight.shape == (4, 3)
    from sdlab import vae

    latents = vae.encode(tiny, images, "mean")
    approx = preview(latents)
    truth = (vae.to_tensor(images) + 1) / 2
    baseline = (truth - truth.mean()).abs().mean()
    assert (approx - truth).abs().mean() < baseline  # better than knowing only the mean
    assert preview_for(tiny).weight.shape == (4, 3)


def test_img2img_cli_reruns_from_its_png(tiny_folder: Path, tmp_path: Path) -> None:
    image = tmp_path / "in.png"
    Image.fromarray((np.random.RandomState(1).rand(64, 64, 3) * 255).astype(np.uint8)).save(image)
    out = tmp_path / "out.png"
    run("img2img", str(image), "a red circle", "--model", str(tiny_folder), "--steps", "10",
        "--start-step", "4", "--out", str(out), "--quiet")
    params = json.loads(Image.open(out).info["sdlab"])["params"]
    assert params["strength"] == 0.6 and params["image"] == str(image.resolve())
    run("generate", "--from", str(out), "--out", str(tmp_path / "again.png"), "--quiet")
    np.testing.assert_array_equal(np.asarray(Image.open(out)),
                                  np.asarray(Image.open(tmp_path / "again.png")))


def test_img2img_cli_refuses_both_settings(tiny_folder: Path, tmp_path: Path) -> None:
    Image.new("RGB", (64, 64)).save(tmp_path / "in.png")
    result = CliRunner().invoke(main, ["img2img", str(tmp_path / "in.png"), "x", "--model",
                                       str(tiny_folder), "--strength", "0.5", "--start-step",
                                       "3"])
    assert result.exit_code == 1 and "not both" in result.output


def test_clip_guidance_with_a_clip_model_folder(tiny: Parts, tmp_path: Path) -> None:
    """`--clip-model` takes any transformers CLIPModel folder (real CLIP in the HF cache works
    the same way); the guide pulls the image towards the text in that model's space."""
    from transformers import CLIPConfig, CLIPModel

    from sdlab.clip_guidance import clip_for

    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=37,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=49407),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4, image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(tmp_path / "clip")
    tiny.tokenizer.save_pretrained(tmp_path / "clip")
    scorer = clip_for(tiny, str(tmp_path / "clip"))
    assert scorer is not None and scorer.image_size == 32
    params = GenerateParams("a cat", steps=4, guide=('clip:"a green star":50',), guide_every=1,
                            guide_decoder="approx", clip_model=str(tmp_path / "clip"))
    result = generate(tiny, params)
    losses = [loss for _, loss in result.losses['clip:"a green star"']]
    assert len(losses) == 4 and all(0 <= v <= 2 for v in losses)
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    loss = scorer.loss("a green star")(images)
    (grad,) = torch.autograd.grad(loss, images)
    assert grad.abs().sum() > 0
