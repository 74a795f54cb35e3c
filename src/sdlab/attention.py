"""Cross-attention maps: where each word of the prompt acts, at every step.

`AttentionRecorder` is a sampler callback. For the length of a run (`begin` to `end`) it
sets an attention processor on every cross-attention layer (`attn2`) of the UNet; each
processor returns exactly what the layer's stock processor returns (it calls it, so the
image does not change by a bit) and beside it computes softmax(Q Kᵀ · scale) with the
layer's own projections and scale, for image 0 of the conditional half of the batch,
averaged over the heads. `end` puts the stock processors back, so the loaded model is
unchanged after a run (also after an error).

Maps are aggregated as DAAM does (Tang et al. 2022, arXiv 2210.04885): each layer's map is
upsampled to a common grid and the layers are averaged; the steps of a chosen range are
summed as the run goes, so memory holds one (tokens, h, w) map, not every layer's map for
every token and step. Per-step maps (steps, tokens, h, w) are kept only when asked
(`per_step=True`, for traces). `maps()` normalises each token's map to sum 1.

The default sums every cross-attention layer (`blocks` down, mid and up) at every step,
each layer upsampled bilinearly to the latent grid (h, w) = image size / VAE factor;
`upsample` takes the result to the image size. `upsampling="bicubic"` takes each layer's
map bicubically to the image size instead (clamped at 0), as the DAAM paper does; `blocks`
keeps some blocks only. On the bundled model (benchmarks/bench_attention.py) the up
blocks alone did best on the development prompts but worse than all layers on the test
prompts, a later step range did worse on both, and bicubic upsampling moved the shares by
about one prompt in a hundred, so the default is DAAM's.

Token entries: the prompt's positions in order, from <|startoftext|> to the first
<|endoftext|> (both kept), then one last entry holding the padding positions summed.
Before normalisation each pixel's entries sum to 1 (a softmax over all 77 positions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from diffusers import UNet2DConditionModel
from PIL import Image, ImageDraw, ImageFont

from sdlab.errors import SdlabError
from sdlab.models import Parts
from sdlab.recipe import GenerateParams, Recipe, as_recipe
from sdlab.surgery import (
    LearnedEmbedding,
    PromptTokens,
    load_embeddings,
    prompt_tokens,
    resolve_swap,
)

PADDING = "<padding>"
BLOCKS = ("down", "mid", "up")  # the UNet's blocks with cross-attention layers
UPSAMPLING = ("bilinear", "bicubic")
DEFAULT_BLOCKS = BLOCKS  # the aggregation's defaults (benchmarks/bench_attention.py)
DEFAULT_UPSAMPLING = "bilinear"
CROSS_ATTENTION = "attn2.processor"  # the cross-attention layers' processor names end so


# --- which token each map belongs to ----------------------------------------------------


@dataclass(frozen=True)
class AttentionTokens:
    """The labels of the map entries: one per prompt position from the start token to the
    end token, then PADDING (the padding positions summed into one entry)."""

    labels: tuple[str, ...]

    @property
    def count(self) -> int:
        """Prompt positions kept one by one (start and end tokens included)."""
        return len(self.labels) - 1

    def index(self, word: str) -> int:
        """The first entry whose label is `word` (case-insensitive); a swapped position
        ('puppy→skunk') answers to either word, a mixed one ('mouse|leopard') to any part."""
        wanted = word.strip().lower()
        for k, label in enumerate(self.labels):
            if wanted in {label.lower(), *label.lower().replace("→", "|").split("|")}:
                return k
        shown = " ".join(self.labels)
        raise SdlabError(f"'{word}' is not a token of the prompt ({shown}): name one of these")

    def select(self, words: Sequence[str]) -> list[int]:
        """Entry indices of the words, in the order given (all entries when none)."""
        return [self.index(w) for w in words] if words else list(range(len(self.labels)))


def attention_tokens(parts: Parts, settings: Recipe | GenerateParams) -> AttentionTokens:
    """Labels for a run's conditional prompt with its text edits.

    Labels are the tokenizer's strings without the end-of-word mark `</w>`. A swapped
    position shows both words, 'puppy→skunk' (the prompt's word, then the embedding it
    got); a learned embedding's positions show its token ('<cat-toy>', or '<cat-toy>[k]'
    for the k-th of several vectors). With a mix the conditioning at position k is the
    weighted sum of every mixed prompt's states at k, so its label joins those prompts'
    tokens at k with '|' in --mix order (a token shared by all is shown once, e.g. 'a',
    'mouse|leopard'); positions run to the longest prompt's end token.
    """
    recipe = as_recipe(settings)
    learned = load_embeddings(parts, recipe.embeddings)
    swaps = [resolve_swap(parts, s) for s in recipe.swaps]
    columns = [_prompt_labels(parts, prompt_tokens(parts, term.prompt, learned), swaps, learned)
               for term in recipe.terms]
    pad = _clean(parts.tokenizer.convert_ids_to_tokens(parts.tokenizer.pad_token_id))
    count = max(len(c) for c in columns)
    labels = ["|".join(dict.fromkeys(c[k] if k < len(c) else pad for c in columns))
              for k in range(count)]
    return AttentionTokens((*labels, PADDING))


def _prompt_labels(parts: Parts, prompt: PromptTokens, swaps: Sequence[tuple[int, int]],
                   learned: Sequence[LearnedEmbedding]) -> list[str]:
    """Labels of one prompt's positions, start token to end token, as the edits made them
    (the positions `sdlab.surgery.edited_embeddings` writes)."""
    tok = parts.tokenizer
    ids = prompt.tokens.ids.tolist()
    end = ids.index(tok.eos_token_id) + 1
    labels = [_clean(t) for t in tok.convert_ids_to_tokens(ids[:end])]
    is_learned = [False] * end
    for start, index in prompt.slots:
        n = learned[index].vectors.shape[0]
        for j in range(min(n, end - 1 - start)):
            name = learned[index].token
            labels[start + j] = name if n == 1 else f"{name}[{j}]"
            is_learned[start + j] = True
    for old_id, new_id in swaps:  # as edited_embeddings: the prompt's words, not learned
        swapped = f"{_clean(tok.convert_ids_to_tokens(old_id))}→" \
                  f"{_clean(tok.convert_ids_to_tokens(new_id))}"
        for k in range(1, end - 1):
            if ids[k] == old_id and not is_learned[k]:
                labels[k] = swapped
    return labels


def _clean(token: str) -> str:
    return token.removesuffix("</w>")


def parse_steps_range(text: str) -> tuple[int, int | None]:
    """'a:b' -> (a, b): the loop's step indices a <= i < b ('a:' runs to the end, ':b'
    starts at 0), as `record.i` counts them."""
    first, sep, last = text.partition(":")
    try:
        start = int(first) if first.strip() else 0
        stop = int(last) if last.strip() else None
    except ValueError:
        start, stop, sep = -1, None, ""
    if not sep or start < 0 or (stop is not None and stop <= start):
        raise SdlabError(f"--steps-range '{text}' is not A:B with 0 <= A < B "
                         "(e.g. 0:10, or 5: for step 5 to the end)")
    return start, stop


# --- the recorder ------------------------------------------------------------------------


class _RecordingProcessor:
    """An attention processor that gives the stock processor's output unchanged and hands
    the head-averaged attention probabilities of one batch row to the recorder."""

    def __init__(self, stock: Any, recorder: AttentionRecorder, name: str) -> None:
        self.stock = stock
        self.recorder = recorder
        self.name = name

    def __call__(self, attn: Any, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        if encoder_hidden_states is not None:
            with torch.no_grad():
                probs = attention_probs(attn, hidden_states, encoder_hidden_states,
                                        attention_mask, temb, self.recorder.row(hidden_states))
            self.recorder.add_layer(probs.float().mean(0), self.name)
        return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb,
                          *args, **kwargs)


def attention_probs(attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                    attention_mask: torch.Tensor | None, temb: torch.Tensor | None,
                    row: int) -> torch.Tensor:
    """softmax(Q Kᵀ · attn.scale) of batch row `row`, per head: (heads, queries, keys).
    The same preparation as diffusers' AttnProcessor2_0 (norms, projections), and the
    layer's own `get_attention_scores` (its scale and upcasting)."""
    batch = hidden_states.shape[0]
    x = hidden_states[row : row + 1]
    if attn.spatial_norm is not None:
        x = attn.spatial_norm(x, temb[row : row + 1] if temb is not None else None)
    if x.ndim == 4:  # (1, C, H, W) -> (1, HW, C)
        x = x.flatten(2).transpose(1, 2)
    if attn.group_norm is not None:
        x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
    context = encoder_hidden_states[row : row + 1]
    if attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    query, key = attn.to_q(x), attn.to_k(context)  # (1, HW, inner), (1, L, inner)
    head_dim = key.shape[-1] // attn.heads
    query = query.view(1, -1, attn.heads, head_dim).transpose(1, 2)  # (1, heads, HW, d)
    key = key.view(1, -1, attn.heads, head_dim).transpose(1, 2)  # (1, heads, L, d)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    mask = None
    if attention_mask is not None:
        mask = attn.prepare_attention_mask(attention_mask, key.shape[2], batch)
        mask = mask[row * attn.heads : (row + 1) * attn.heads]
    return attn.get_attention_scores(query[0], key[0], mask)  # (heads, HW, L)


