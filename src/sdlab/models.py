"""Loading Stable Diffusion's parts. The only module that knows folder layouts, the
Hugging Face cache and weight formats.

A model is named by a folder in the diffusers layout, a hub id resolved from the local
Hugging Face cache only (never the network), or the name of the bundled model.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from sdlab.errors import SdlabError

BUNDLED_NAME = "sdlab-tiny"
BUNDLED_DIR = Path(__file__).parent / "assets" / BUNDLED_NAME
COMPONENTS = ("tokenizer", "text_encoder", "vae", "unet", "scheduler")
WEIGHTED = ("text_encoder", "vae", "unet")
SUPPORTED_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass
class Parts:
    """The loaded parts of a Stable Diffusion model, ready for the open loop."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    scheduler_config: dict[str, Any]
    model_id: str
    folder: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32

    @property
    def vae_scale_factor(self) -> int:
        """How many pixels one latent cell spans (8 for SD)."""
        return scale_factor(self.vae.config)

    @property
    def native_size(self) -> int:
        """The image side the UNet was trained at (512 for SD 1.x)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def prediction_type(self) -> str:
        return str(self.scheduler_config.get("prediction_type", "epsilon"))


def default_model() -> str:
    """The model sdlab commands use when none is named: the bundled one, once it exists."""
    if (BUNDLED_DIR / "model_index.json").is_file():
        return BUNDLED_NAME
    raise SdlabError(
        "no model given and the bundled model is not installed: pass --model with a "
        "diffusers folder or a cached hub id (e.g. CompVis/stable-diffusion-v1-4)"
    )


def resolve(model: str | os.PathLike[str]) -> Path:
    """Return the diffusers folder for a model name, folder path or cached hub id."""
    name = str(model)
    if name == BUNDLED_NAME:
        if not (BUNDLED_DIR / "model_index.json").is_file():
            raise SdlabError(f"the bundled model '{BUNDLED_NAME}' is not in {BUNDLED_DIR}: "
                             "reinstall sdlab, or pass --model")
        return BUNDLED_DIR
    path = Path(name).expanduser()
    if path.exists():
        return _check_folder(path)
    if _HUB_ID.match(name) and not name.startswith((".", "/")):
        return _check_folder(_from_hf_cache(name))
    raise SdlabError(
        f"model folder not found: {name} (give a diffusers folder, a hub id already in the "
        f"Hugging Face cache, or '{BUNDLED_NAME}')"
    )


def resolve_clip(model: str) -> Path:
    """A transformers CLIPModel folder, or a cached hub id (e.g. openai/clip-vit-large-patch14)."""
    path = Path(model).expanduser()
    if not path.exists():
        if not _HUB_ID.match(model):
            raise SdlabError(f"CLIP model not found: {model} (give a folder or a cached hub id)")
        path = _from_hf_cache(model)
    if not (path / "config.json").is_file():
        raise SdlabError(f"{path} is not a CLIP model folder (no config.json)")
    return path


def _from_hf_cache(repo_id: str) -> Path:
    """Find a hub id's snapshot in the local cache (HF_HOME / HF_HUB_CACHE); no network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as err:
        raise SdlabError(
            f"'{repo_id}' is not in the Hugging Face cache ({_hf_cache_dir()}); sdlab never "
            f"downloads: on a machine with network run `hf download {repo_id}` and copy the "
            f"cache here, or pass --model with a local diffusers folder"
        ) from err


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _check_folder(path: Path) -> Path:
    if not path.is_dir():
        raise SdlabError(f"model path is not a folder: {path} (give a diffusers-layout folder)")
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise SdlabError(
            f"{path} has no model_index.json: it is not a diffusers-layout model folder"
        )
    index = _read_json(index_file)
    cls = index.get("_class_name", "")
    if cls not in SUPPORTED_PIPELINES:
        raise SdlabError(
            f"unsupported architecture '{cls}' in {index_file}: sdlab runs Stable Diffusion "
            f"1.x/2.x ({', '.join(SUPPORTED_PIPELINES)})"
        )
    for name in COMPONENTS:
        if not (path / name).is_dir():
            raise SdlabError(f"component '{name}' is missing from {path}: expected {path / name}/")
    for name in WEIGHTED:
        if not _weight_files(path / name):
            raise SdlabError(
                f"no safetensors weights in {path / name}: sdlab loads only .safetensors "
                f"(convert .bin files with diffusers' save_pretrained(safe_serialization=True))"
            )
    return path


