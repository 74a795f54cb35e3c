"""`train-tiny --quick`: every stage's loss falls and the folder is a loadable SD model."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from sdlab.models import load_split_clip as load_clip
from sdlab.tiny.cli import train_tiny
from sdlab.tiny.common import LossLog, TinyConfig
from sdlab.tiny.train import _unet_stage

STAGES = ("vae", "clip", "unet")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    out, work = root / "model", root / "work"
    args = ["--out", str(out), "--workdir", str(work), "--quick", "--seed", "1"]
    result = CliRunner().invoke(train_tiny, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, work, args


@pytest.mark.parametrize("stage", STAGES)
def test_loss_falls(trained, stage):
    _, work, _ = trained
    losses = [r["loss"] for r in LossLog(work / stage / "log.jsonl").read()]
    assert len(losses) >= 20
    assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses


def test_folder_layout_and_configs(trained):
    out, _, _ = trained
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["requires_safety_checker"] is False
    sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == "LMSDiscreteScheduler"
    assert (sched["beta_start"], sched["beta_end"]) == (0.00085, 0.012)
    assert sched["beta_schedule"] == "scaled_linear" and sched["prediction_type"] == "epsilon"
    vae = json.loads((out / "vae" / "config.json").read_text())
    assert vae["sample_size"] == 64 and vae["latent_channels"] == 4
    assert vae["scaling_factor"] > 0 and vae["scaling_factor"] != 1.0
    unet = json.loads((out / "unet" / "config.json").read_text())
    text = json.loads((out / "text_encoder" / "config.json").read_text())
    assert unet["sample_size"] == 8 and unet["cross_attention_dim"] == text["hidden_size"]
    assert (text["bos_token_id"], text["eos_token_id"], text["pad_token_id"]) == (
        49406, 49407, 49407)
    assert text["vocab_size"] == 49408 and text["max_position_embeddings"] == 77
    for sub in ("text_encoder", "vae", "unet", "clip"):
        assert list((out / sub).glob("*.safetensors")), sub
    processor = json.loads((out / "clip" / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == processor["image_std"] == [0.5] * 3  # [-1, 1]


def test_preview_map_is_written(trained):
    out, _, _ = trained
    data = json.loads((out / "preview.json").read_text())
    assert np.array(data["weight"]).shape == (4, 3) and np.array(data["bias"]).shape == (3,)


def test_pipeline_loads_and_generates(trained):
    out, _, _ = trained
    pipe = StableDiffusionPipeline.from_pretrained(str(out), safety_checker=None)
    assert pipe.unet.dtype == pipe.text_encoder.dtype == pipe.vae.dtype == torch.float32
    ids = pipe.tokenizer("A picture of a puppy").input_ids
    assert ids == [49406, 320, 1674, 539, 320, 6829, 49407]
    image = pipe("a red circle on a blue background", num_inference_steps=3, height=64,
                 width=64, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)


def test_clip_tower_rebuilds(trained):
    out, _, _ = trained
    clip = load_clip(out)
    pipe_ids = torch.tensor([[49406, 320, 736, 7117, 49407]])
    logits = clip(input_ids=pipe_ids, pixel_values=torch.zeros(2, 3, 64, 64)).logits_per_image
    assert logits.shape == (2, 1)


def test_resume_skips_finished_stages(trained):
    out, work, args = trained
    before = {s: len(LossLog(work / s / "log.jsonl").read()) for s in STAGES}
    result = CliRunner().invoke(train_tiny, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    after = {s: len(LossLog(work / s / "log.jsonl").read()) for s in STAGES}
    assert before == after
    assert (out / "model_index.json").is_file()


def test_vae_loss_weights_the_shape():
    """The reconstruction error counts 1 + fg_weight on the shape and its rim, 1 elsewhere."""
    from sdlab.tiny import world
    from sdlab.tiny.common import VaeConfig, images_to_tensor
    from sdlab.tiny.train_vae import foreground_weights, reconstruction_loss

    scene = world.make_scene("square", "red", "blue", "center", "large")
    x = images_to_tensor(world.render(scene)[None])
    mask = world.render_mask("square", scene.cx, scene.cy, scene.radius) > 0
    w = foreground_weights(x, 4.0)[0, 0].numpy()
    assert (w[mask] == 5.0).all()
    assert (w[:4, :4] == 1.0).all() and w.min() == 1.0
    assert mask.sum() < (w == 5.0).sum() < mask.sum() + 4 * 64  # the rim is one pixel wide
    cfg = VaeConfig(l1_weight=0.0, fg_weight=4.0)
    on_shape, off_shape = x.clone(), x.clone()
    on_shape[:, :, 32, 32] += 0.5
    off_shape[:, :, 2, 2] += 0.5
    loss_on, mse_on = reconstruction_loss(on_shape, x, cfg)
    loss_off, mse_off = reconstruction_loss(off_shape, x, cfg)
    assert mse_on == mse_off and loss_on / loss_off == torch.tensor(5.0)


def test_bar_checks_read_the_benchmark():
    from sdlab.tiny.card import bar_checks

    good = {"color": 0.95, "background": 0.97, "shape": 0.85, "position": 0.9, "size": 0.9}
    bench = {"guidance_7.5": good, "guidance_7.5_held_out_pairs": dict(good, shape=0.76),
             "guidance_7.5_same_prompts_as_1.0": good,
             "guidance_1.0": {k: v - 0.2 for k, v in good.items()},
             "vae_psnr_db": 29.0, "seconds_per_image": 1.0}
    assert all(ok for _, _, ok in bar_checks(bench))
    bench["guidance_7.5_held_out_pairs"] = dict(good, shape=0.74)
    bench["guidance_1.0"] = good
    failed = [name for name, _, ok in bar_checks(bench) if not ok]
    assert len(failed) == 2 and "held-out" in failed[0] and "1.0" in failed[1]


def test_unet_stage_runs_both_phases_and_resumes_inside_the_tune(trained, tmp_path):
    """steps on clean captions, then tune_steps with a noisy cache beside the clean one;
    stopped inside the tune, a rerun goes on from the checkpoint, not from the start."""
    _, work, _ = trained
    for stage in ("vae", "clip"):
        (tmp_path / stage).symlink_to(work / stage)
    config = TinyConfig.quick(seed=1)
    config.unet = dataclasses.replace(config.unet, caption_noise=0.5, steps=5, tune_steps=0,
                                      calibrate_steps=0)
    _unet_stage(config, tmp_path, resume=False)
    unet_dir = tmp_path / "unet"
    assert not (unet_dir / "text_cache_noisy.safetensors").exists()  # no tune, no noisy cache
    assert len(LossLog(unet_dir / "log.jsonl").read()) == 5
    # the clean cache is the one the quick run built
    clean = load_file(str(unet_dir / "text_cache.safetensors"))["states"]
    assert torch.equal(clean, load_file(str(work / "unet" / "text_cache.safetensors"))["states"])

    shutil.rmtree(unet_dir / "final")  # as if stopped at the end of phase 1 (checkpoint 5)
    config.unet = dataclasses.replace(config.unet, tune_steps=3)
    _unet_stage(config, tmp_path, resume=True)
    noisy = load_file(str(unet_dir / "text_cache_noisy.safetensors"))["states"]
    assert noisy.shape == clean.shape and not torch.equal(clean, noisy)
    assert [r["step"] for r in LossLog(unet_dir / "log.jsonl").read()] == list(range(8))
    assert (unet_dir / "final" / "config.json").is_file()


def test_guidance_tune_batches_use_noisy_captions_as_t_falls():
    """Phase 1 never uses the noisy captions; the tune uses them with probability
    min(1, 2 (1 - t/1000)) and leaves out uncond_prob of the captions."""
    from sdlab.tiny.common import UnetConfig
    from sdlab.tiny.train_unet import Pool, ddpm_scheduler, training_batch

    n, d = 50, 4
    pool = Pool(latents=torch.zeros(n, 4, 8, 8), states=torch.zeros(n, 77, d),
                empty=-torch.ones(1, 77, d), noisy_states=torch.ones(n, 77, d))
    cfg = UnetConfig(batch_size=4000)
    scheduler = ddpm_scheduler()
    _, t, ctx, *_ = training_batch(pool, cfg, 0, 7, 0.0, 0.0, scheduler)
    assert (ctx == 0).all()
    _, t, ctx, *_ = training_batch(pool, cfg, 0, 7, 0.2, 1.0, scheduler)
    kind = ctx[:, 0, 0]
    assert abs((kind == -1).float().mean().item() - 0.2) < 0.03
    kept = kind != -1
    low, high = kept & (t < 500), kept & (t >= 900)
    assert (kind[low] == 1).all()  # always noisy below t = 500
    assert 0.05 < (kind[high] == 1).float().mean().item() < 0.15  # ~2 (1 - t/1000) ~ 0.1


def test_calibration_batches_use_noisy_captions_at_a_flat_share():
    """calibrate_noisy: the same share of noisy captions at every t (no ramp), so the
    calibration covers small t too."""
    from sdlab.tiny.common import UnetConfig
    from sdlab.tiny.train_unet import Pool, ddpm_scheduler, training_batch

    n, d = 50, 4
    pool = Pool(latents=torch.zeros(n, 4, 8, 8), states=torch.zeros(n, 77, d),
                empty=-torch.ones(1, 77, d), noisy_states=torch.ones(n, 77, d))
    batch = training_batch(pool, UnetConfig(batch_size=8000), 0, 7, 0.1, 0.3, ddpm_scheduler(),
                           ramp=False)
    kind, t = batch.ctx[:, 0, 0], batch.t
    assert torch.equal(batch.said_wrong, kind == 1)
    for part in (t < 300, t >= 700):
        share = (kind[part] == 1).float().mean().item()
        assert abs(share - 0.3 * 0.9) < 0.04, share  # 0.3 of the captions not left empty


def test_guidance_calibration_learns_from_the_previous_phase(trained, tmp_path):
    """Entering the calibration, the EMA of the phase before is saved as the frozen teacher
    (a run resumed there finds the same one) and the student starts from it (at learning
    rate 0 it stays there, where the raw phase-1 weights would pull its EMA away); without
    a tune, no noisy captions."""
    _, work, _ = trained
    for stage in ("vae", "clip"):
        (tmp_path / stage).symlink_to(work / stage)
    config = TinyConfig.quick(seed=1)
    config.unet = dataclasses.replace(config.unet, steps=5, tune_steps=0, calibrate_steps=0)
    _unet_stage(config, tmp_path, resume=False)
    unet_dir = tmp_path / "unet"
    ema = {k[4:]: v for k, v in load_file(str(unet_dir / "ckpt" / "weights.safetensors")).items()
           if k.startswith("ema.")}
    shutil.rmtree(unet_dir / "final")  # as if stopped at the end of phase 1
    config.unet = dataclasses.replace(config.unet, calibrate_steps=3, calibrate_lr=0.0)
    _unet_stage(config, tmp_path, resume=True)
    teacher = load_file(str(unet_dir / "teacher.safetensors"))
    assert teacher.keys() == ema.keys() and all(torch.equal(teacher[k], ema[k]) for k in ema)
    student = load_file(str(unet_dir / "final" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.allclose(student[k], teacher[k], atol=1e-6) for k in teacher)
    assert not (unet_dir / "text_cache_noisy.safetensors").exists()
    assert [r["step"] for r in LossLog(unet_dir / "log.jsonl").read()] == list(range(8))


def _quick_unet(seed: int):
    from sdlab.tiny.train_unet import build_unet

    torch.manual_seed(seed)
    return build_unet(TinyConfig.quick().unet, 32)


def test_calibrated_target_is_the_teachers_guided_prediction():
    from sdlab.tiny.train_unet import calibrated_batch

    teacher = _quick_unet(0).eval()
    gen = torch.Generator().manual_seed(0)
    noisy, ctx = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 77, 32, generator=gen)
    empty, t = torch.randn(1, 77, 32, generator=gen), torch.tensor([10, 500, 900])
    ctx[2] = empty[0]  # a dropped caption
    with torch.no_grad():
        eps_c = teacher(noisy, t, encoder_hidden_states=ctx).sample
        eps_u = teacher(noisy, t, encoder_hidden_states=empty.expand(3, -1, -1)).sample
    for scale in (0.0, 0.4, 1.0, 2.0):
        *_, target = calibrated_batch(teacher, (noisy, t, ctx, None), empty, scale)
        assert torch.allclose(target, eps_u + scale * (eps_c - eps_u), atol=1e-5)
        assert torch.allclose(target[2], eps_u[2], atol=1e-5)


def test_calibration_shrinks_the_guidance_gap_to_the_scale():
    """Trained on calibrated targets, the student's cond - uncond gap becomes `scale` times
    the teacher's, so guidance g / scale on the student is guidance g on the teacher."""
    import copy

    from sdlab.tiny.train_unet import _optimizer_step, calibrated_batch, ddpm_scheduler

    cfg = dataclasses.replace(TinyConfig.quick().unet, ema_decay=0.0)
    teacher = _quick_unet(0).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a teacher with a real gap between caption and no caption
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    student = copy.deepcopy(teacher).train()
    ema = copy.deepcopy(teacher)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    noisy, ctx = torch.randn(16, 4, 8, 8, generator=gen), torch.randn(16, 77, 32, generator=gen)
    empty, t = torch.randn(1, 77, 32, generator=gen), torch.randint(0, 1000, (16,), generator=gen)

    def gap(model) -> float:
        with torch.no_grad():
            c = model(noisy, t, encoder_hidden_states=ctx).sample
            u = model(noisy, t, encoder_hidden_states=empty.expand(16, -1, -1)).sample
        return float((c - u).norm())

    batch = calibrated_batch(teacher, (noisy, t, ctx, None), empty, 0.4)
    for step in range(60):
        _optimizer_step(student, ema, opt, ddpm_scheduler(), batch, cfg, step)
    ratio = gap(student) / gap(teacher)
    assert 0.25 < ratio < 0.6, ratio