class AttentionRecorder:
    """A sampler callback that records the UNet's cross-attention maps of a run.

    `tokens`: the entries' labels (`attention_tokens`); `images`: the run's batch N. The
    UNet batch is `[uncond × N, cond × N]` with classifier-free guidance and `[cond × N]`
    without (also per step, as guidance truncation switches), so the conditional half
    starts at row B - N of a batch of B; maps are of its image 0. `steps`: (a, b) sums
    steps a <= i < b into `maps()` (b None: to the end; None: every step). `per_step`:
    also keep each step's map for `step_maps()`.
    """

    def __init__(self, unet: UNet2DConditionModel, tokens: AttentionTokens, images: int = 1,
                 *, steps: tuple[int, int | None] | None = None, per_step: bool = False,
                 blocks: Sequence[str] = DEFAULT_BLOCKS,
                 upsampling: str = DEFAULT_UPSAMPLING,
                 scale: int = 1) -> None:
        self.unet = unet
        self.tokens = tokens
        self.images = images
        self.steps = steps
        self.per_step = per_step
        self.blocks = parse_blocks(blocks)
        if upsampling not in UPSAMPLING:
            raise SdlabError(f"upsampling '{upsampling}' is not one of {', '.join(UPSAMPLING)}")
        self.upsampling = upsampling
        self.scale = scale
        self.layers: list[str] = []
        self._stock: dict[str, Any] | None = None
        self._hook: Any = None
        self._grid: tuple[int, int] = (0, 0)  # the latent grid (h, w) of the UNet's input
        self._reset()

    @classmethod
    def for_run(cls, parts: Parts, settings: Recipe | GenerateParams,
                **options: Any) -> AttentionRecorder:
        """A recorder for a run: its prompt's labels with the text edits, and its batch,
        from the recipe; bicubic maps are at the image size (the VAE factor's `scale`)."""
        recipe = as_recipe(settings)
        if options.get("upsampling", DEFAULT_UPSAMPLING) == "bicubic":
            options.setdefault("scale", parts.vae_scale_factor)
        return cls(parts.unet, attention_tokens(parts, recipe), recipe.params.batch, **options)

    def _reset(self) -> None:
        self._step: torch.Tensor | None = None  # this step's layers, summed: (T, h, w)
        self._step_layers = 0
        self._sum: torch.Tensor | None = None  # the chosen steps, summed: (T, h, w)
        self._maps: list[torch.Tensor] = []
        self.step_indices: list[int] = []  # record.i of each kept per-step map
        self.summed_steps: list[int] = []  # record.i of each step summed into maps()

    # --- the callback protocol ---

    def begin(self, total_steps: int) -> None:
        """Install the recording processors on the cross-attention layers."""
        if self._stock is not None:
            raise SdlabError("this attention recorder is already recording a run")
        self._reset()
        stock = dict(self.unet.attn_processors)
        self.layers = [name for name in stock if name.endswith(CROSS_ATTENTION)]
        if not self.layers:
            raise SdlabError("this UNet has no cross-attention layers to record")
        wrapped = {name: _RecordingProcessor(p, self, name) if name in self.layers else p
                   for name, p in stock.items()}
        self._hook = self.unet.register_forward_pre_hook(self._see_input, with_kwargs=True)
        self._stock = stock
        try:
            self.unet.set_attn_processor(dict(wrapped))
        except Exception:
            self.end()
            raise

    def __call__(self, record: Any) -> None:
        """Close the step: average its layers, add it to the sum if it is in the range."""
        if self._step is None:
            return
        if record.latents.shape[0] != self.images:
            raise SdlabError(f"the attention recorder was made for {self.images} images a "
                             f"batch, but the run has {record.latents.shape[0]}")
        step = self._step / self._step_layers  # (T, h, w), the mean over layers
        if self._in_range(record.i):
            self._sum = step.clone() if self._sum is None else self._sum + step
            self.summed_steps.append(int(record.i))
        if self.per_step:
            self._maps.append(step)
            self.step_indices.append(int(record.i))
        self._step, self._step_layers = None, 0

    def end(self) -> None:
        """Put the stock processors back and drop the input hook."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._stock is not None:
            self.unet.set_attn_processor(dict(self._stock))
            self._stock = None

    # --- what the processors call ---

    def _see_input(self, module: Any, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]  # (B, C, h, w)
        self._grid = (int(sample.shape[-2]), int(sample.shape[-1]))

    def row(self, hidden_states: torch.Tensor) -> int:
        """The batch row of image 0 of the conditional half."""
        batch = hidden_states.shape[0]
        if batch not in (self.images, 2 * self.images):
            raise SdlabError(f"the attention recorder was made for {self.images} images a "
                             f"batch, but the UNet batch is {batch}")
        return batch - self.images

    def add_layer(self, probs: torch.Tensor, name: str = "") -> None:
        """probs (HW, L) of the layer `name` -> token entries on the maps' grid, added to
        the step (layers outside the chosen blocks are left out)."""
        if name and block_of(name) not in self.blocks:
            return
        maps = layer_maps(self.entries(probs), self._grid, self.map_grid, self.upsampling)
        self._step = maps if self._step is None else self._step + maps
        self._step_layers += 1

    def entries(self, probs: torch.Tensor) -> torch.Tensor:
        """probs (HW, L) -> (T, HW): the prompt's positions, then the padding summed."""
        count = self.tokens.count
        if probs.shape[1] < count:
            raise SdlabError(f"the prompt has {count} positions but the conditioning only "
                             f"{probs.shape[1]}")
        return torch.cat([probs[:, :count], probs[:, count:].sum(1, keepdim=True)], 1).T

    @property
    def map_grid(self) -> tuple[int, int]:
        """The (rows, cols) of the maps: the latent grid times `scale`."""
        return self._grid[0] * self.scale, self._grid[1] * self.scale

    def _in_range(self, i: int) -> bool:
        if self.steps is None:
            return True
        start, stop = self.steps
        return i >= start and (stop is None or i < stop)

    # --- results ---

    def maps(self, normalise: bool = True) -> torch.Tensor:
        """(tokens, h, w) on the latent grid: the chosen steps summed; with `normalise`
        each token's map divided by its sum (a distribution over the pixels)."""
        if self._sum is None:
            chosen = "" if self.steps is None else f" in --steps-range {_show(self.steps)}"
            raise SdlabError(f"no step{chosen} was recorded: pick a range inside the run's "
                             "steps")
        return normalise_maps(self._sum) if normalise else self._sum.clone()

    def step_maps(self) -> torch.Tensor:
        """(steps, tokens, h, w): each step's map (mean over layers, not normalised; each
        pixel's entries sum to 1), in the order of `step_indices`."""
        if not self.per_step:
            raise SdlabError("per-step maps were not kept: make the recorder with "
                             "per_step=True")
        if not self._maps:
            h, w = self.map_grid
            return torch.zeros(0, len(self.tokens.labels), h, w)
        return torch.stack(self._maps)