def _read_json(file: Path) -> dict[str, Any]:
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise SdlabError(f"cannot read {file}: {err}") from err


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files a component loads: the full-precision ones, or else (a cache
    that holds only `variant="fp16"`) the `*.fp16*.safetensors` ones."""
    files = sorted(folder.glob("*.safetensors"))
    plain = [f for f in files if ".fp16" not in f.name]
    return plain or files


def _variant(folder: Path) -> str | None:
    files = _weight_files(folder)
    return "fp16" if files and all(".fp16" in f.name for f in files) else None


def read_configs(folder: Path) -> dict[str, dict[str, Any]]:
    """The components' config files, read without loading any weights."""
    return {
        "vae": _read_json(folder / "vae" / "config.json"),
        "unet": _read_json(folder / "unet" / "config.json"),
        "scheduler": _read_json(folder / "scheduler" / "scheduler_config.json"),
    }


def scale_factor(vae_config: Any) -> int:
    """Pixels per latent cell from a VAE config (a dict or a diffusers config): each block
    but the last halves the resolution."""
    channels = (vae_config["block_out_channels"] if isinstance(vae_config, dict)
                else vae_config.block_out_channels)
    return 2 ** (len(channels) - 1)


def folder_scale_factor(folder: Path) -> int:
    """`scale_factor` of a model folder, read from its config without loading weights."""
    return scale_factor(read_configs(folder)["vae"])


def pick_device(device: str = "auto") -> torch.device:
    """`auto` takes CUDA, then Apple MPS, then the CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device not in ("cpu", "cuda", "mps"):
        raise SdlabError(f"unknown device '{device}': use auto, cpu, cuda or mps")
    if device == "cuda" and not torch.cuda.is_available():
        raise SdlabError("--device cuda asked for, but torch sees no CUDA GPU (try --device cpu)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise SdlabError("--device mps asked for, but torch sees no Apple GPU (try --device cpu)")
    return torch.device(device)


def default_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA, fp32 everywhere else (CPU fp16 is slow and lossy)."""
    return torch.float16 if device.type == "cuda" else torch.float32


def load(model: str | os.PathLike[str], device: str | torch.device = "cpu",
         dtype: torch.dtype | None = None) -> Parts:
    """Load tokenizer, text encoder, VAE, UNet and scheduler config of a model."""
    folder = resolve(model)
    device = pick_device(device) if isinstance(device, str) else device
    dtype = dtype or default_dtype(device)
    scheduler_config = read_configs(folder)["scheduler"]
    try:
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(
            folder / "text_encoder", dtype=dtype, use_safetensors=True,
            variant=_variant(folder / "text_encoder"))
        vae = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=dtype,
                                            use_safetensors=True, variant=_variant(folder / "vae"))
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype,
                                                    use_safetensors=True,
                                                    variant=_variant(folder / "unet"))
    except Exception as err:  # every library failure becomes one line
        raise SdlabError(f"cannot load {folder}: {_one_line(err)} (corrupt or truncated "
                         f"weights? re-copy the model folder)") from err
    for module in (text_encoder, vae, unet):
        module.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return Parts(tokenizer, text_encoder, vae, unet, scheduler_config, str(model), folder,
                 device, dtype)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:300] or type(err).__name__


def weights_hash(folder: Path) -> str:
    """sha256 (first 16 hex digits) over the weight files of a model folder.

    Hashing 4 GB takes a while, so the result is cached per file path, size and
    modification time in `$SDLAB_CACHE` (default ~/.cache/sdlab/weights-hash.json).
    """
    files = [f for name in WEIGHTED for f in _weight_files(folder / name)]
    key = "|".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    cache_file = _cache_dir() / "weights-hash.json"
    cache = _read_cache(cache_file)
    if key in cache:
        return cache[key]
    digest = hashlib.sha256()
    for f in files:
        with f.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    cache[key] = digest.hexdigest()[:16]
    _write_cache(cache_file, cache)
    return cache[key]


def _cache_dir() -> Path:
    return Path(os.environ.get("SDLAB_CACHE", Path.home() / ".cache" / "sdlab"))


def _read_cache(file: Path) -> dict[str, str]:
    """The cache, or an empty one where it is missing or damaged (it is rebuilt)."""
    try:
        cache = json.loads(file.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(cache, dict):
        return {}
    return {k: v for k, v in cache.items() if isinstance(k, str) and isinstance(v, str)}


def _write_cache(file: Path, cache: dict[str, str]) -> None:
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(cache))
        tmp.replace(file)
    except OSError:
        pass  # a read-only home only costs a re-hash next time


def load_tokenizer(model: str | os.PathLike[str]) -> CLIPTokenizer:
    """Only the tokenizer of a model (no weights read): enough to look at token ids."""
    folder = resolve(model)
    try:
        return CLIPTokenizer.from_pretrained(folder / "tokenizer")
    except Exception as err:
        raise SdlabError(f"cannot load the tokenizer in {folder}: {_one_line(err)}") from err


PREVIEW_FILE = "preview.json"  # a model's own latent -> RGB map (sdlab.preview)


