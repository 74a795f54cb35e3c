"""Write examples/deep_dive.ipynb from the cells below (outputs empty).

    .venv/bin/python examples/make_notebook.py

Edit the cells here, not in the .ipynb, and re-run: the notebook is generated, with fixed
cell ids so that the file only changes where a cell does.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

OUT = Path(__file__).with_name("deep_dive.ipynb")

CELLS: list[tuple[str, str]] = []


def md(text: str) -> None:
    CELLS.append(("markdown", textwrap.dedent(text).strip()))


def code(text: str) -> None:
    CELLS.append(("code", textwrap.dedent(text).strip()))


# --------------------------------------------------------------------------------------
md("""
    # The Stable Diffusion deep dive, with sdlab

    This notebook walks through the *Stable Diffusion Deep Dive* section by section, with
    sdlab's library doing the work and every stage out in the open: the parts, the
    diffusion loop, the VAE, the scheduler, img2img, text embeddings, embedding surgery,
    the UNet's progression, and guidance by a loss.

    One set of names throughout:

    | name | what it is |
    |---|---|
    | `latents` | the (N, 4, H/8, W/8) tensor the loop denoises |
    | `eps` | noise: what an epsilon model's UNet predicts |
    | `pred` | the UNet's prediction, guided (`pred_uncond`, `pred_cond`: before guidance) |
    | `x0_pred` | the clean latents the prediction implies: `latents - sigma * eps` |
    | `sigma` | the noise level of a step, as in `latents = x0 + sigma * noise` |
    | `t` | the training timestep (0…999) the UNet is told |
    | `i` | the index of the step in the loop (0…steps-1) |

    `pred` is `eps` for epsilon models (SD v1.x, `sdlab-tiny`); a v-prediction model
    predicts v instead, and `x0_pred` is worked out from that.

    **The model.** The deep dive used SD v1.4 at 512×512. Here the default is `sdlab-tiny`,
    the small Stable Diffusion this project trains and ships: 64×64 images of one coloured
    shape on a plain background, prompted like *"a red circle on a white background"*
    (shapes: circle, square, triangle, star, cross, diamond; colours: red, green, blue,
    yellow, white, black, orange, purple). It has all of SD's parts (CLIP tokenizer and
    text encoder, VAE, UNet, LMS scheduler), only much smaller, so the whole notebook runs
    on a CPU in well under a minute. Set `MODEL` to a diffusers folder (or a hub id in
    your Hugging Face cache) to run the same cells on real SD weights (at 512×512: expect
    minutes per image on a CPU; lower `SIZE` and `STEPS` to look around faster).

    **If the bundled model is not installed**, the first cell builds a tiny *random-weight*
    model (`sdlab.random_models.build_random_model`) instead: every cell runs the same
    and every equality checked below still holds, but the pictures are noise.
""")

code("""
    MODEL = "sdlab-tiny"  # the bundled model; or a diffusers folder / a cached hub id
    SIZE = None           # image side in pixels; None: the model's native size (64 here)
    STEPS = 30            # as in the deep dive's first run
    GUIDANCE = 7.5        # as the deep dive's SD; the bundled model is best at 7.5 too
                          # (its model card), so this notebook uses its working value
    SEED = 32

    import contextlib
    import io
    import tempfile
    import warnings
    from pathlib import Path

    import numpy as np
    import torch
    from IPython.display import Image as PNG
    from IPython.display import Video, display
    from PIL import Image, ImageDraw

    warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, in Jupyter

    from sdlab.vae import side_by_side
    from sdlab.models import BUNDLED_DIR, BUNDLED_NAME, load

    WORK = Path(tempfile.mkdtemp(prefix="sdlab-deep-dive-"))  # plots and video go here
    if MODEL == BUNDLED_NAME and not (BUNDLED_DIR / "model_index.json").is_file():
        from sdlab.random_models import build_random_model

        with contextlib.redirect_stderr(io.StringIO()):  # its progress bars
            MODEL = str(build_random_model(WORK / "random-tiny"))
        print("the bundled model is not installed: using a tiny RANDOM-weight model "
              "(the numbers and checks hold; the pictures are noise)")


    def show(*images, scale=3):
        \"\"\"Images side by side, enlarged (64x64 is small on a screen).\"\"\"
        row = side_by_side([im.convert("RGB") for im in images])
        return row.resize((row.width * scale, row.height * scale), Image.Resampling.NEAREST)


    def grid(*rows, scale=2):
        \"\"\"Rows of images, one under the other, enlarged.\"\"\"
        rows = [side_by_side([im.convert("RGB") for im in row]) for row in rows]
        canvas = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)))
        for k, row in enumerate(rows):
            canvas.paste(row, (0, sum(r.height for r in rows[:k])))
        return canvas.resize((canvas.width * scale, canvas.height * scale),
                             Image.Resampling.NEAREST)


    def mean_rgb(image):
        \"\"\"The mean of each colour channel, in 0..1.\"\"\"
        return np.asarray(image.convert("RGB"), dtype=np.float32).mean(axis=(0, 1)) / 255
