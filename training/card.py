"""The model card (README.md) of sdlab-tiny: `card.md` filled from the config a run used,
its loss logs, the saved folder and the benchmark's results (benchmark.json), so that every
number in it is a measured one.

    python -m training.card [FOLDER] [--workdir runs/tiny]

The run's config and a summary of its stage logs are kept beside the weights
(training.json), so the card can be rendered again from the folder alone.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from string import Template

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPVisionModelWithProjection

from sdlab.outputs import atomic_write
from sdlab.tiny import world
from sdlab.tiny.benchmark import DEFAULT_FOLDER, HELD_OUT_SHARE
from sdlab.tiny.graded import BLUE_EVERY, BLUE_RISE, Rate
from training.config import TinyConfig, UnetConfig
from training.fit import LossLog
from training.unet import SD_BETAS, ddpm_scheduler, sd_sigmas, sigmas
from training.vae import closest_palette_pair

TEMPLATE = Path(__file__).with_name("card.md")
STAGES = {"vae": "VAE", "clip": "text encoder (tiny CLIP)", "unet": "UNet, three phases",
          "vae_decoder": "VAE decoder"}
PAIRS = (("vae", "clip"), ("unet", "vae_decoder"))  # stages that run side by side
ATTRIBUTES = ("color", "background", "shape", "position", "size", "all")
# The bars of the bundled model (issue: at guidance 7.5 on unseen prompts).
BARS = {"color": 0.90, "background": 0.90, "shape": 0.80, "position": 0.80}
HELD_OUT_BAR = 0.75
LOW_GUIDANCE_GAP = 0.10  # guidance 1 must trail 7.5 by this much (mean of the four)
PSNR_BAR = 28.0


# --- typed results ------------------------------------------------------------------------


@dataclass(frozen=True)
class Accuracy:
    """The share of images the judge reads as prompted, per attribute and all five."""

    color: float
    background: float
    shape: float
    position: float
    size: float
    all: float

    @classmethod
    def of(cls, data: dict) -> Accuracy:
        return cls(**{f.name: float(data[f.name]) for f in fields(cls)})

    def mean(self, keys) -> float:
        return sum(getattr(self, k) for k in keys) / len(keys)


@dataclass(frozen=True)
class Benchmark:
    prompts: int
    steps: int
    by_guidance: dict[str, Accuracy]  # "7.5", "5.0", "3.0", "1.0"
    held_out: dict[str, Accuracy]  # the held-out share of the prompts, by guidance
    same_as_low: Accuracy  # 7.5 on the prompts that guidance 1.0 was run on
    training_wording: Accuracy
    more_held_out: Accuracy
    more_held_out_n: int
    by_template: dict[str, tuple[int, Accuracy]]
    vae_psnr_db: float
    vae_roundtrip: Accuracy
    clip_zero_shot: dict[str, float]
    seconds_per_image: float
    torch_threads: int
    graded: dict | None  # sdlab.tiny.graded.GradedResult.to_dict(), when measured

    @classmethod
    def read(cls, path: Path) -> Benchmark:
        d = json.loads(Path(path).read_text())
        more = d["guidance_7.5_more_held_out_pairs"]
        return cls(
            prompts=int(d["prompts"]), steps=int(d["steps"]),
            by_guidance={g: Accuracy.of(d[f"guidance_{g}"]) for g in ("7.5", "5.0", "3.0",
                                                                      "1.0")},
            held_out={g: Accuracy.of(d[f"guidance_{g}_held_out_pairs"])
                      for g in ("7.5", "5.0", "3.0")},
            same_as_low=Accuracy.of(d["guidance_7.5_same_prompts_as_1.0"]),
            training_wording=Accuracy.of(d["guidance_7.5_training_wording"]),
            more_held_out=Accuracy.of(more), more_held_out_n=int(more["n"]),
            by_template={t: (int(v["n"]), Accuracy.of(v))
                         for t, v in d["guidance_7.5_by_template"].items()},
            vae_psnr_db=float(d["vae_psnr_db"]),
            vae_roundtrip=Accuracy.of(d["vae_roundtrip_judge"]),
            clip_zero_shot={k: float(v) for k, v in d["clip_zero_shot"].items()},
            seconds_per_image=float(d["seconds_per_image"]),
            torch_threads=int(d["torch_threads"]), graded=d.get("graded"),
        )  # fmt: skip

    def graded_rates(self) -> list[tuple[str, Rate]]:
        """(measure, rate) for every graded bar, in the benchmark's order."""
        if not self.graded:
            return []
        out = []
        for measure in ("mix", "interpolation", "blue", "img2img"):
            for value in self.graded[measure].values():
                if isinstance(value, dict) and {"hits", "n", "bar"} <= set(value):
                    out.append((measure, Rate(**value)))
        return out


