"""Shared fixtures: the tiny model set, written once per test session and loaded through the real loaders."""

import pytest
import torch

from goan_core.models import load_model_set
from goan_core.models.tiny import write_tiny_models


@pytest.fixture(scope="session")
def tiny_models_root(tmp_path_factory):
    """A models root in the real layout holding the tiny set (read-only: copy it before changing it)."""
    return write_tiny_models(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def tiny_models(tiny_models_root):
    """The tiny ModelSet, float32 on the CPU, shared by the session: do not modify its models."""
    return load_model_set(tiny_models_root, dtype=torch.float32)
