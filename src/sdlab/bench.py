"""`sdlab bench`: the same generation through sdlab and through diffusers'
StableDiffusionPipeline on the same model folder, side by side.

Each side runs in its own worker process (so one cannot inflate the other's peak memory)
that loads the model, warms up with a short run (2 steps), then waits. The parent asks
the workers for runs in turn -- A, B, A, B ... -- so that a change in the machine's load
hits both sides, and reports each side's median seconds, the ratio to diffusers, and each
process's peak resident memory. The sdlab worker also runs the recipe with the speed
preset (`--fast`: sdlab.cache.FAST) in the same rounds, compares its image with the exact
run's (PSNR), and measures the UNet's FLOPs per forward (torch.utils.flop_counter) and the
rate one timed forward achieves.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from sdlab.cli_common import quiet_libraries
from sdlab.errors import SdlabError

PROMPT = "a watercolor painting of an otter"


@dataclass(frozen=True)
class BenchSpec:
    """What to run: a model folder at one size, steps, scheduler and guidance."""

    folder: str
    size: int
    steps: int = 20
    scheduler: str = "lms"
    guidance: float = 7.5
    rounds: int = 3
    device: str = "cpu"
    threads: int | None = None  # torch threads in the workers (None: torch's default)
    channels_last: bool = False
    fast: bool = True  # also time sdlab with the speed preset
    flops: bool = True  # count the UNet's FLOPs and time one forward
    prompt: str = PROMPT


@dataclass
class BenchResult:
    spec: BenchSpec
    seconds: dict[str, list[float]] = field(default_factory=dict)  # per engine, per round
    peak_rss_mb: dict[str, float] = field(default_factory=dict)  # per worker process
    peak_gpu_mb: dict[str, float] = field(default_factory=dict)
    unet_gflop: float | None = None  # one UNet forward (the CFG batch)
    unet_seconds: float | None = None
    fast_psnr_db: float | None = None  # the preset's image against the exact run's

    def median(self, engine: str) -> float:
        return statistics.median(self.seconds[engine])

    def ratio(self, engine: str) -> float:
        return self.median(engine) / self.median("diffusers")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["median_s"] = {e: self.median(e) for e in self.seconds}
        out["ratio_to_diffusers"] = {e: self.ratio(e) for e in self.seconds}
        return out


def sd15_folder(cache: Path) -> Path:
    """The SD-1.5-shaped random-weight model, built once into `cache`."""
    from sdlab.random_models import build_random_model

    folder = cache / "sd15-random"
    if not (folder / "model_index.json").is_file():
        tmp = cache / "sd15-random.partial"
        build_random_model(tmp, "sd15")
        tmp.rename(folder)
    return folder


# --- the parent ---------------------------------------------------------------------------


class Worker:
    """A worker process that answers one JSON line per command."""

    def __init__(self, engine: str, spec: BenchSpec) -> None:
        self.engine = engine
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sdlab.bench", engine, json.dumps(asdict(spec))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self, command: str) -> dict[str, Any]:
        stdin, stdout = self._pipes()
        stdin.write(command + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            self.proc.wait()
            raise SdlabError(f"the {self.engine} worker ended (exit status "
                             f"{self.proc.returncode}) at '{command}'")
        return json.loads(line)

    def _pipes(self) -> tuple[IO[str], IO[str]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        return self.proc.stdin, self.proc.stdout

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def run_bench(spec: BenchSpec, progress: Callable[[str], None] | None = None) -> BenchResult:
    """Warm up both workers, then interleave the rounds; medians, ratios, peak memory.
    `progress` is told each timing as it arrives."""
    progress = progress or (lambda _message: None)
    if spec.rounds < 1 or spec.steps < 1 or spec.size < 8:
        raise SdlabError("--rounds and --steps must be at least 1, --size at least 8")
    workers = {name: Worker(name, spec) for name in ("diffusers", "sdlab")}
    result = BenchResult(spec)
    try:
        for name, worker in workers.items():
            progress(f"warm-up {name}: {worker.ask('warmup')['seconds']:.2f} s")
        engines = ["diffusers", "sdlab", *(["sdlab-fast"] if spec.fast else [])]
        for k in range(spec.rounds):
            for engine in engines:
                worker = workers["diffusers" if engine == "diffusers" else "sdlab"]
                answer = worker.ask("fast" if engine == "sdlab-fast" else "run")
                result.seconds.setdefault(engine, []).append(answer["seconds"])
                progress(f"round {k + 1} {engine}: {answer['seconds']:.2f} s")
        if spec.fast:
            result.fast_psnr_db = workers["sdlab"].ask("psnr")["psnr_db"]
        if spec.flops:
            answer = workers["sdlab"].ask("flops")
            result.unet_gflop, result.unet_seconds = answer["gflop"], answer["seconds"]
        for name, worker in workers.items():
            memory = worker.ask("memory")
            result.peak_rss_mb[name] = memory["peak_rss_mb"]
            if memory.get("peak_gpu_mb") is not None:
                result.peak_gpu_mb[name] = memory["peak_gpu_mb"]
    finally:
        for worker in workers.values():
            worker.close()
    return result


def table(result: BenchResult) -> str:
    """The result as the lines `sdlab bench` prints."""
    s = result.spec
    lines = [f"{Path(s.folder).name}, {s.size}x{s.size}, {s.steps} steps {s.scheduler}, "
             f"guidance {s.guidance:g}, {s.rounds} interleaved rounds after a warm-up, "
             f"device {s.device}, threads {s.threads or 'default'}"
             f"{', channels_last' if s.channels_last else ''}",
             f"{'engine':<12} {'median s':>9} {'ratio':>6} {'peak RSS MB':>12}  rounds (s)"]
    for engine in result.seconds:
        rss = result.peak_rss_mb.get("diffusers" if engine == "diffusers" else "sdlab")
        rounds = " ".join(f"{t:.2f}" for t in result.seconds[engine])
        lines.append(f"{engine:<12} {result.median(engine):>9.2f} {result.ratio(engine):>6.2f} "
                     f"{rss:>12.0f}  {rounds}")
    if result.peak_gpu_mb:
        lines.append("peak GPU memory MB: " + ", ".join(
            f"{k} {v:.0f}" for k, v in result.peak_gpu_mb.items()))
    if result.fast_psnr_db is not None:
        lines.append(f"sdlab-fast image vs sdlab exact: PSNR {result.fast_psnr_db:.2f} dB")
    if result.unet_gflop is not None and result.unet_seconds:
        lines.append(f"UNet forward (CFG batch): {result.unet_gflop:.1f} GFLOP, "
                     f"{result.unet_seconds:.2f} s, "
                     f"{result.unet_gflop / result.unet_seconds:.1f} GFLOP/s")
    return "\n".join(lines)


# --- the workers --------------------------------------------------------------------------


def _worker(engine: str, spec: BenchSpec) -> None:
    import torch

    answers = os.fdopen(os.dup(1), "w")  # the protocol's channel; library output goes to
    os.dup2(2, 1)  # stderr, so nothing a library prints can break it
    warnings.filterwarnings("ignore")
    quiet_libraries()
    if spec.threads:
        torch.set_num_threads(spec.threads)
    runner = _sdlab_runner(spec) if engine == "sdlab" else _diffusers_runner(spec)
    commands = {"warmup": lambda: {"seconds": _timed(runner["warmup"], spec.device)},
                "run": lambda: {"seconds": _timed(runner["run"], spec.device)},
                "fast": lambda: {"seconds": _timed(runner["fast"], spec.device)},
                "flops": runner.get("flops"), "psnr": runner.get("psnr"),
                "memory": lambda: _memory(spec.device)}
    for line in sys.stdin:
        command = commands.get(line.strip())
        answer = command() if command else {"error": f"unknown command {line.strip()!r}"}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


def _timed(fn: Any, device: str) -> float:
    import torch

    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _memory(device: str) -> dict[str, float | None]:
    import torch

    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return {"peak_rss_mb": peak_kb / 1024, "peak_gpu_mb": gpu}


def _sdlab_runner(spec: BenchSpec) -> dict[str, Any]:
    import torch

    from sdlab.cache import FAST
    from sdlab.generate import GenerateParams, generate, prepare
    from sdlab.models import load

    parts = load(spec.folder, device=spec.device)
    if spec.channels_last:
        parts.unet.to(memory_format=torch.channels_last)
    params = GenerateParams(spec.prompt, steps=spec.steps, guidance=spec.guidance,
                            scheduler=spec.scheduler, height=spec.size, width=spec.size)
    fast = GenerateParams(**{**params.to_dict(), **FAST})
    warmup = GenerateParams(**{**params.to_dict(), "steps": min(2, spec.steps)})
    last: dict[str, Any] = {}

    def run(name: str, p: GenerateParams) -> None:
        last[name] = generate(parts, p).images[0]

    def psnr() -> dict[str, float]:
        import numpy as np

        a, b = (np.asarray(last[k], dtype=np.float64) for k in ("run", "fast"))
        mse = float(np.mean((a - b) ** 2))
        return {"psnr_db": 10 * float(np.log10(255**2 / mse)) if mse else float("inf")}

    def flops() -> dict[str, float]:
        from torch.utils.flop_counter import FlopCounterMode

        run = prepare(parts, params)
        x = torch.cat([run.latents] * 2)
        states = torch.cat([run.text.uncond, run.text.cond])
        t = run.scheduler.timesteps[0]

        def forward() -> None:
            with torch.no_grad():
                parts.unet(x, t, encoder_hidden_states=states, return_dict=False)

        counter = FlopCounterMode(display=False)
        with counter:
            forward()
        return {"gflop": counter.get_total_flops() / 1e9, "seconds": _timed(forward,
                                                                             spec.device)}

    return {"run": lambda: run("run", params), "fast": lambda: run("fast", fast),
            "warmup": lambda: generate(parts, warmup), "flops": flops, "psnr": psnr}


def _diffusers_runner(spec: BenchSpec) -> dict[str, Any]:
    import torch
    from diffusers import StableDiffusionPipeline

    from sdlab.schedule import make_scheduler

    dtype = torch.float16 if spec.device == "cuda" else torch.float32
    pipe = StableDiffusionPipeline.from_pretrained(
        spec.folder, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = make_scheduler(spec.scheduler, pipe.scheduler.config)
    pipe = pipe.to(spec.device)
    pipe.set_progress_bar_config(disable=True)
    if spec.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)

    def run(steps: int = spec.steps) -> None:
        pipe(spec.prompt, height=spec.size, width=spec.size, num_inference_steps=steps,
             guidance_scale=spec.guidance, generator=torch.Generator("cpu").manual_seed(32))

    return {"run": run, "warmup": lambda: run(min(2, spec.steps))}


def main(argv: list[str] | None = None) -> None:
    """The worker's entry point: `python -m sdlab.bench ENGINE SPEC_JSON`."""
    argv = sys.argv[1:] if argv is None else argv
    engine, spec = argv[0], BenchSpec(**json.loads(argv[1]))
    os.environ.setdefault("TQDM_DISABLE", "1")
    _worker(engine, spec)


if __name__ == "__main__":
    main()
