"""Recipes: the settings that decide a run, as a PNG stores them, and their parsed form.

`GenerateParams` (and `Img2ImgParams`) hold plain values -- strings, numbers, tuples -- so a
recipe round-trips through JSON. `parse` checks them once, at the edge, and turns the
strings into typed specs (swaps, mix terms, guides, learned-embedding files); the library
below takes the parsed `Recipe` and checks nothing again. `params_from_dict` reads an
untrusted recipe (a PNG's, a web request's) with the same checks as the command line.

Every size, count and magnitude has a limit (`sdlab.limits`), checked before any work.
"""

from __future__ import annotations

import math
import re
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from sdlab.errors import SdlabError
from sdlab.limits import Limits, check_pixels, over
from sdlab.preview import DECODERS
from sdlab.schedule import DEFAULT_SCHEDULER, SCHEDULERS

# named colours of the colour guide (r, g, b in 0..1)
COLORS = {
    "red": (1.0, 0.0, 0.0), "green": (0.0, 0.8, 0.0), "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0), "white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0),
    "orange": (1.0, 0.55, 0.0), "purple": (0.55, 0.0, 0.8),
}


@dataclass(frozen=True)
class GenerateParams:
    """Everything that decides a text-to-image run (with the model's weights)."""

    prompt: str
    negative: str = ""
    steps: int = 30
    guidance: float = 7.5
    seed: int = 32
    scheduler: str = DEFAULT_SCHEDULER
    height: int | None = None  # None: the model's native size
    width: int | None = None
    batch: int = 1
    # text edits: swaps "WORD=WORD", a mix "PROMPT:W" (then prompt is ""), textual-inversion
    # files and the prompt words they replace ("" = the file's own)
    swap: tuple[str, ...] = ()
    mix: tuple[str, ...] = ()
    embedding: tuple[str, ...] = ()
    token: tuple[str, ...] = ()
    # guidance by a loss: "NAME:SCALE" specs, applied every N steps on the full VAE decode
    # or the cheap linear preview; clip_model for clip:"text" guides
    guide: tuple[str, ...] = ()
    guide_every: int = 5
    guide_decoder: str = "full"
    clip_model: str | None = None
    # speed: guidance truncation (the share of the steps that run the unconditional pass)
    # and step caching (sdlab.cache: the full UNet every N evaluations; 1 = off)
    cfg_until: float = 1.0
    cache_interval: int = 1
    cache_branch: int = 0

    def __post_init__(self) -> None:  # a JSON recipe gives lists: keep tuples
        for name in ("swap", "mix", "embedding", "token", "guide"):
            value = getattr(self, name)
            if isinstance(value, list | tuple):
                object.__setattr__(self, name, tuple(value))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Img2ImgParams(GenerateParams):
    image: str = ""  # the input's path, for the recipe
    strength: float = 0.8

    def start_step(self) -> int:
        """The first denoising step: N - int(N * strength), as diffusers counts."""
        return self.steps - min(int(self.steps * self.strength), self.steps)


def defaults(cls: type[GenerateParams] = GenerateParams) -> dict[str, Any]:
    """The fields' defaults, for shells that show them (one place defines them)."""
    return {f.name: f.default for f in fields(cls) if f.default is not MISSING}


# --- parsed specs ------------------------------------------------------------------------


@dataclass(frozen=True)
class Swap:
    """Replace the input embedding of the prompt word `old` by that of `new`."""

    old: str
    new: str


@dataclass(frozen=True)
class MixTerm:
    """One prompt of the conditioning and its weight (a plain run: one term, weight 1)."""

    prompt: str
    weight: float


@dataclass(frozen=True)
class GuideSpec:
    """A loss on the predicted image: `kind` blue, contrast, color (with `color`) or clip
    (with `text`), times `scale`."""

    name: str  # as written, e.g. 'color:red' (names the loss curve)
    kind: str
    scale: float
    color: tuple[float, float, float] | None = None
    text: str | None = None


@dataclass(frozen=True)
class EmbeddingSpec:
    """A textual-inversion file and the prompt word it stands for (None: the file's own)."""

    file: str
    token: str | None


@dataclass(frozen=True)
class Recipe:
    """A run's settings, checked, with every string parsed once."""

    params: GenerateParams
    terms: tuple[MixTerm, ...]  # the --mix terms, or the prompt at weight 1
    swaps: tuple[Swap, ...] = ()
    embeddings: tuple[EmbeddingSpec, ...] = ()
    guides: tuple[GuideSpec, ...] = ()

    @property
    def cfg(self) -> bool:
        """Classifier-free guidance needs the unconditional pass unless the scale is 1."""
        return self.params.guidance != 1.0

    def sized(self, height: int, width: int) -> Recipe:
        """The recipe with its image size filled in (as run)."""
        return replace(self, params=replace(self.params, height=height, width=width))


# --- parsing -----------------------------------------------------------------------------


