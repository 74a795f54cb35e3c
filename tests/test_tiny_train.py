"""`python -m training --quick`: every stage's loss falls and the folder is a loadable SD
model; the stages resume where they stopped."""

import ast
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from sdlab.models import load_split_clip as load_clip
from training.cli import main as train_tiny
from training.config import NO_OP, TinyConfig
from training.fit import LossLog
from training.train import run_stage

ROOT = Path(__file__).resolve().parent.parent
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
    recipe = TinyConfig.quick().unet  # trained and sampled on one schedule
    assert (sched["beta_start"], sched["beta_end"]) == (recipe.beta_start, recipe.beta_end)
    assert sched["beta_schedule"] == "scaled_linear" and sched["prediction_type"] == "epsilon"
    vae = json.loads((out / "vae" / "config.json").read_text())
    assert vae["sample_size"] == 64 and vae["latent_channels"] == 4
    assert vae["scaling_factor"] > 0 and vae["scaling_factor"] != 1.0
    unet = json.loads((out / "unet" / "config.json").read_text())
    text = json.loads((out / "text_encoder" / "config.json").read_text())
    assert unet["sample_size"] == 8 and unet["cross_attention_dim"] == text["hidden_size"]
    assert "_name_or_path" not in vae and "_name_or_path" not in unet  # no training paths
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


def test_resume_refuses_a_workdir_of_another_recipe(trained, tmp_path):
    """A workdir's finished stages are reused on resume, so another seed (another recipe)
    is refused before any training; --no-resume or a new workdir is the way out."""
    out, work, args = trained
    before = {s: len(LossLog(work / s / "log.jsonl").read()) for s in STAGES}
    other = ["--out", str(tmp_path / "model"), "--workdir", str(work), "--quick", "--seed", "2"]
    result = CliRunner().invoke(train_tiny, other)
    assert result.exit_code != 0 and "--workdir" in result.output
    assert not (tmp_path / "model").exists()
    assert {s: len(LossLog(work / s / "log.jsonl").read()) for s in STAGES} == before
    older = json.loads((work / "config.json").read_text())
    del older["unet"]["beta_end"]  # written by a recipe without the option
    (tmp_path / "older").mkdir()
    (tmp_path / "older" / "config.json").write_text(json.dumps(older))
    args_older = ["--out", str(tmp_path / "model"), "--workdir", str(tmp_path / "older"),
                  "--quick", "--seed", "1"]
    result = CliRunner().invoke(train_tiny, args_older)
    assert result.exit_code != 0 and "--workdir" in result.output
    assert not (tmp_path / "model").exists()
    faster = [*args, "--threads", "2"]  # speed settings are not the recipe
    assert CliRunner().invoke(train_tiny, faster, catch_exceptions=False).exit_code == 0

def test_vae_loss_weights_the_shape():
    """The reconstruction error counts 1 + fg_weight on the shape and its rim, 1 elsewhere."""
    from sdlab.tiny import world
    from sdlab.tiny.imaging import images_to_tensor
    from training.config import VaeConfig
    from training.vae import foreground_weights, reconstruction_loss

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


def test_unet_stage_runs_both_phases_and_resumes_inside_the_tune(trained, tmp_path):
    """steps on clean captions, then tune_steps with a noisy cache beside the clean one;
    stopped inside the tune, a rerun goes on from the checkpoint, not from the start."""
    _, work, _ = trained
    for stage in ("vae", "clip"):
        (tmp_path / stage).symlink_to(work / stage)
    config = TinyConfig.quick(seed=1)
    config.unet = dataclasses.replace(config.unet, caption_noise=0.5, steps=5, tune_steps=0,
                                      calibrate_steps=0)
    run_stage("unet", config, tmp_path, resume=False)
    unet_dir = tmp_path / "unet"
    assert not (unet_dir / "text_cache_noisy.safetensors").exists()  # no tune, no noisy cache
    assert len(LossLog(unet_dir / "log.jsonl").read()) == 5
    # the clean cache is the one the quick run built
    clean = load_file(str(unet_dir / "text_cache.safetensors"))["states"]
    assert torch.equal(clean, load_file(str(work / "unet" / "text_cache.safetensors"))["states"])

    shutil.rmtree(unet_dir / "final")  # as if stopped at the end of phase 1 (checkpoint 5)
    config.unet = dataclasses.replace(config.unet, tune_steps=3)
    run_stage("unet", config, tmp_path, resume=True)
    noisy = load_file(str(unet_dir / "text_cache_noisy.safetensors"))["states"]
    assert noisy.shape == clean.shape and not torch.equal(clean, noisy)
    assert [r["step"] for r in LossLog(unet_dir / "log.jsonl").read()] == list(range(8))
    assert (unet_dir / "final" / "config.json").is_file()