def read_preview_map(folder: Path) -> dict[str, Any] | None:
    """The model folder's fitted preview map ({"weight": (C, 3), "bias": (3,)}), if any."""
    file = folder / PREVIEW_FILE
    if not file.is_file():
        return None
    data = _read_json(file)
    if not isinstance(data.get("weight"), list) or not isinstance(data.get("bias"), list):
        raise SdlabError(f"{file} is damaged: expected a weight and a bias")
    return data


def write_preview_map(folder: Path, text: str) -> Path:
    path = Path(folder) / PREVIEW_FILE
    path.write_text(text)
    return path


def has_split_clip(folder: Path) -> bool:
    """Whether a model folder carries a CLIP image tower beside its text encoder (`clip/`)."""
    return (folder / "clip" / "config.json").is_file()


def clip_preprocessing(folder: Path) -> dict[str, Any]:
    """A CLIP folder's image preprocessing settings (`preprocessor_config.json`), or {}."""
    file = folder / "preprocessor_config.json"
    return _read_json(file) if file.is_file() else {}


def load_split_clip(folder: Path) -> CLIPModel:
    """A whole CLIPModel (fp32) from a model folder that keeps its text tower as
    `text_encoder/` and its image tower as `clip/` (with `text_projection.safetensors`),
    as the bundled model does."""
    folder = Path(folder)
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=torch.float32)
    vision = CLIPVisionModelWithProjection.from_pretrained(folder / "clip", dtype=torch.float32)
    extra = load_file(str(folder / "clip" / "text_projection.safetensors"))
    config = CLIPConfig(text_config=text_encoder.config.to_dict(),
                        vision_config=vision.config.to_dict(),
                        projection_dim=vision.config.projection_dim)
    clip = CLIPModel(config)
    clip.text_model.load_state_dict(text_encoder.state_dict())
    clip.vision_model.load_state_dict(vision.vision_model.state_dict())
    clip.visual_projection.load_state_dict(vision.visual_projection.state_dict())
    with torch.no_grad():
        clip.text_projection.weight.copy_(extra["text_projection.weight"].float())
        clip.logit_scale.copy_(extra["logit_scale"].reshape(()))
    return clip.eval()


# --- textual-inversion files ---------------------------------------------------------


def read_embedding_file(path: str | os.PathLike[str]) -> tuple[str, torch.Tensor]:
    """(the file's own token, its vectors) from a textual-inversion file, without running
    pickled code.

    diffusers `learned_embeds.bin` / `.safetensors` hold {token: (d,) or (n, d)}; A1111 `.pt`
    files hold `string_to_param` (and A1111 `.safetensors` `emb_params`), and are used under
    the file's name (A1111's rule). `.bin`/`.pt` are read with `torch.load(weights_only=True)`:
    a file that needs more than tensors and plain containers is refused.
    """
    path = Path(path)
    if path.stat().st_size > MAX_EMBEDDING_BYTES:
        raise SdlabError(f"{path} is {path.stat().st_size} bytes: a textual-inversion file "
                         f"is at most {MAX_EMBEDDING_BYTES} (is it a model?)")
    return _vectors_of(_read_tensors(path), path)


MAX_EMBEDDING_BYTES = 64 * 1024 * 1024


def _read_tensors(path: Path) -> Any:
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # a damaged file, whatever the library's exception
            raise SdlabError(f"cannot read {path} as safetensors: {_short(err)}") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise SdlabError(f"refusing {path}: loading it would run pickled code "
                         f"({_short(err)}); sdlab reads only tensors -- convert it to "
                         ".safetensors where you trust it") from err
    except Exception as err:
        raise SdlabError(f"cannot read {path} as an embedding: {_short(err)}") from err


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return (text.split(". ")[0] or type(err).__name__)[:160]


def _vectors_of(data: Any, path: Path) -> tuple[str, torch.Tensor]:
    """(the file's own token, its vectors) for the formats in `load_embedding`."""
    if isinstance(data, dict) and "string_to_param" in data:  # A1111 .pt
        params = data["string_to_param"]
        if isinstance(params, dict) and len(params) == 1:
            value = next(iter(params.values()))
            if isinstance(value, torch.Tensor):
                return path.stem, value
    elif isinstance(data, dict) and isinstance(data.get("emb_params"), torch.Tensor):
        return path.stem, data["emb_params"]  # A1111 .safetensors
    elif isinstance(data, dict) and len(data) == 1:  # diffusers {token: tensor}
        key, value = next(iter(data.items()))
        if isinstance(key, str) and isinstance(value, torch.Tensor):
            return key, value
    keys = ", ".join(map(str, list(data)[:4])) if isinstance(data, dict) else type(data).__name__
    raise SdlabError(f"{path} is not a textual-inversion embedding ({keys}): expected "
                     "{token: tensor} (diffusers) or string_to_param (A1111)")