def test_souped_teacher_averages_phase1_back_in_and_the_student_starts_there(trained, tmp_path):
    """With phase1_share, the phase-1 EMA is saved at the end of phase 1; the teacher is the
    tuned EMA with that share of it averaged back in, and the calibration starts from it."""
    _, work, _ = trained
    for stage in ("vae", "clip"):
        (tmp_path / stage).symlink_to(work / stage)
    config = TinyConfig.quick(seed=1)
    config.unet = dataclasses.replace(config.unet, steps=4, tune_steps=3, calibrate_steps=0,
                                      phase1_share=0.25, calibrate_noisy=0.3)
    _unet_stage(config, tmp_path, resume=False)
    unet_dir = tmp_path / "unet"
    phase1 = load_file(str(unet_dir / "phase1.safetensors"))
    tuned = {k[4:]: v for k, v in load_file(str(unet_dir / "ckpt" / "weights.safetensors")).items()
             if k.startswith("ema.")}
    assert phase1.keys() == tuned.keys()
    assert any(not torch.equal(phase1[k], tuned[k]) for k in tuned)  # the tune moved them
    shutil.rmtree(unet_dir / "final")  # as if stopped at the end of the tune
    config.unet = dataclasses.replace(config.unet, calibrate_steps=1)
    _unet_stage(config, tmp_path, resume=True)
    teacher = load_file(str(unet_dir / "teacher.safetensors"))
    for k in tuned:
        assert torch.allclose(teacher[k], 0.75 * tuned[k] + 0.25 * phase1[k], atol=1e-6)
    final = load_file(str(unet_dir / "final" / "diffusion_pytorch_model.safetensors"))
    # one calibration step (at a warmup learning rate) from the teacher, not from the tuned
    to_teacher = max((final[k] - teacher[k]).abs().max().item() for k in tuned)
    to_tuned = max((final[k] - tuned[k]).abs().max().item() for k in tuned)
    assert to_teacher < 1e-4 < 1e-3 < to_tuned