""")

# --------------------------------------------------------------------------------------
md("""
    ## 1. Load the parts

    Stable Diffusion is four trained parts and a schedule: the CLIP **tokenizer** and
    **text encoder** turn a prompt into conditioning states, the **VAE** maps images to
    latents and back, the **UNet** predicts the noise in latents, and the **scheduler**
    (LMS in the deep dive) decides the noise levels and takes the steps.
    `sdlab.models.load` reads them from a diffusers-layout folder, offline.
""")

code("""
    parts = load(MODEL)
    SIZE = SIZE or parts.native_size


    def n_params(module):
        return sum(p.numel() for p in module.parameters())


    cfg = parts.scheduler_config
    print(f"model         {parts.model_id}")
    print(f"tokenizer     {len(parts.tokenizer)} tokens, max length "
          f"{parts.tokenizer.model_max_length}")
    print(f"text encoder  {n_params(parts.text_encoder) / 1e6:.2f} M params, "
          f"width {parts.text_encoder.config.hidden_size}")
    print(f"VAE           {n_params(parts.vae) / 1e6:.2f} M params, "
          f"{parts.vae_scale_factor}x smaller per side, "
          f"{parts.vae.config.latent_channels} latent channels, "
          f"scaling_factor {parts.vae.config.scaling_factor:.5f}")
    print(f"UNet          {n_params(parts.unet) / 1e6:.2f} M params, native size "
          f"{parts.native_size}x{parts.native_size}")
    print(f"scheduler     betas {cfg['beta_start']}..{cfg['beta_end']} {cfg['beta_schedule']}, "
          f"{cfg['num_train_timesteps']} train steps, {parts.prediction_type} prediction")
""")

# --------------------------------------------------------------------------------------
md("""
    ## 2. The diffusion loop

    The deep dive writes the pipeline out by hand; so do we, from sdlab's pieces:

    1. **Embed the text**: tokenize the prompt to 77 ids, run the text encoder. For
       classifier-free guidance we also encode the empty prompt; the UNet sees both in one
       batch, `[uncond, cond]`.
    2. **Scheduler**: `make_scheduler("lms", ...)` builds LMS from the model's own
       scheduler config; `set_timesteps(STEPS)` picks the `t` and `sigma` of each step.
    3. **Latents**: seeded Gaussian noise (from a CPU generator, so a seed means the same
       noise on every device) times `init_noise_sigma`, the largest noise level.
    4. **The loop**: at each step `i`, scale the latents for the UNet
       (`scale_model_input`: `latents / sqrt(sigma² + 1)`), predict the noise for both
       prompts, combine them — `eps = eps_uncond + guidance * (eps_cond - eps_uncond)` —
       and let the scheduler step.
    5. **Decode** the final latents with the VAE.