class _Stop(Exception):
    pass


def test_a_unet_stage_stopped_inside_a_phase_resumes_to_the_unbroken_run(trained, tmp_path,
                                                                          monkeypatch):
    """Each step's batch comes from its own generator and a checkpoint holds the weights,
    the EMA and the optimizer (the calibration's teacher its own file): a UNet stage
    stopped inside the tune and again inside the calibration, and resumed each time, ends
    with the unbroken run's weights and losses, bit for bit."""
    import training.fit
    import training.unet

    _, work, _ = trained
    config = TinyConfig.quick(seed=1)
    config.unet = dataclasses.replace(config.unet, steps=4, tune_steps=4, calibrate_steps=3)
    monkeypatch.setattr(training.fit, "CKPT_EVERY", 3)  # checkpoints after steps 2, 5, 8
    real_batch = training.unet.training_batch

    def stop_at(at: int):
        def batch(pool, batch_size, seed, step, *args):
            if step == at:
                raise _Stop
            return real_batch(pool, batch_size, seed, step, *args)
        return batch

    finals, logs = {}, {}
    for run, stops in (("unbroken", []), ("resumed", [7, 10])):  # tune 4-7, calibration 8-10
        root = tmp_path / run
        (root / "unet").mkdir(parents=True)
        for stage in ("vae", "clip"):
            (root / stage).symlink_to(work / stage)
        for cache in (work / "unet").glob("*_cache*.safetensors"):  # the same seed and pool
            shutil.copy(cache, root / "unet" / cache.name)
        for at in stops:
            monkeypatch.setattr(training.unet, "training_batch", stop_at(at))
            with pytest.raises(_Stop):
                run_stage("unet", config, root, resume=True)
        monkeypatch.setattr(training.unet, "training_batch", real_batch)
        run_stage("unet", config, root, resume=True)
        final = root / "unet" / "final" / "diffusion_pytorch_model.safetensors"
        finals[run] = load_file(str(final))
        logs[run] = {r["step"]: r["loss"] for r in LossLog(root / "unet" / "log.jsonl").read()}
    # resumed from the checkpoints at 6 and 9: the steps logged after them are logged again
    # in place of the stopped run's, once each
    assert [r["step"] for r in LossLog(tmp_path / "resumed" / "unet" / "log.jsonl").read()] == (
        list(range(11)))
    assert logs["resumed"] == logs["unbroken"]
    assert finals["resumed"].keys() == finals["unbroken"].keys()
    assert all(torch.equal(finals["resumed"][k], v) for k, v in finals["unbroken"].items())


def test_a_run_config_reads_back_and_names_only_this_recipe():
    """A config.json reads back as the config that wrote it; it may name an option this
    recipe does not have only at the value that leaves the recipe as it is."""
    config = TinyConfig.quick(seed=3)
    data = json.loads(json.dumps(config.to_dict()))
    assert TinyConfig.from_dict(data) == config
    for stage, options in NO_OP.items():
        data[stage].update(options)
    assert TinyConfig.from_dict(data) == config
    data["unet"]["end_swap"] = 0.5
    with pytest.raises(ValueError, match="unet.end_swap"):
        TinyConfig.from_dict(data)
    data["unet"].pop("end_swap")
    data["vae"]["beta"] = 1.0
    with pytest.raises(ValueError, match="vae.beta"):
        TinyConfig.from_dict(data)


