"""The VAE and schedule instruments: encode/decode/round trip, the schedule table and
`add_noise`, through the library and the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from sdlab import vae
from sdlab.cli import main
from sdlab.models import Parts
from sdlab.schedule import SD1_SCHEDULER_CONFIG, make_scheduler, noise_to_step, schedule_table


def circle(size: int = 64) -> Image.Image:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    ImageDraw.Draw(image).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4),
                                  fill=(220, 30, 30))
    return image


def test_encode_modes_and_shapes(tiny: Parts) -> None:
    mean = vae.encode(tiny, [circle()], "mean")
    assert mean.shape == (1, 4, 8, 8)
    torch.testing.assert_close(mean, vae.encode(tiny, [circle()], "mode"))
    a = vae.encode(tiny, [circle()], "sample", torch.Generator().manual_seed(1))
    b = vae.encode(tiny, [circle()], "sample", torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, mean)


def test_roundtrip_reports_psnr_and_48x(tiny: Parts) -> None:
    result = vae.roundtrip(tiny, circle())
    assert result.compression == 48.0  # 64*64*3 / (8*8*4), SD's 512²·3 / 64²·4 alike
    decoded = vae.to_tensor([result.reconstruction])
    original = vae.to_tensor([circle()])
    expected = vae.psnr((original + 1) / 2, (decoded + 1) / 2)
    assert result.psnr == pytest.approx(expected, abs=0.05)  # the PNG rounding only


def test_psnr_of_known_error() -> None:
    a = torch.zeros(1, 3, 4, 4)
    assert vae.psnr(a, a + 0.1) == pytest.approx(20.0)


def test_schedule_table_is_the_deep_dives() -> None:
    scheduler = make_scheduler("lms", SD1_SCHEDULER_CONFIG)
    scheduler.set_timesteps(15)
    rows = schedule_table(scheduler)
    assert len(rows) == 15 and rows[0][1] == 999.0
    assert [round(r[2], 4) for r in rows[:3]] == [14.6146, 9.6826, 6.6780]
    assert round(rows[-1][2], 4) == 0.0292


def test_noise_to_step_is_latents_plus_sigma_noise() -> None:
    scheduler = make_scheduler("lms", SD1_SCHEDULER_CONFIG)
    scheduler.set_timesteps(50)
    latents, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    noisy = noise_to_step(scheduler, latents, noise, 10)
    torch.testing.assert_close(noisy, latents + scheduler.sigmas[10] * noise)


def test_cli_vae_and_schedule(tiny_folder: Path, tmp_path: Path) -> None:
    image = tmp_path / "circle.png"
    circle().save(image)
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(main, [*args, "--model", str(tiny_folder)],
                               catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    run("vae", "encode", str(image), "--out", str(tmp_path / "c.safetensors"),
        "--channels", str(tmp_path / "ch.png"))
    assert load_file(tmp_path / "c.safetensors")["latents"].shape == (1, 4, 8, 8)
    assert Image.open(tmp_path / "ch.png").size == (4 * 8 * 4, 8 * 4)  # 4 channels, x4
    run("vae", "decode", str(tmp_path / "c.safetensors"), "--out", str(tmp_path / "d.png"))
    assert Image.open(tmp_path / "d.png").size == (64, 64)
    out = run("vae", "roundtrip", str(image), "--out", str(tmp_path / "rt.png"))
    assert "compression 48x" in out and "PSNR" in out
    assert Image.open(tmp_path / "rt.png").size == (128, 64)
    table = run("schedule", "--steps", "15", "--plot", str(tmp_path / "s.png"))
    assert "14.6146" in table and "0.0292" in table
    assert Image.open(tmp_path / "s.png").size[0] > 300
    run("noise", str(image), "--step", "10", "--out", str(tmp_path / "n.png"))
    assert Image.open(tmp_path / "n.png").size == (64, 64)


def test_cli_noise_step_out_of_range(tiny_folder: Path, tmp_path: Path) -> None:
    circle().save(tmp_path / "c.png")
    result = CliRunner().invoke(main, ["noise", str(tmp_path / "c.png"), "--model",
                                       str(tiny_folder), "--step", "99", "--steps", "20",
                                       "--out", str(tmp_path / "n.png")])
    assert result.exit_code == 1 and "--step must be in 0..19" in result.output