def test_calibration_keeps_the_true_noise_for_wrong_captions():
    """calibrate_noisy: a caption that names something wrongly keeps the noise as target
    (the robustness the tune taught); the others get the teacher's guided prediction."""
    from sdlab.tiny.train_unet import calibrated_batch

    teacher = _quick_unet(0).eval()
    gen = torch.Generator().manual_seed(0)
    noisy, ctx = torch.randn(4, 4, 8, 8, generator=gen), torch.randn(4, 77, 32, generator=gen)
    empty, t = torch.randn(1, 77, 32, generator=gen), torch.tensor([10, 200, 500, 900])
    noise = torch.randn(4, 4, 8, 8, generator=gen)
    keep = torch.tensor([True, False, True, False])
    *_, guided = calibrated_batch(teacher, (noisy, t, ctx, noise), empty, 0.5)
    *_, target = calibrated_batch(teacher, (noisy, t, ctx, noise), empty, 0.5, keep)
    assert torch.equal(target[keep], noise[keep])
    assert torch.allclose(target[~keep], guided[~keep])
    assert not torch.allclose(guided[keep], noise[keep])


_ORPHAN_SCRIPT = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
import multiprocessing
from sdlab.tiny.train import exit_with_parent

if __name__ == "__main__":
    init = exit_with_parent if sys.argv[1] == "watch" else None
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=init)
    print(pool.submit(os.getpid).result(), flush=True)
    pool.submit(time.sleep, 120)
    time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
@pytest.mark.parametrize("mode", ["watch", "plain"])
def test_stage_workers_exit_when_train_tiny_is_killed(tmp_path, mode):
    """A parallel train-tiny's stage workers die with it (a killed run must not keep
    training beside the one that resumes it); a plain pool's worker would live on."""
    script = tmp_path / "orphan.py"
    script.write_text(_ORPHAN_SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE,
                              text=True)
    worker = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.time() + 5  # the watcher polls every second
    while _alive(worker) and time.time() < deadline:
        time.sleep(0.2)
    try:
        assert _alive(worker) == (mode == "plain")
    finally:
        if _alive(worker):
            os.kill(worker, signal.SIGKILL)
