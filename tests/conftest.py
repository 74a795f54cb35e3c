"""Shared fixtures: tiny random-weight SD models in the diffusers layout (real CLIP
vocabulary), built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from sdlab.models import Parts, load
from sdlab.random_models import build_random_model


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["SDLAB_CACHE"] = str(tmp_path_factory.mktemp("sdlab-cache"))


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_random_model(tmp_path_factory.mktemp("tiny") / "model", "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_vpred_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_random_model(tmp_path_factory.mktemp("tiny-v") / "model", "tiny", seed=1,
                              prediction_type="v_prediction")


@pytest.fixture(scope="session")
def tiny(tiny_folder: Path) -> Parts:
    return load(tiny_folder)


@pytest.fixture(scope="session")
def tiny_vpred(tiny_vpred_folder: Path) -> Parts:
    return load(tiny_vpred_folder)


# The test models are tiny: one thread is as fast, and it does not thrash when another
# job (a training run) holds the other core.
torch.set_num_threads(1)