""")

code("""
    from sdlab.vae import decode, to_pil
    from sdlab.sampler import initial_noise
    from sdlab.schedule import make_scheduler
    from sdlab.text import encode, tokenize

    prompt = "a red circle on a white background"

    # 1. text -> encoder states, (1, 77, d) each
    ids = tokenize(parts, prompt).ids
    text_states = encode(parts, [prompt])
    uncond_states = encode(parts, [""])
    cond = torch.cat([uncond_states, text_states])  # [uncond, cond]: (2, 77, d)

    # 2. the scheduler
    scheduler = make_scheduler("lms", parts.scheduler_config)
    scheduler.set_timesteps(STEPS)

    # 3. the starting latents: pure noise at the first sigma
    generator = torch.Generator("cpu").manual_seed(SEED)
    f = parts.vae_scale_factor
    shape = (1, parts.unet.config.in_channels, SIZE // f, SIZE // f)
    latents = initial_noise(shape, generator, parts.device, parts.dtype)
    latents = latents * scheduler.init_noise_sigma

    print("ids      ", ids[:10].tolist(), "...")
    print("cond     ", tuple(cond.shape))
    print("latents  ", tuple(latents.shape), f"std {float(latents.std()):.2f}",
          f"(init_noise_sigma {float(scheduler.init_noise_sigma):.2f})")
    print("timesteps", [int(t) for t in scheduler.timesteps[:5]], "...",
          int(scheduler.timesteps[-1]))
""")

code("""
    # 4. the loop, written out
    for i, t in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        with torch.no_grad():
            out = parts.unet(model_input, t, encoder_hidden_states=cond).sample
        eps_uncond, eps_cond = out.chunk(2)
        eps = eps_uncond + GUIDANCE * (eps_cond - eps_uncond)  # classifier-free guidance
        latents = scheduler.step(eps, t, latents).prev_sample

    # 5. decode
    image = to_pil(decode(parts, latents))[0]
    show(image)
""")

md("""
    The same run through the library: `sdlab.generate.generate` does exactly these steps.
    Its text stage is `sdlab.surgery.conditioning` (the states `cond` and `uncond`, from the
    recipe `sdlab.recipe.parse` checked); classifier-free guidance is a wrapper around the
    UNet, `sdlab.denoisers.CFGDenoiser`; its loop is `sdlab.sampler.denoise`, a generator of
    per-step records (see §8). Same prompt, seed, steps, guidance and scheduler give the
    same latents, bit for bit.
""")

code("""
    from sdlab.generate import GenerateParams, generate
    from sdlab.recipe import parse
    from sdlab.surgery import conditioning

    params = GenerateParams(prompt, steps=STEPS, guidance=GUIDANCE, seed=SEED,
                            scheduler="lms", height=SIZE, width=SIZE)
    text = conditioning(parts, parse(params))  # Conditioning(cond, uncond, tokens)
    assert torch.equal(text.cond, text_states) and torch.equal(text.uncond, uncond_states)
    plain = generate(parts, params)
    assert torch.equal(plain.latents, latents), "the loop by hand and generate() differ"
    print("hand-written loop == generate():", torch.equal(plain.latents, latents))
    show(image, plain.images[0])
""")

# --------------------------------------------------------------------------------------
md("""
    ## 3. The VAE

    The diffusion runs on latents, not pixels. The VAE's encoder maps an image to latents
    (SD: 512×512×3 → 64×64×4, each side 8× smaller, 48× fewer numbers), the decoder maps
    latents back. The latents are a lossy compressed image: decode(encode(x)) is close to
    x. sdlab's `encode` already multiplies by the VAE's `scaling_factor` (0.18215 for SD)
    and `decode` divides by it.

    We draw our own input with PIL — a red circle on white — encode it (the posterior
    mean), look at the 4 latent channels, decode it, and measure the round trip.
""")

code("""
    from sdlab.vae import channels_picture, compression, psnr, to_tensor
    from sdlab.vae import encode as vae_encode


    def draw_circle(color=(220, 40, 40), background=(245, 245, 245), size=SIZE, radius=0.3):
        \"\"\"A circle drawn at 4x and shrunk (anti-aliased), like the bundled model's world.\"\"\"
        big = Image.new("RGB", (size * 4, size * 4), background)
        c, r = size * 2, size * 4 * radius
        ImageDraw.Draw(big).ellipse((c - r, c - r, c + r, c + r), fill=color)
        return big.resize((size, size), Image.Resampling.BOX)


    red_circle = draw_circle()
    latents0 = vae_encode(parts, [red_circle], "mean")  # (1, 4, h, w), scaled
    decoded = decode(parts, latents0)  # (1, 3, H, W) in [0, 1]
    pixels = (to_tensor([red_circle]) + 1) / 2  # the original in [0, 1]

    print(f"image {tuple(pixels.shape[1:])} -> latents {tuple(latents0.shape[1:])}: "
          f"{compression(pixels, latents0):.0f}x fewer numbers")
    print(f"round trip PSNR {psnr(pixels, decoded):.1f} dB")
    print("per-channel mean", [round(float(v), 2) for v in latents0[0].mean(dim=(1, 2))],
          "std", [round(float(v), 2) for v in latents0[0].std(dim=(1, 2))])
    show(red_circle, to_pil(decoded)[0])
""")

md("""
    The 4 latent channels, each stretched to grey levels (`channels_picture`). As in the
    deep dive, the picture shows through them (with trained weights): the latents are an
    image, just a small, strange one.
""")

code("""
    show(channels_picture(latents0, scale=SIZE // latents0.shape[-1]), scale=2)
""")

# --------------------------------------------------------------------------------------
md("""
    ## 4. The scheduler

    Training adds noise of varying strength; sampling removes it step by step, following
    the same schedule. For LMS (a "variance exploding" scheduler), `sigma` is the standard
    deviation of the noise in `latents = x0 + sigma * noise`: it starts near 14.6 (so pure
    noise is scaled by ~14.6, `init_noise_sigma`) and falls to 0.

    First the deep dive's facts, with SD 1.x's published scheduler config:
    `set_timesteps(15)` gives sigmas 14.6146, 9.6826, 6.6780, … 0.0292, 0.
""")

code("""
    from sdlab.schedule import SD1_SCHEDULER_CONFIG, noise_to_step, schedule_table, step_sigma

    sd_lms = make_scheduler("lms", SD1_SCHEDULER_CONFIG)
    sd_lms.set_timesteps(15)
    sd_sigmas = [float(s) for s in sd_lms.sigmas]
    print("SD 1.x, 15 steps:", " ".join(f"{s:.4f}" for s in sd_sigmas))
    assert [round(s, 4) for s in sd_sigmas[:3]] == [14.6146, 9.6826, 6.678]
    assert round(sd_sigmas[-2], 4) == 0.0292 and sd_sigmas[-1] == 0
""")

md("""
    This model's schedule for our run, as a table `(i, t, sigma)` and a plot
    (`sdlab.viz.plot_schedule` writes a PNG).
""")

code("""
    from sdlab.viz import plot_schedule

    scheduler = make_scheduler("lms", parts.scheduler_config)
    scheduler.set_timesteps(STEPS)
    rows = schedule_table(scheduler)
    for i, t, sigma in rows[:4] + rows[-3:]:
        print(f"i={i:2d}  t={t:7.2f}  sigma={sigma:8.4f}")
    display(PNG(filename=plot_schedule(rows, f"LMS, {STEPS} steps", WORK / "schedule.png")))
""")

md("""
    **Noising an image to step `i`.** The scheduler's `add_noise` puts an encoded image
    where the loop would be after `i` steps; for LMS that is just
    `latents0 + sigma_i * noise` (checked below). Decoded, left to right: step 0 (the most
    noise, what the loop starts from) to the last step (almost none).
""")

code("""
    noise = torch.randn(latents0.shape, generator=torch.Generator().manual_seed(0))
    picks = [0, STEPS // 4, STEPS // 2, 3 * STEPS // 4, STEPS - 1]
    noised = []
    for i in picks:
        x = noise_to_step(scheduler, latents0, noise, i)  # scheduler.add_noise at t_i
        sigma = step_sigma(scheduler, i, scheduler.timesteps[i])
        assert torch.allclose(x, latents0 + sigma * noise, atol=1e-5)
        print(f"i={i:2d}  sigma={float(sigma):7.3f}")
        noised.append(x)
    show(*to_pil(decode(parts, torch.cat(noised))))
""")

# --------------------------------------------------------------------------------------
md("""
    ## 5. img2img

    Instead of starting from pure noise, start from a real image noised to a start step
    (`add_noise` as above) and run only the remaining steps. The deep dive started at
    step 10 of 50 with guidance 8; a later start keeps more of the input. `strength_for`
    turns a start step into diffusers' `strength`. We ask for a *blue* circle, starting
    from our red one.
""")

code("""
    from sdlab.img2img import Img2ImgParams, img2img, strength_for

    outputs = []
    for start in (STEPS // 5, STEPS // 2):
        p = Img2ImgParams("a blue circle on a white background", steps=STEPS, guidance=8.0,
                          seed=SEED, strength=strength_for(start, STEPS))
        assert p.start_step() == start
        outputs.append(img2img(parts, p, red_circle).images[0])
        print(f"start step {start} of {STEPS} (strength {p.strength:.2f}): "
              f"mean RGB {np.round(mean_rgb(outputs[-1]), 2)}")
    show(red_circle, *outputs)
""")

# --------------------------------------------------------------------------------------
md("""
    ## 6. Text embeddings

    The tokenizer turns the prompt into ids (`<|startoftext|>`, the words, `<|endoftext|>`,
    then padding to 77). The text encoder then looks up each id in its **token embedding**
    table (vocab × d; SD: 49408 × 768), adds a **position embedding** (77 × d) for each
    place, and runs its transformer layers (under a causal mask) and a final layer norm.
    sdlab's `encode_embeddings` is that encoder run by hand from the token embeddings —
    the path embedding surgery (§7) goes through.
""")

code("""
    import matplotlib.pyplot as plt

    from sdlab.text import (
        encode_embeddings,
        position_embedding_table,
        text_model,
        token_embedding_table,
        token_embeddings,
        token_rows,
    )
    from sdlab.viz import save_figure

    for row in token_rows(parts.tokenizer, prompt):
        print(f"{row.position:3d}  {row.id:6d}  {row.token}")

    # the deep dive's check of the real CLIP vocabulary
    puppy = [r.id for r in token_rows(parts.tokenizer, "A picture of a puppy")]
    print("'A picture of a puppy' ->", puppy)
    if len(parts.tokenizer) == 49408:
        assert puppy == [49406, 320, 1674, 539, 320, 6829, 49407]
""")

code("""
    tok_table = token_embedding_table(parts)  # (vocab, d)
    pos_table = position_embedding_table(parts)  # (77, d)
    print("token embedding table   ", tuple(tok_table.shape))
    print("position embedding table", tuple(pos_table.shape))

    # a token embedding is a row look-up
    red_id = parts.tokenizer.convert_tokens_to_ids("red</w>")
    with torch.no_grad():
        looked_up = text_model(parts).embeddings.token_embedding(torch.tensor([red_id]))[0]
    assert torch.equal(looked_up, tok_table[red_id])
    print(f"'red' is id {red_id}; its embedding starts", looked_up[:4].tolist())

    # the whole prompt: token embeddings + position embeddings
    tok_embeds = token_embeddings(parts, ids[None])  # (1, 77, d)
    input_embeds = tok_embeds + pos_table[None]  # what the transformer layers see
    with torch.no_grad():
        theirs = text_model(parts).embeddings(input_ids=ids[None])
    assert torch.allclose(input_embeds, theirs, atol=1e-6)

    # the encoder by hand vs the text encoder
    by_hand = encode_embeddings(parts, tok_embeds, ids[None])
    diff = float((by_hand - text_states).abs().max())
    print(f"by-hand encoder vs text encoder: max |diff| = {diff:.2e}")
    assert diff < 1e-5

    # the first 12 positions of each, as pictures (rows: positions, columns: dimensions)
    fig, axes = plt.subplots(1, 4, figsize=(12, 2.8))
    for ax, (name, x) in zip(axes, [("token embeddings", tok_embeds[0]),
                                    ("position embeddings", pos_table),
                                    ("their sum", input_embeds[0]),
                                    ("text encoder output", text_states[0])],
                                   strict=True):
        ax.imshow(x[:12].detach().float().numpy(), aspect="auto", cmap="coolwarm")
        ax.set(title=name, xlabel="dimension", ylabel="position")
    fig.tight_layout()
    display(PNG(filename=save_figure(fig, WORK / "embeddings.png")))
""")

# --------------------------------------------------------------------------------------
md("""
    ## 7. Embedding surgery and prompt mixing

    **Swap a token.** The deep dive replaced *puppy*'s token embedding by *skunk*'s and got a
    skunk. Here we put *blue*'s embedding where *red*'s was — by hand first, then with the
    library's recipe setting `swap=("red=blue",)` (which never changes the loaded model:
    the edit goes into a copy and through the by-hand encoder).
""")

code("""
    from sdlab.recipe import parse_swap
    from sdlab.surgery import prompt_states, prompt_tokens, resolve_swap

    blue_id = parts.tokenizer.convert_tokens_to_ids("blue</w>")
    edited = tok_embeds.clone()
    edited[0, ids == red_id] = tok_table[blue_id]
    swapped_states = encode_embeddings(parts, edited, ids[None])

    swaps = [resolve_swap(parts, parse_swap("red=blue"))]  # [(red's id, blue's id)]
    assert torch.allclose(prompt_states(parts, prompt_tokens(parts, prompt), swaps),
                          swapped_states, atol=1e-6)

    swapped = generate(parts, GenerateParams(prompt, steps=STEPS, guidance=GUIDANCE, seed=SEED,
                                             height=SIZE, width=SIZE, swap=("red=blue",)))
    blue_prompt = generate(parts, GenerateParams("a blue circle on a white background",
                                                 steps=STEPS, guidance=GUIDANCE, seed=SEED,
                                                 height=SIZE, width=SIZE))
    for name, im in [("red", plain.images[0]), ("red->blue swap", swapped.images[0]),
                     ("blue prompt", blue_prompt.images[0])]:
        print(f"{name:15s} mean RGB {np.round(mean_rgb(im), 2)}")
    show(plain.images[0], swapped.images[0], blue_prompt.images[0])
""")

md("""
    **Mix two prompts.** The deep dive mixed *"A mouse"* and *"A leopard"* (0.35 / 0.65) by
    summing the encoder *outputs* with weights. `mix=("PROMPT:W", ...)` does that; here
    0.5 / 0.5 of a red circle and a blue square (the sum is checked by hand).
""")

code("""
    a, b = "a red circle on a white background", "a blue square on a white background"
    mix = (f"{a}:0.5", f"{b}:0.5")
    mix_params = GenerateParams("", steps=STEPS, guidance=GUIDANCE, seed=SEED,
                                height=SIZE, width=SIZE, mix=mix)
    mixed_cond = conditioning(parts, parse(mix_params)).cond
    assert torch.allclose(mixed_cond, 0.5 * encode(parts, [a]) + 0.5 * encode(parts, [b]),
                          atol=1e-6)
    mixed = generate(parts, mix_params)
    show(mixed.images[0])
""")

md("""
    **Interpolate.** Same seed, the conditioning slid from one prompt to the other
    (`interpolation_mixes` gives each frame's weights; `sdlab interpolate` makes a video
    of it).
""")

code("""
    from sdlab.surgery import interpolation_mixes

    frames = []
    for weights in interpolation_mixes(a, b, 5):
        print(weights[0].rsplit(":", 1)[1][:4], "/", weights[1].rsplit(":", 1)[1][:4])
        run = generate(parts, GenerateParams("", steps=STEPS, guidance=GUIDANCE, seed=SEED,
                                             height=SIZE, width=SIZE, mix=weights))
        frames.append(run.images[0])
    show(*frames)
""")

# --------------------------------------------------------------------------------------
md("""
    ## 8. The UNet, step by step

    Given noisy `latents` at level `sigma` (timestep `t`) and the text states, the UNet
    predicts the noise `eps`. Subtracting all of it gives the predicted clean latents,
    `x0_pred = latents - sigma * eps`; the scheduler only moves part of the way there, then
    asks again. `sdlab.sampler.predict` does one such evaluation of a denoiser — here the
    UNet wrapped with classifier-free guidance, `CFGDenoiser` — and returns a `StepRecord`:
    `i`, `t`, `sigma`, `latents`, `pred_uncond`, `pred_cond`, `pred`, `x0_pred`. For an
    epsilon model like this one, `pred` is `eps`.
""")

code("""
    from sdlab.denoisers import CFGDenoiser
    from sdlab.sampler import predict

    scheduler = make_scheduler("lms", parts.scheduler_config)
    scheduler.set_timesteps(STEPS)
    start = initial_noise(shape, torch.Generator("cpu").manual_seed(SEED), parts.device,
                          parts.dtype) * scheduler.init_noise_sigma
    model = CFGDenoiser(parts.unet, uncond_states, text_states, GUIDANCE)
    record = predict(model, scheduler, start, 0, scheduler.timesteps[0],
                     parts.prediction_type)
    if parts.prediction_type == "epsilon":  # pred is eps
        assert torch.allclose(record.x0_pred, record.latents - record.sigma * record.pred,
                              atol=1e-4)
    assert torch.allclose(
        record.pred, record.pred_uncond + GUIDANCE * (record.pred_cond - record.pred_uncond))
    print(f"i={record.i} t={float(record.t):.1f} sigma={float(record.sigma):.3f}")
    for name in ("latents", "pred_uncond", "pred_cond", "pred", "x0_pred"):
        print(f"  {name:10s} std {float(getattr(record, name).std()):7.3f}")
    show(*to_pil(decode(parts, torch.cat([record.latents, record.x0_pred]))))
""")

md("""
    **The progression.** The loop itself is `sdlab.sampler.denoise`, a generator of one
    `StepRecord` per step; callbacks see each record before the scheduler step.
    `generate_steps(parts, params, callbacks)` yields a recipe's records (`generate` keeps
    only the last, and decodes it).
    `VideoFrames` is such a callback: it decodes the current `latents` (left) and the
    `x0_pred` (right) of every step — the deep dive's video — and `write_video` writes the
    MP4. In the deep dive the left side stays noisy until the last steps (the scheduler
    removes only part of the noise each step) while the right side settles early.
""")

code("""
    from sdlab.generate import generate_steps
    from sdlab.preview import decoder_for
    from sdlab.trace import VideoFrames, to_trace, write_video
    from sdlab.viz import trace_plots

    video = VideoFrames(decoder_for(parts, "full"))  # "approx": a cheap linear preview
    records = list(generate_steps(parts, params, [video]))
    assert torch.equal(records[-1].next_latents, plain.latents)  # watching changes nothing

    mp4 = write_video(video.frames, WORK / "progression.mp4", fps=6)
    print(f"{len(video.frames)} frames -> {mp4} ({mp4.stat().st_size // 1024} KB)")
    display(Video(str(mp4), embed=True, width=2 * SIZE * 3,
                  html_attributes="controls loop autoplay muted"))
    # every few steps: latents (top) and x0_pred (bottom), decoded
    picks = [r for r in records if r.i % (STEPS // 5) == 0] + [records[-1]]
    grid(to_pil(decode(parts, torch.cat([r.latents for r in picks]))),
         to_pil(decode(parts, torch.cat([r.x0_pred for r in picks]))))
""")

md("""
    The records as numbers: `to_trace` stacks them (`sdlab generate --trace FILE` saves
    the same to a file), and `trace_plots` draws `sigma` and the spread of `latents` and
    `x0_pred` per step.
""")

code("""
    trace = to_trace(records, {"prompt": prompt})
    print({k: tuple(v.shape) for k, v in trace.tensors.items()})
    for path in trace_plots(trace, WORK):
        display(PNG(filename=path))
""")

# --------------------------------------------------------------------------------------
md("""
    ## 9. Guidance by a loss

    The deep dive's last trick: every few steps, decode the predicted `x0_pred`, score the
    image with a differentiable loss, and move the `latents` down the loss's gradient:

        x0_pred = latents - sigma * eps          # a function of latents
        loss    = scale * blue_loss(decode(x0_pred))
        latents = latents - grad(loss, latents) * sigma**2

    with `blue_loss(images) = abs(images[:, 2] - 0.9).mean()` (make the blue channel 0.9).
    `LossGuidance` is a sampler callback that does exactly this (recipe form:
    `GenerateParams(..., guide=("blue:SCALE",), guide_every=5)`, or `--guide blue:SCALE`
    on the command line). The deep dive used scale 200 every 5 steps at 512×512 with SD's
    VAE. We keep *every 5* and adapt the scale: the loss is a mean over pixels, so at
    64×64 each latent cell's share of it is (512/64)² = 64× larger; and the gradient
    reaches the latents through `decode`, which first divides them by the VAE's
    `scaling_factor` (0.18215 for SD; larger for `sdlab-tiny`, whose latents are bigger
    numbers for the same image). So the same push takes
    `200 × (SIZE/512)² × scaling_factor/0.18215` — 200 again for SD at 512×512.
""")

code("""
    from sdlab.guidance import LossGuidance, blue_loss
    from sdlab.viz import plot_series

    BLUE_EVERY = 5
    BLUE_SCALE = 200 * (SIZE / 512) ** 2 * parts.vae.config.scaling_factor / 0.18215
    print(f"blue loss scale {BLUE_SCALE:.1f}, every {BLUE_EVERY} steps")

    blue = LossGuidance(blue_loss, BLUE_SCALE, decoder_for(parts, "full"), every=BLUE_EVERY,
                        name="blue")
    guided = generate(parts, params, callbacks=[blue])
    for name, im in [("without", plain.images[0]), ("with blue loss", guided.images[0])]:
        print(f"{name:15s} mean blue {mean_rgb(im)[2]:.3f}")
    print("loss at steps", [(i, round(v, 3)) for i, v in blue.losses])
    display(PNG(filename=plot_series([i for i, _ in blue.losses],
                                     {"blue loss": [v for _, v in blue.losses]},
                                     "loss", WORK / "blue-loss.png")))
    show(plain.images[0], guided.images[0])
""")

md("""
    ## Where next

    Everything here is also a command: `sdlab generate` (with `--swap`, `--mix`,
    `--guide blue:200`, `--video`, `--trace`, `--save-latents`), `sdlab img2img`,
    `sdlab vae roundtrip`, `sdlab schedule`, `sdlab noise`, `sdlab tokens`, `sdlab embed`,
    `sdlab interpolate`, `sdlab trace show`. Point `MODEL` at real SD weights to see the
    deep dive's own pictures.
""")


def build() -> nbformat.NotebookNode:
    cells = []
    for k, (kind, text) in enumerate(CELLS):
        cell = new_markdown_cell(text) if kind == "markdown" else new_code_cell(text)
        cell.id = f"cell-{k:02d}"
        cells.append(cell)
    nb = new_notebook(cells=cells)
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    nbformat.validate(nb)
    return nb


def main() -> int:
    nbformat.write(build(), OUT)
    print(f"wrote {OUT} ({len(CELLS)} cells)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