@dataclass(frozen=True)
class StageLog:
    """One stage's loss log: steps logged, wall minutes, loss at the start and the end."""

    name: str
    steps: int
    minutes: float
    first_loss: float
    last_loss: float
    psnr: float | None  # the last evaluation's round-trip PSNR (VAE stages)
    resumed: bool  # the log's clock restarted: the stage was resumed

    @classmethod
    def read(cls, name: str, stage_dir: Path) -> StageLog | None:
        records = LossLog(stage_dir / "log.jsonl").read()
        if not records:
            return None
        total, last, resumed = 0.0, 0.0, False
        for rec in records:
            if rec["time"] < last:
                total, resumed = total + last, True
            last = rec["time"]
        psnrs = [r["psnr"] for r in records if "psnr" in r]
        return cls(name, len(records), (total + last) / 60.0, records[0]["loss"],
                   records[-1]["loss"], psnrs[-1] if psnrs else None, resumed)


def read_logs(workdir: Path) -> dict[str, StageLog]:
    logs = {name: StageLog.read(name, Path(workdir) / name) for name in STAGES}
    return {k: v for k, v in logs.items() if v is not None}


TRAINING_FILE = "training.json"  # beside the weights: the run's config and stage logs


@dataclass(frozen=True)
class TrainingRecord:
    """What the card says about the run: its config (None if unknown) and stage logs."""

    config: TinyConfig | None
    logs: dict[str, StageLog]

    @classmethod
    def from_workdir(cls, workdir: Path) -> TrainingRecord:
        path = Path(workdir) / "config.json"
        config = TinyConfig.from_dict(json.loads(path.read_text())) if path.is_file() else None
        return cls(config, read_logs(workdir))

    @classmethod
    def read(cls, folder: Path) -> TrainingRecord:
        path = Path(folder) / TRAINING_FILE
        if not path.is_file():
            return cls(None, {})
        data = json.loads(path.read_text())
        config = TinyConfig.from_dict(data["config"]) if data["config"] else None
        return cls(config, {k: StageLog(**v) for k, v in data["logs"].items()})

    def to_json(self) -> str:
        return json.dumps({"config": self.config.to_dict() if self.config else None,
                           "logs": {k: asdict(v) for k, v in self.logs.items()}}, indent=2)


def end_to_end_minutes(logs: dict[str, StageLog]) -> float:
    """Each pair of side-by-side stages takes as long as its slower stage."""
    return sum(max((logs[s].minutes for s in pair if s in logs), default=0.0)
               for pair in PAIRS)


# --- tables -------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


COLOR_DRAWS = 2000


def _hue_range(hues: np.ndarray, typical: float) -> str:
    """2nd-98th percentile of hues (degrees) measured from the typical hue, the short way."""
    offsets = (hues - typical + 180.0) % 360.0 - 180.0
    lo, hi = np.percentile(offsets, [2, 98]) + typical
    return f"{lo % 360:.0f} to {hi % 360:.0f}"


def _range(values: np.ndarray) -> str:
    lo, hi = np.percentile(values, [2, 98])
    return f"{lo:.2f} to {hi:.2f}"


def color_table() -> str:
    """Each word's typical colour and the ranges its drawn colours span (seeded draws)."""
    rng = np.random.default_rng(0)
    rows = []
    for name, rgb in world.COLORS.items():
        drawn = np.array([world.hsl(world.sample_color(name, rng)) for _ in range(COLOR_DRAWS)])
        hue = ("any" if name in ("white", "black")
               else _hue_range(drawn[:, 0], world.hsl(rgb)[0]))
        rows.append([name, str(rgb), ", ".join(f"{v:.3g}" for v in world.hsl(rgb)), hue,
                     _range(drawn[:, 1]), _range(drawn[:, 2])])
    return _table(["colour word", "typical colour (RGB)", "typical HSL", "drawn hue",
                   "drawn saturation", "drawn lightness"], rows)


def _params(module: torch.nn.Module) -> str:
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.2f} M"


