"""What every view shares: the loaded model (read only), the gate in front of it, the
server's workspace and limits, and the one way a request's error reaches the page."""

from __future__ import annotations

import functools
import inspect
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from sdlab.errors import SdlabError
from sdlab.web import service
from sdlab.web.serving import Limits, ModelGate, Workspace

log = logging.getLogger("sdlab.web")


@dataclass
class Context:
    parts: service.Parts
    model_ref: str
    workspace: Workspace
    limits: Limits
    gate: ModelGate
    runs: dict[str, set[threading.Event]] = field(default_factory=dict)  # session -> stops

    @classmethod
    def create(cls, model: str, limits: Limits) -> Context:
        parts, ref = service.load_model(model)
        return cls(parts, ref, Workspace.create(), limits, ModelGate(limits.waiting))

    def forget(self, session: str, stop: threading.Event) -> None:
        runs = self.runs.get(session, set())
        runs.discard(stop)
        if not runs:
            self.runs.pop(session, None)

    def stop(self, session: str) -> None:
        """Stop every run of a session at its next step."""
        for event in list(self.runs.get(session, ())):
            event.set()


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def shown(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A view's handler whose failures reach the page as one line (gr.Error); the server
    logs unexpected ones and keeps serving."""

    def fail(err: BaseException) -> gr.Error:
        if isinstance(err, SdlabError):
            return gr.Error(one_line(err), print_exception=False)
        log.exception("request failed")
        return gr.Error(f"internal error: {one_line(err)}", print_exception=False)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as err:
                raise fail(err) from err
        return stream

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as err:
            raise fail(err) from err
    return call


class Preview:
    """A sampler callback: hands each step's predicted x0 (as the linear preview) to the
    page, and ends the run when Stop is pressed."""

    def __init__(self, ctx: Context, stop: threading.Event, out: queue.Queue) -> None:
        self.ctx, self.stop, self.out = ctx, stop, out
        self.total = 0
        self.done = 0

    def begin(self, total: int) -> None:
        self.total, self.done = total, 0

    def __call__(self, record: service.StepRecord) -> None:
        if self.stop.is_set() and self.done:  # one step at least: a run has something to show
            raise service.StopSampling
        image = service.preview_image(self.ctx.parts, record.x0_pred)
        self.done += 1
        self.out.put(("step", (record.i, self.done, self.total, float(record.sigma), image)))


def stream_run(ctx: Context, session: str, recipe: service.Recipe, video: bool = True
               ) -> Iterator[tuple[str, Any]]:
    """Run in a worker that holds the model; yield ("step", (i, done, total, sigma, preview)) per
    step and ("done", RunOutputs) at the end. Stop (or the page going away) ends the run."""
    stop = threading.Event()
    ctx.runs.setdefault(session, set()).add(stop)
    out: queue.Queue = queue.Queue()
    folder = ctx.workspace.request_folder()

    def work() -> None:
        try:
            with ctx.gate.turn():
                result = service.run(ctx.parts, ctx.model_ref, recipe, folder,
                                     [Preview(ctx, stop, out)], video=video, trace=True,
                                     attention=True)
            out.put(("done", result))
        except BaseException as err:  # handed to the request's thread, raised there
            out.put(("error", err))

    worker = threading.Thread(target=work, name="sdlab-run", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = out.get()
            if kind == "error":
                raise value
            yield kind, value
            if kind == "done":
                return
    finally:
        stop.set()  # a no-op after the end; ends the run if the page went away
        ctx.forget(session, stop)