def parse(params: GenerateParams, limits: Limits | None = None) -> Recipe:
    """Check every setting and parse the strings; raise a one-line SdlabError."""
    limits = limits or Limits.from_env()
    _check_numbers(params, limits)
    _check_text(params, limits)
    if isinstance(params, Img2ImgParams):
        _check_img2img(params)
    terms = tuple(parse_mix(m, limits) for m in params.mix) or (MixTerm(params.prompt, 1.0),)
    return Recipe(params, terms, tuple(parse_swap(s) for s in params.swap),
                  _embeddings(params), tuple(parse_guide(g, limits) for g in params.guide))


def as_recipe(settings: Recipe | GenerateParams) -> Recipe:
    """A Recipe as it is; params parsed (the library's entry points take either)."""
    return settings if isinstance(settings, Recipe) else parse(settings)


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SdlabError(f"{name} must be a number (got {value!r})")
    if not math.isfinite(value):
        raise SdlabError(f"{name} must be a finite number (got {value})")
    return float(value)


def _whole(name: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SdlabError(f"{name} must be a whole number (got {value!r})")
    if value < low:
        raise SdlabError(f"{name} must be at least {low} (got {value})")
    if high is not None and value > high:
        raise SdlabError(f"{name} must be at most {high} (got {value})")
    return value


def _check_numbers(params: GenerateParams, limits: Limits) -> None:
    steps = _whole("--steps", params.steps, 1)
    if steps > limits.max_steps:
        raise over("--steps", steps, limits.max_steps, "max_steps")
    guidance = _finite("--guidance", params.guidance)
    if not 0 <= guidance <= limits.max_guidance:
        raise SdlabError(f"--guidance must be in 0..{limits.max_guidance:g} (got {guidance:g})")
    _whole("--seed", params.seed, 0, 2**64 - 1)
    batch = _whole("--batch", params.batch, 1)
    if batch > limits.max_batch:
        raise over("--batch", batch, limits.max_batch, "max_batch")
    for name in ("height", "width"):
        value = getattr(params, name)
        if value is not None:
            _whole(f"--{name}", value, 1, limits.max_side)
    if params.height and params.width:
        check_pixels(params.height, params.width, batch, limits)
    _whole("--guide-every", params.guide_every, 1)
    cfg_until = _finite("--cfg-until", params.cfg_until)
    if not 0 <= cfg_until <= 1:
        raise SdlabError(f"--cfg-until must be in 0..1, the share of the steps with guidance "
                         f"(got {cfg_until:g})")
    _whole("--cache-interval", params.cache_interval, 1, limits.max_steps)
    _whole("--cache-branch", params.cache_branch, 0, 16)
    if params.guide_decoder not in DECODERS:
        raise SdlabError(f"--guide-decoder must be one of {', '.join(DECODERS)} "
                         f"(got {params.guide_decoder!r})")
    if params.scheduler not in SCHEDULERS:
        raise SdlabError(f"unknown scheduler {params.scheduler!r}: choose one of "
                         f"{', '.join(SCHEDULERS)}")


def _check_text(params: GenerateParams, limits: Limits) -> None:
    for name in ("prompt", "negative"):
        value = getattr(params, name)
        if not isinstance(value, str):
            raise SdlabError(f"the {name} must be text (got {value!r})")
        if len(value) > limits.max_prompt_chars:
            raise over(f"the {name}'s length", len(value), limits.max_prompt_chars, "")
    for name in ("swap", "mix", "embedding", "token", "guide"):
        values = getattr(params, name)
        if not isinstance(values, tuple) or not all(isinstance(v, str) for v in values):
            raise SdlabError(f"--{name} must be a list of text entries (got {values!r})")
        if len(values) > limits.max_edits:
            raise over(f"the number of --{name} entries", len(values), limits.max_edits, "")
    if params.mix and params.prompt:
        raise SdlabError("give either a prompt or --mix entries (PROMPT:WEIGHT), not both")
    if params.token and len(params.token) != len(params.embedding):
        raise SdlabError(f"{len(params.token)} --token for {len(params.embedding)} --embedding: "
                         "give one --token per --embedding, or none")
    if params.clip_model is not None and not isinstance(params.clip_model, str):
        raise SdlabError(f"--clip-model must be text (got {params.clip_model!r})")


def _check_img2img(params: Img2ImgParams) -> None:
    strength = _finite("--strength", params.strength)
    if not 0 < strength <= 1:
        raise SdlabError(f"--strength must be in (0, 1] (got {strength:g})")
    if params.start_step() >= params.steps:
        raise SdlabError(f"--strength {strength:g} with {params.steps} steps leaves no step to "
                         "run: raise --strength or --steps")


def strength_for(start_step: int, steps: int) -> float:
    """The strength that starts the loop at `start_step` of `steps` (the deep dive's way)."""
    if not 0 <= start_step < steps:
        raise SdlabError(f"--start-step must be in 0..{steps - 1} for {steps} steps "
                         f"(got {start_step})")
    return (steps - start_step) / steps


def parse_swap(text: str) -> Swap:
    """'puppy=skunk' -> Swap('puppy', 'skunk')."""
    old, sep, new = text.partition("=")
    if not sep or not old.strip() or not new.strip() or "=" in new:
        raise SdlabError(f"--swap '{text}' is not WORD=WORD (e.g. --swap puppy=skunk)")
    return Swap(old.strip(), new.strip())


def parse_mix(text: str, limits: Limits | None = None) -> MixTerm:
    """'A mouse:0.35' -> MixTerm('A mouse', 0.35); the weight follows the LAST colon."""
    limits = limits or Limits()
    prompt, sep, weight = text.rpartition(":")
    try:
        value = float(weight) if sep else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise SdlabError(f"--mix '{text}' is not PROMPT:WEIGHT with a finite weight "
                         "(e.g. --mix 'A mouse:0.35')")
    if abs(value) > limits.max_weight:
        raise SdlabError(f"--mix '{text}': |weight| must be at most {limits.max_weight:g}")
    return MixTerm(prompt, value)


_GUIDE = re.compile(r"(?P<name>.+):(?P<scale>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)")


def parse_guide(spec: str, limits: Limits | None = None) -> GuideSpec:
    """`NAME:SCALE` -> GuideSpec. Names: blue, contrast, color:<name or r,g,b>,
    clip:"<text>"."""
    limits = limits or Limits()
    match = _GUIDE.fullmatch(spec.strip())
    if not match:
        raise SdlabError(f"--guide '{spec}' should be NAME:SCALE, e.g. blue:200")
    name, scale = match["name"], float(match["scale"])
    if not math.isfinite(scale) or abs(scale) > limits.max_guide_scale:
        raise SdlabError(f"--guide '{spec}': the scale must be finite and at most "
                         f"{limits.max_guide_scale:g} in size")
    if name in ("blue", "contrast"):
        return GuideSpec(name, name, scale)
    if name.startswith("color:"):
        return GuideSpec(name, "color", scale, color=_parse_color(name[6:]))
    if name.startswith("clip:"):
        text = name[5:].strip("\"'")
        if not text.strip():
            raise SdlabError(f"--guide '{spec}': clip needs a text, e.g. clip:\"a red star\":50")
        return GuideSpec(name, "clip", scale, text=text)
    raise SdlabError(f"unknown guide '{name}': use blue, contrast, color:<name|r,g,b>, "
                     'or clip:"<text>"')


def _parse_color(text: str) -> tuple[float, float, float]:
    if text in COLORS:
        return COLORS[text]
    try:
        r, g, b = (float(v) for v in text.split(","))
    except ValueError:
        r = g = b = math.nan
    if not all(math.isfinite(v) and 0 <= v <= 1 for v in (r, g, b)):
        raise SdlabError(f"unknown colour '{text}': use one of {', '.join(COLORS)} or r,g,b "
                         "in 0..1")
    return r, g, b


def _embeddings(params: GenerateParams) -> tuple[EmbeddingSpec, ...]:
    tokens = params.token or ("",) * len(params.embedding)
    specs = []
    for file, token in zip(params.embedding, tokens, strict=True):
        if not Path(file).is_file():
            raise SdlabError(f"embedding file not found: {file}")
        if token and (not token.strip() or any(c.isspace() for c in token)):
            raise SdlabError(f"--token {token!r} must be one word without spaces")
        specs.append(EmbeddingSpec(file, token or None))
    return tuple(specs)


# --- untrusted recipes -------------------------------------------------------------------


def params_from_dict(data: Any, source: str = "the recipe") -> GenerateParams:
    """GenerateParams (or Img2ImgParams when it names an image) from a JSON-like dict,
    with every field's type checked; `parse` then checks the values."""
    if not isinstance(data, dict):
        raise SdlabError(f"{source} is not a recipe: expected an object of settings")
    cls = Img2ImgParams if "image" in data else GenerateParams
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise SdlabError(f"{source} has settings this sdlab does not know: {', '.join(unknown)}")
    if not isinstance(data.get("prompt"), str):
        raise SdlabError(f"{source} has no prompt text (got {data.get('prompt')!r})")
    values = {}
    for name, value in data.items():
        values[name] = _typed(name, value, _kind(cls, name), source)
    return cls(**values)


def _kind(cls: type, name: str) -> str:
    hints = {f.name: str(f.type) for f in fields(cls)}
    return hints[name]


def _typed(name: str, value: Any, kind: str, source: str) -> Any:
    """`value` if it fits the field's annotated type (ints accepted for floats)."""
    optional = "None" in kind
    if value is None and optional:
        return None
    base = kind.replace(" | None", "")
    ok = {
        "str": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "tuple[str, ...]": isinstance(value, list | tuple)
        and all(isinstance(v, str) for v in value),
    }.get(base, False)
    if not ok:
        wanted = "a list of text" if base.startswith("tuple") else base
        raise SdlabError(f"{source}: '{name}' should be {wanted} (got {value!r})")
    return tuple(value) if base.startswith("tuple") else value