def architecture_table(folder: Path, vae: AutoencoderKL) -> str:
    sc = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    text = CLIPTextModel.from_pretrained(folder / "text_encoder")
    vision = CLIPVisionModelWithProjection.from_pretrained(folder / "clip")
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    tc, vc, uc = text.config, vision.config, unet.config
    close = closest_palette_pair(vae)
    return _table(["part", "class", "parameters", "notes"], [
        ["tokenizer", "CLIPTokenizer", "-", "the real CLIP BPE, 49,408 tokens, 77 max"],
        ["text encoder", "CLIPTextModel", _params(text),
         f"hidden {tc.hidden_size}, {tc.num_hidden_layers} layers, "
         f"{tc.num_attention_heads} heads"],
        ["CLIP image tower (`clip/`)", "CLIPVisionModelWithProjection", _params(vision),
         f"ViT, patch {vc.patch_size}, hidden {vc.hidden_size}, {vc.num_hidden_layers} "
         f"layers, projection {vc.projection_dim}"],
        ["VAE", "AutoencoderKL", _params(vae),
         f"channels {tuple(vae.config.block_out_channels)}, scaling_factor "
         f"{vae.config.scaling_factor:.4f}; closest typical colours {close[1]}-{close[2]}, "
         f"{close[0]:.2f} latent stds apart"],
        ["UNet", "UNet2DConditionModel", _params(unet),
         f"channels {tuple(uc.block_out_channels)}, cross-attention dim "
         f"{uc.cross_attention_dim}"],
        ["scheduler", "LMSDiscreteScheduler", "-",
         f"{sc['beta_schedule']} {sc['beta_start']:g}-{sc['beta_end']:g}, "
         f"{sc['num_train_timesteps']} steps"],
    ])  # fmt: skip


def log_table(logs: dict[str, StageLog]) -> str:
    """The stage logs as a table and the end-to-end time ("" without logs)."""
    if not logs:
        return ""
    rows = [[STAGES[k], f"{v.steps:,}", f"{v.minutes:.1f}", f"{v.first_loss:.4f}",
             f"{v.last_loss:.4f}", "-" if v.psnr is None else f"{v.psnr:.2f} dB"]
            for k, v in logs.items()]
    table = _table(["stage", "steps logged", "wall minutes", "first loss", "last loss",
                    "round trip at the end"], rows)
    return (f"{table}\n\nEnd to end, two stages side by side: "
            f"{end_to_end_minutes(logs):.0f} minutes.")


def accuracy_table(b: Benchmark) -> str:
    cols = [("guidance 7.5", b.by_guidance["7.5"]), ("held-out pairs (7.5)", b.held_out["7.5"]),
            ("training wording (7.5)", b.training_wording),
            ("guidance 5.0", b.by_guidance["5.0"]), ("guidance 3.0", b.by_guidance["3.0"]),
            ("guidance 1.0", b.by_guidance["1.0"]), ("7.5 on the same prompts as 1.0",
                                                     b.same_as_low)]
    rows = [[{"color": "shape colour", "all": "all five"}.get(k, k),
             *(_pct(getattr(a, k)) for _, a in cols)] for k in ATTRIBUTES]
    return _table(["attribute", *(c for c, _ in cols)], rows)


def template_table(b: Benchmark) -> str:
    rows = [[f"`{t}`", str(n), *(_pct(getattr(a, k)) for k in ATTRIBUTES[:5])]
            for t, (n, a) in b.by_template.items()]
    return _table(["template (guidance 7.5)", "n", "colour", "background", "shape",
                   "position", "size"], rows)


def graded_table(b: Benchmark) -> str:
    rates = b.graded_rates()
    if not rates:
        return "Not measured yet: `python -m sdlab.tiny.benchmark --graded`."
    return _table(["measure", "check", "cases passing", "bar", "met"],
                  [[m, r.name, f"{r.hits} of {r.n} ({_pct(r.rate)})", _pct(r.bar),
                    "yes" if r.met else "no"] for m, r in rates])