def test_no_runtime_module_imports_the_training_code():
    """sdlab, the installed package, never imports training/ (which the wheel does not
    ship)."""
    importers = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            if any(n == "training" or n.startswith("training.") for n in names):
                importers.append(path.relative_to(ROOT / "src"))
    assert not importers, importers


def test_python_m_training_is_the_command():
    """The documented command runs from the repository root and refuses a folder of
    someone else's files before any work."""
    done = subprocess.run([sys.executable, "-m", "training", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Usage: python -m training" in done.stdout and "--quick" in done.stdout


def test_guidance_tune_batches_use_noisy_captions_as_t_falls():
    """Phase 1 never uses the noisy captions; the tune uses them with probability
    min(1, 2 (1 - t/1000)) and leaves out uncond_prob of the captions."""
    from training.unet import Pool, ddpm_scheduler, training_batch

    n, d = 50, 4
    pool = Pool(latents=torch.zeros(n, 4, 8, 8), states=torch.zeros(n, 77, d),
                empty=-torch.ones(1, 77, d), noisy_states=torch.ones(n, 77, d))
    scheduler = ddpm_scheduler(TinyConfig.quick().unet)
    _, t, ctx, *_ = training_batch(pool, 4000, 0, 7, 0.0, False, scheduler)
    assert (ctx == 0).all()
    _, t, ctx, *_ = training_batch(pool, 4000, 0, 7, 0.2, True, scheduler)
    kind = ctx[:, 0, 0]
    assert abs((kind == -1).float().mean().item() - 0.2) < 0.03
    kept = kind != -1
    low, high = kept & (t < 500), kept & (t >= 900)
    assert (kind[low] == 1).all()  # always noisy below t = 500
    assert 0.05 < (kind[high] == 1).float().mean().item() < 0.15  # ~2 (1 - t/1000) ~ 0.1


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
    run_stage("unet", config, tmp_path, resume=False)
    unet_dir = tmp_path / "unet"
    ema = {k[4:]: v for k, v in load_file(str(unet_dir / "ckpt" / "weights.safetensors")).items()
           if k.startswith("ema.")}
    shutil.rmtree(unet_dir / "final")  # as if stopped at the end of phase 1
    config.unet = dataclasses.replace(config.unet, calibrate_steps=3, calibrate_lr=0.0)
    run_stage("unet", config, tmp_path, resume=True)
    teacher = load_file(str(unet_dir / "teacher.safetensors"))
    assert teacher.keys() == ema.keys() and all(torch.equal(teacher[k], ema[k]) for k in ema)
    student = load_file(str(unet_dir / "final" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.allclose(student[k], teacher[k], atol=1e-6) for k in teacher)
    assert not (unet_dir / "text_cache_noisy.safetensors").exists()
    assert [r["step"] for r in LossLog(unet_dir / "log.jsonl").read()] == list(range(8))


def _quick_unet(seed: int):
    from training.unet import build_unet

    torch.manual_seed(seed)
    return build_unet(TinyConfig.quick().unet, 32)


def test_calibrated_target_is_the_teachers_guided_prediction():
    from training.unet import Batch, calibrated_batch

    teacher = _quick_unet(0).eval()
    gen = torch.Generator().manual_seed(0)
    noisy, ctx = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 77, 32, generator=gen)
    empty, t = torch.randn(1, 77, 32, generator=gen), torch.tensor([10, 500, 900])
    ctx[2] = empty[0]  # a dropped caption
    with torch.no_grad():
        eps_c = teacher(noisy, t, encoder_hidden_states=ctx).sample
        eps_u = teacher(noisy, t, encoder_hidden_states=empty.expand(3, -1, -1)).sample
    for scale in (0.0, 0.4, 1.0, 2.0):
        target = calibrated_batch(teacher, Batch(noisy, t, ctx, None), empty, scale).target
        assert torch.allclose(target, eps_u + scale * (eps_c - eps_u), atol=1e-5)
        assert torch.allclose(target[2], eps_u[2], atol=1e-5)


def test_calibration_shrinks_the_guidance_gap_to_the_scale():
    """Trained on calibrated targets, the student's cond - uncond gap becomes `scale` times
    the teacher's, so guidance g / scale on the student is guidance g on the teacher."""
    import copy

    from training.fit import optimizer_step
    from training.unet import Batch, calibrated_batch, unet_loss

    teacher = _quick_unet(0).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a teacher with a real gap between caption and no caption
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    student = copy.deepcopy(teacher).train()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    noisy, ctx = torch.randn(16, 4, 8, 8, generator=gen), torch.randn(16, 77, 32, generator=gen)
    empty, t = torch.randn(1, 77, 32, generator=gen), torch.randint(0, 1000, (16,), generator=gen)

    def gap(model) -> float:
        with torch.no_grad():
            c = model(noisy, t, encoder_hidden_states=ctx).sample
            u = model(noisy, t, encoder_hidden_states=empty.expand(16, -1, -1)).sample
        return float((c - u).norm())

    batch = calibrated_batch(teacher, Batch(noisy, t, ctx, None), empty, 0.4)
    for _ in range(60):
        optimizer_step(opt, unet_loss(student, batch), list(student.parameters()))
    ratio = gap(student) / gap(teacher)
    assert 0.25 < ratio < 0.6, ratio


_ORPHAN_SCRIPT = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
import multiprocessing
from training.workers import exit_with_parent

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
def test_stage_workers_exit_when_training_is_killed(tmp_path, mode):
    """A parallel training run's stage workers die with it (a killed run must not keep
    training beside the one that resumes it); a plain pool's worker would live on."""
    script = tmp_path / "orphan.py"
    script.write_text(_ORPHAN_SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
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


def test_a_stage_takes_the_cores_its_partner_frees(tmp_path):
    """Side by side, a stage keeps its own threads while its partner trains and takes
    threads_alone once the partner's final model is written."""
    from training.train import take_cores_when_done

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        check = take_cores_when_done(tmp_path / "vae_decoder", 2)
        check()
        assert torch.get_num_threads() == 1
        (tmp_path / "vae_decoder" / "final").mkdir(parents=True)
        (tmp_path / "vae_decoder" / "final" / "config.json").write_text("{}")
        check()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_training_noise_levels_follow_sds_share():
    """With sd_level_share 0 the timesteps are uniform; with 1 their noise levels are
    distributed as uniform timesteps give on SD's schedule, whatever the schedule; on SD's
    own schedule that is uniform again."""
    from training.config import UnetConfig
    from training.unet import SD_BETAS, ddpm_scheduler, draw_timesteps, sigmas

    def schedule(start: float, end: float):
        return ddpm_scheduler(UnetConfig(beta_start=start, beta_end=end))

    n = 200_000
    sd, low = schedule(*SD_BETAS), schedule(1e-6, 0.016)
    bins = torch.arange(0, 1001, 100)
    for s, share in ((low, 0.0), (sd, 1.0)):
        t = draw_timesteps(s, n, torch.Generator().manual_seed(0), share)
        counts = torch.histogram(t.double(), bins.double()).hist
        assert (counts / (n / 10) - 1).abs().max() < 0.03, (share, counts)
    uniform = torch.randint(0, 1000, (n,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(draw_timesteps(low, n, torch.Generator().manual_seed(0), 0.0), uniform)

    want = sigmas(sd)[uniform]
    for share in (1.0, 0.5):
        got = sigmas(low)[draw_timesteps(low, n, torch.Generator().manual_seed(1), share)]
        for level in (0.1, 0.3, 1.0, 3.0):
            expected = share * (want > level).double().mean() + (1 - share) * (
                sigmas(low)[uniform] > level).double().mean()
            assert abs((got > level).double().mean() - expected) < 0.01, (share, level)