def block_of(layer: str) -> str:
    """'down', 'mid' or 'up': the UNet block a processor name ('up_blocks.1.…') is in."""
    return layer.split(".", 1)[0].split("_", 1)[0]


def parse_blocks(blocks: Sequence[str] | str) -> tuple[str, ...]:
    """'down,up' or ('down', 'up') -> ('down', 'up'); 'all' -> every block."""
    names = blocks.split(",") if isinstance(blocks, str) else list(blocks)
    names = [n.strip().lower() for n in names if n.strip()]
    chosen = BLOCKS if names in (["all"], []) else tuple(dict.fromkeys(names))
    wrong = [n for n in chosen if n not in BLOCKS]
    if wrong:
        raise SdlabError(f"--layers {','.join(wrong)} is not a UNet block: name 'all' or some "
                         f"of {','.join(BLOCKS)}")
    return tuple(chosen)


def layer_maps(entries: torch.Tensor, grid: tuple[int, int], size: tuple[int, int],
               mode: str = "bilinear") -> torch.Tensor:
    """One layer's entries (T, hl·wl), on its own grid (a halving of the latent `grid`),
    -> (T, *size): upsampled with `mode`; bicubic overshoots, so its maps are clamped at
    0, as DAAM does."""
    hl, wl = _layer_grid(entries.shape[1], *grid)
    maps = entries.reshape(1, -1, hl, wl)
    if (hl, wl) != tuple(size):
        maps = F.interpolate(maps, size=size, mode=mode, align_corners=False)
        if mode == "bicubic":
            maps = maps.clamp_min(0)
    return maps[0]