def bar_rows(b: Benchmark) -> list[tuple[str, str, bool]]:
    """(bar, measured, met) for every bar of the bundled model."""
    g, h = b.by_guidance["7.5"], b.held_out["7.5"]
    out = [(f"{k} at guidance 7.5 >= {_pct(v)}", _pct(getattr(g, k)), getattr(g, k) >= v)
           for k, v in BARS.items()]
    held = {k: getattr(h, k) for k in ("color", "shape")}
    out.append((f"held-out pairs at 7.5 >= {_pct(HELD_OUT_BAR)} (colour and shape)",
                ", ".join(f"{k} {_pct(v)}" for k, v in held.items()),
                min(held.values()) >= HELD_OUT_BAR))
    hi, lo = b.same_as_low.mean(list(BARS)), b.by_guidance["1.0"].mean(list(BARS))
    out.append(("guidance 1.0 clearly below 7.5 (mean of the four, same prompts)",
                f"{_pct(lo)} vs {_pct(hi)}", hi - lo >= LOW_GUIDANCE_GAP))
    out.append((f"VAE round trip >= {PSNR_BAR:g} dB", f"{b.vae_psnr_db:.2f} dB",
                b.vae_psnr_db >= PSNR_BAR))
    out += [(f"{m}: {r.name} >= {_pct(r.bar)}", _pct(r.rate), r.met)
            for m, r in b.graded_rates()]
    return out


def bars_table(b: Benchmark) -> str:
    return _table(["bar", "measured", "met"],
                  [[bar, got, "yes" if ok else "no"] for bar, got, ok in bar_rows(b)])


# --- the card -----------------------------------------------------------------------------


def provenance(config: TinyConfig | None, logs: dict[str, StageLog]) -> str:
    """What the logs show about the run that wrote the weights."""
    if config is None or set(logs) != set(STAGES):
        return "The training logs of these weights were not found."
    same = config == TinyConfig(seed=config.seed)
    unbroken = not any(log.resumed for log in logs.values())
    return ("These weights are what one " + ("unbroken " if unbroken else "resumed ")
            + f"run (seed {config.seed}) of "
            + ("this configuration" if same else "a configuration other than this one")
            + " wrote; its stage logs:")


def noise_schedule_text(uc: UnetConfig) -> dict[str, str]:
    """How the card names the noise schedule and the training timesteps of a config."""
    betas = f"scaled_linear betas {uc.beta_start:g}-{uc.beta_end:g}"
    if (uc.beta_start, uc.beta_end) == SD_BETAS:
        words = {"scheduler_betas": f"SD's {betas}", "noise_schedule": "SD's DDPM noise schedule"}
    else:
        ours = sigmas(ddpm_scheduler(uc))
        sd = sd_sigmas(len(ours))
        words = {"scheduler_betas": f"{betas}; SD's are {SD_BETAS[0]:g}-{SD_BETAS[1]:g}",
                 "noise_schedule": f"a DDPM noise schedule with {betas} (sigma "
                 f"{ours[200]:.2f} at t=200 against SD's {sd[200]:.2f}, {ours[-1]:.1f} at "
                 f"t=999 against {sd[-1]:.1f})"}
    words["timesteps"] = "uniform t" if uc.sd_level_share <= 0 else (
        f"t drawn so that {_pct(uc.sd_level_share)} of each batch have their noise levels "
        "distributed as uniform t gives on SD's schedule, the rest uniform")
    return words


def _fmt_list(values) -> str:
    return ", ".join(f"{v:g}" for v in values)


def _folder_mb(folder: Path) -> str:
    """The model folder's size without its card."""
    files = [f for f in folder.rglob("*") if f.is_file() and f.name != "README.md"]
    return f"{sum(f.stat().st_size for f in files) / 1e6:.1f}"


