"""The recipe of sdlab-tiny: one dataclass per stage, and TinyConfig holding them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class VaeConfig:
    block_out_channels: tuple[int, ...] = (16, 32, 64, 64)
    layers_per_block: int = 1
    norm_num_groups: int = 8
    steps: int = 4200
    batch_size: int = 16
    lr: float = 7e-4
    warmup: int = 100
    kl_weight: float = 1e-6
    logvar_init: float = -8.0  # posterior std starts at 0.02: noise must not drown detail
    l1_weight: float = 0.1
    fg_weight: float = 4.0  # extra loss weight on and around the shape (see vae.py)
    eval_every: int = 250
    # The palette's colours pushed apart in latent space: weight of palette_margin_loss and
    # the rms distance (in latent stds) below which a pair is pushed. The closest pairs
    # (red-orange 0.38, yellow-orange 0.44, blue-purple 0.60 without it) were the UNet's
    # colour errors. A gap of 1.0 fixed them but made the blue-loss guide stop working at
    # guidance 7.5; 0.6 pushes only the close pairs and keeps it (the model card).
    palette_margin: float = 0.1
    palette_gap: float = 0.6
    # second stage: the decoder alone, on the frozen encoder's posterior means (it can
    # run beside the UNet stage, which only needs the encoder)
    decoder_steps: int = 1000
    decoder_lr: float = 3e-4
    decoder_warmup: int = 50


@dataclass
class ClipConfig:
    hidden_size: int = 64
    layers: int = 4
    heads: int = 4
    vision_hidden_size: int = 64
    vision_layers: int = 4
    projection_dim: int = 64
    # Captions are padded to 77 while training, as the pipeline pads them: the padding
    # states are what the UNet reads most, so they are trained too.
    text_len: int = 77
    steps: int = 1300
    batch_size: int = 128  # half base scenes, half siblings differing in one attribute
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 0.05
    attr_weight: float = 4.0  # weight of the attribute read-out loss (see AttributeHeads)
    filler_prob: float = 0.5  # share of captions with random filler words (see filler.py)
    # Weight of the pair-additivity loss (see clip.pair_additivity_loss) and how many
    # captions of each batch get their colour x shape square.
    pair_additivity: float = 2.0
    additivity_captions: int = 32
    # Weight of a read-out of every attribute from the padding states (AttributeHeads):
    # without it, pair additivity was had by dropping shape from the padding.
    padding_readout: float = 4.0


@dataclass
class UnetConfig:
    block_out_channels: tuple[int, ...] = (64, 128, 128)
    layers_per_block: int = 1
    attention_head_dim: int = 8
    pool_size: int = 40000
    steps: int = 2000
    batch_size: int = 64
    lr: float = 6e-4
    warmup: int = 200
    uncond_prob: float = 0.1
    # The noise schedule (scaled_linear betas), shared by training and the exported LMS
    # scheduler: less noise than SD's at small t, so that img2img's light touch keeps its
    # input (sigma 0.22 at t=200, SD's 0.57), and about the same at t=999 (14.9, 14.6).
    beta_start: float = 1e-6
    beta_end: float = 0.016
    # The share of each batch whose timesteps are drawn so that their noise levels follow
    # SD's schedule (uniform t there), the rest uniform: training keeps SD's share of the
    # noise levels that decide shape and layout.
    sd_level_share: float = 0.8
    # Phase 2, the guidance tune: `tune_steps` more steps with noisy captions and more
    # empty ones. The world's captions pin an image down exactly, so a UNet trained only on
    # clean ones learns an unbounded "classifier" p(caption | image) and guidance 7.5
    # overshoots; captions that name each attribute wrongly at `caption_noise` bound it.
    # They are used only as t falls (probability min(1, 2 (1 - t/1000)): always below
    # t=500, never at t=1000), clean ones above. The learning rate follows the tail of a
    # cosine over steps + tune_steps (a warm restart). tune_steps=0: clean captions only.
    tune_steps: int = 1400
    tune_uncond_prob: float = 0.2
    caption_noise: float = 0.2
    # Phase 3, the guidance calibration: `calibrate_steps` more steps in which the EMA
    # weights at the end of the previous phase are a frozen teacher and the conditional
    # prediction learns the teacher's eps_u + (teacher_guidance / target_guidance)
    # (eps_c - eps_u) on clean captions (the empty caption keeps the teacher's eps_u), so
    # that guidance target_guidance here is guidance teacher_guidance there. Its own
    # warmup and cosine from calibrate_lr; the student starts from the teacher's weights
    # with a fresh optimizer. 0: no calibration.
    calibrate_steps: int = 700
    teacher_guidance: float = 3.5
    target_guidance: float = 7.5
    calibrate_lr: float = 2e-4
    filler_prob: float = 0.5  # as the text encoder was trained
    # Share of every batch, in every phase, that is colour-mix samples (training/mixes.py),
    # drawn from a cached pool of mix_pool_size: what makes prompt mixes and interpolations
    # pass through the colours between their ends.
    mix_share: float = 0.25
    mix_pool_size: int = 12000
    # Weight of the token grounding loss (training/grounding.py) beside the epsilon MSE;
    # heavier weights cost colour accuracy (docs/tiny-model-notes.md).
    grounding: float = 0.03
    ema_decay: float = 0.999


@dataclass
class TinyConfig:
    seed: int = 0
    threads: int = 1
    # torch threads of a stage whose side-by-side partner has finished (parallel runs)
    threads_alone: int = 2
    parallel: bool = True  # run independent stages in two processes (VAE|CLIP, UNet|decoder)
    vae: VaeConfig = field(default_factory=VaeConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    unet: UnetConfig = field(default_factory=UnetConfig)

    @classmethod
    def quick(cls, seed: int = 0) -> TinyConfig:
        """Tiny sizes and a few steps: runs in seconds, for tests."""
        return cls(
            seed=seed,
            parallel=False,
            vae=VaeConfig(
                block_out_channels=(8, 8, 16, 16), norm_num_groups=4, steps=25,
                batch_size=8, lr=3e-3, warmup=5, eval_every=25, decoder_steps=20,
                decoder_lr=1e-3, decoder_warmup=2,
            ),
            clip=ClipConfig(
                hidden_size=32, layers=1, heads=2, vision_hidden_size=32, vision_layers=1,
                projection_dim=32, steps=25, batch_size=32, lr=2e-3, warmup=5,
            ),
            unet=UnetConfig(
                block_out_channels=(32, 32), attention_head_dim=8, pool_size=128, steps=30,
                batch_size=32, lr=2e-3, warmup=5, tune_steps=6, calibrate_steps=4,
                mix_pool_size=16,
            ),
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TinyConfig:
        """The config a run's config.json describes. Options this recipe does not have are
        accepted only at the value that leaves the recipe as it is (`NO_OP`); any other
        value describes a run this code cannot repeat, and raises ValueError."""
        subs = {"vae": VaeConfig, "clip": ClipConfig, "unet": UnetConfig}
        top = ("seed", "threads", "threads_alone", "parallel")
        kwargs: dict[str, Any] = {k: data[k] for k in top if k in data}
        for name, sub in subs.items():
            known = {f.name for f in fields(sub)}
            values = dict(data.get(name, {}))
            for key in set(values) - known:
                if key not in NO_OP.get(name, {}) or values[key] != NO_OP[name][key]:
                    raise ValueError(f"{name}.{key}={values[key]!r} is not part of this recipe")
                del values[key]
            if "block_out_channels" in values:
                values["block_out_channels"] = tuple(values["block_out_channels"])
            kwargs[name] = sub(**values)
        return cls(**kwargs)


# Options a config.json may still name, at the values under which they do nothing (the
# recipe above with them set so is the same recipe).
NO_OP: dict[str, dict[str, Any]] = {
    "clip": {"word_invariance": 0.0, "invariant_padding": False},
    "unet": {"noise_ramp": True, "partial_prob": 0.0, "phase1_share": 0.0,
             "calibrate_noisy": 0.0, "end_swap": 0.0, "snr_gamma": 0.0},
}