def _show(steps: tuple[int, int | None]) -> str:
    return f"{steps[0]}:{'' if steps[1] is None else steps[1]}"


def _layer_grid(cells: int, h: int, w: int) -> tuple[int, int]:
    """The (rows, cols) of a layer with `cells` queries: the latent grid halved k times,
    rounding up as the UNet's stride-2 convolutions do."""
    for k in range(16):
        size = (math.ceil(h / 2**k), math.ceil(w / 2**k))
        if size[0] * size[1] == cells:
            return size
    raise SdlabError(f"a cross-attention layer has {cells} queries, which fits no "
                     f"downsampling of the {h}x{w} latent grid")


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Each token's map (..., T, h, w) divided by its sum (all-zero maps stay zero)."""
    total = maps.sum((-2, -1), keepdim=True)
    return maps / torch.where(total > 0, total, torch.ones_like(total))


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Maps (..., h, w) -> (..., H, W) bilinearly (size is (H, W))."""
    lead = maps.shape[:-2]
    flat = maps.reshape(1, -1, *maps.shape[-2:]).float()
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)


# --- reading a map -----------------------------------------------------------------------


def centroid(heat: torch.Tensor) -> tuple[float, float]:
    """(x, y) of a map's centre of mass, in pixels of its grid (pixel centres at +0.5)."""
    h, w = heat.shape
    ys = torch.arange(h, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(w, dtype=torch.float32)[None, :] + 0.5
    total = heat.sum().clamp_min(1e-12)
    return float((heat * xs).sum() / total), float((heat * ys).sum() / total)


def mass_outside(heat: torch.Tensor, mask: np.ndarray | torch.Tensor) -> float:
    """The share of a map's mass where the mask (same grid, coverage in [0, 1]) is not."""
    inside = torch.as_tensor(np.asarray(mask), dtype=torch.float32)
    total = heat.sum().clamp_min(1e-12)
    return float((heat * (1 - inside)).sum() / total)


# --- pictures ----------------------------------------------------------------------------


def heat_colours(heat: np.ndarray) -> np.ndarray:
    """A map in [0, 1] (H, W) -> RGB (H, W, 3) uint8 on matplotlib's 'jet' scale."""
    from matplotlib import colormaps

    return (colormaps["jet"](np.clip(heat, 0, 1))[..., :3] * 255).astype(np.uint8)


def overlay(image: Image.Image, heat: torch.Tensor, alpha: float = 0.5) -> Image.Image:
    """The image with one map (any grid) laid over it, stretched to its own range (min to
    max, as DAAM shows maps: a map's shape, not its level, is what one overlay shows)."""
    up = upsample(heat, (image.height, image.width))
    up = ((up - up.min()) / (up.max() - up.min()).clamp_min(1e-12)).numpy()
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    mixed = (1 - alpha) * base + alpha * heat_colours(up).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(mixed), 0, 255).astype(np.uint8))