def render_card(folder: Path) -> str:
    folder = Path(folder)
    record = TrainingRecord.read(folder)
    config, logs = record.config or TinyConfig(), record.logs
    b = Benchmark.read(folder / "benchmark.json")
    vae = AutoencoderKL.from_pretrained(folder / "vae")
    vc, cc, uc = config.vae, config.clip, config.unet
    graded = b.graded or {}
    mix = graded.get("mix", {}).get("cases", [])
    values = {
        "size": world.IMAGE_SIZE, "shapes": ", ".join(world.SHAPES),
        "positions": ", ".join(world.POSITIONS), "position_jitter": f"{world.POSITION_JITTER:g}",
        "sizes": ", ".join(f"{k} (radius {v:g} px)" for k, v in world.SIZES.items()),
        "templates": len(world._TEMPLATES),
        "held_out": ", ".join(f"{c} {s}" for c, s in sorted(world.HELD_OUT)),
        "min_contrast": f"{world.MIN_CONTRAST:g}", "color_draws": f"{COLOR_DRAWS:,}",
        "color_table": color_table(),
        "architecture_table": architecture_table(folder, vae),
        "folder_mb": _folder_mb(folder),
        "seed": config.seed, "threads": config.threads,
        "vae_batch": vc.batch_size, "vae_steps": f"{vc.steps:,}", "l1_weight": f"{vc.l1_weight:g}",
        "kl_weight": f"{vc.kl_weight:g}", "fg_factor": f"{1 + vc.fg_weight:g}",
        "logvar_init": f"{vc.logvar_init:g}", "palette_margin": f"{vc.palette_margin:g}",
        "palette_gap": f"{vc.palette_gap:g}", "decoder_steps": f"{vc.decoder_steps:,}",
        "clip_batch": cc.batch_size, "clip_steps": f"{cc.steps:,}",
        "attr_weight": f"{cc.attr_weight:g}", "pair_additivity": f"{cc.pair_additivity:g}",
        "additivity_captions": cc.additivity_captions, "text_len": cc.text_len,
        "padding_readout": f"{cc.padding_readout:g}",
        "pool_size": f"{uc.pool_size:,}", "unet_batch": uc.batch_size,
        "ema_decay": f"{uc.ema_decay:g}", "unet_steps": f"{uc.steps:,}",
        "uncond_prob": _pct(uc.uncond_prob), "tune_steps": f"{uc.tune_steps:,}",
        "tune_uncond_prob": _pct(uc.tune_uncond_prob), "caption_noise": f"{uc.caption_noise:g}",
        "calibrate_steps": f"{uc.calibrate_steps:,}",
        "calibration_ratio": f"{uc.teacher_guidance / uc.target_guidance:.3f}",
        "target_guidance": f"{uc.target_guidance:g}",
        "teacher_guidance": f"{uc.teacher_guidance:g}",
        "mix_share": _pct(uc.mix_share), "mix_pool_size": f"{uc.mix_pool_size:,}",
        "grounding": f"{uc.grounding:g}",
        **noise_schedule_text(uc),
        "provenance": provenance(record.config, logs), "log_table": log_table(logs),
        "prompts": b.prompts, "held_prompts": int(round(b.prompts * HELD_OUT_SHARE)),
        "bench_steps": b.steps, "accuracy_table": accuracy_table(b),
        "more_held_n": b.more_held_out_n,
        "more_held": ", ".join(f"{k} {_pct(getattr(b.more_held_out, k))}"
                               for k in ATTRIBUTES[:4]),
        "vae_ceiling": ", ".join(f"{k} {_pct(getattr(b.vae_roundtrip, k))}"
                                 for k in ATTRIBUTES[:5]),
        "vae_psnr": f"{b.vae_psnr_db:.2f}",
        "clip_zero_shot": ", ".join(f"{k} {_pct(v)}" for k, v in b.clip_zero_shot.items()),
        "seconds": f"{b.seconds_per_image:.2f}", "bench_threads": b.torch_threads,
        "template_table": template_table(b),
        "graded_steps": graded.get("steps", "-"), "graded_guidance": graded.get("guidance", "-"),
        "mix_weights": _fmt_list(mix[0]["weights"]) if mix else "-",
        "mix_pairs": ", ".join(sorted({f"{c['start']} to {c['end']}" for c in mix})) or "-",
        "blue_every": BLUE_EVERY, "blue_rise": f"{BLUE_RISE:g}",
        "blue_scales": _fmt_list(graded.get("blue", {}).get("scales", [])),
        "strengths": _fmt_list(graded.get("img2img", {}).get("strengths", [])),
        "graded_table": graded_table(b), "bars_table": bars_table(b),
        "n_colors": len(world.COLORS), "n_positions": len(world.POSITIONS),
    }  # fmt: skip
    return Template(TEMPLATE.read_text()).substitute(values)


def write_card(folder: Path, workdir: Path) -> Path:
    """Keep the run's config and stage logs beside the weights, then write the card."""
    folder = Path(folder)
    record = TrainingRecord.from_workdir(workdir).to_json()
    atomic_write(folder / TRAINING_FILE, lambda tmp: tmp.write_text(record + "\n"))
    text = render_card(folder)
    atomic_write(folder / "README.md", lambda tmp: tmp.write_text(text))
    return folder / "README.md"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default=str(DEFAULT_FOLDER))
    parser.add_argument("--workdir", default="runs/tiny",
                        help="the training run's folder: config.json and the stage logs")
    args = parser.parse_args(argv)
    write_card(Path(args.folder), Path(args.workdir))


if __name__ == "__main__":
    main()