def _label_font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans from matplotlib's own files (it draws '→'); PIL's default otherwise."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return ImageFont.truetype(str(path), 12) if path.is_file() else ImageFont.load_default()


def maps_picture(image: Image.Image, maps: torch.Tensor, labels: Sequence[str],
                 columns: int = 6, tile: int | None = None) -> Image.Image:
    """A grid: the image, then one overlay per map with its token string under it."""
    tile = tile or min(256, max(128, image.width))
    scale = tile / max(image.width, image.height)
    size = (round(image.width * scale), round(image.height * scale))
    shown = [image.resize(size, Image.Resampling.NEAREST)]
    shown += [overlay(image, m).resize(size, Image.Resampling.NEAREST) for m in maps]
    names = ["image", *labels]
    font = _label_font()
    label_h = 16
    cols = min(columns, len(shown))
    rows = math.ceil(len(shown) / cols)
    sheet = Image.new("RGB", (cols * size[0], rows * (size[1] + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (picture, name) in enumerate(zip(shown, names, strict=True)):
        x, y = (k % cols) * size[0], (k // cols) * (size[1] + label_h)
        sheet.paste(picture, (x, y))
        text = name if draw.textlength(name, font=font) <= size[0] - 4 else name[:18] + "…"
        draw.text((x + 2, y + size[1] + 2), text, fill="black", font=font)
    return sheet


def attention_frames(x0_images: Sequence[Image.Image], maps: torch.Tensor,
                     labels: Sequence[str]) -> list[Image.Image]:
    """One picture per step: that step's predicted x0, then each token's map over it.
    `maps` (steps, tokens, h, w), as a trace stores them."""
    if maps.ndim != 4 or maps.shape[0] != len(x0_images) or maps.shape[1] != len(labels):
        raise SdlabError(f"attention maps of shape {tuple(maps.shape)} do not fit "
                         f"{len(x0_images)} steps and {len(labels)} tokens: the trace is "
                         "damaged")
    return [maps_picture(image, step, labels) for image, step in zip(x0_images, maps,
                                                                      strict=True)]
