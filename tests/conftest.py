"""Shared fixtures: one embedded Ray farm per test session (starting Ray costs seconds), and a
per-session FARM_HOME so tests never touch the user's cache."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def farm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("farm-home")
    os.environ["FARM_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def embedded(farm_home: Path) -> Iterator[object]:
    """A running embedded farm (3 simulated nodes: 8, 12, 24 GiB) shared by the integration tests."""
    from farm.cli.embedded import embedded_farm
    from node.simulated import simulated_nodes

    with embedded_farm(simulated_nodes(), farm_home) as executor:
        yield executor


@pytest.fixture
def engines(tmp_path_factory: pytest.TempPathFactory):
    """`engines(family)`: that family's tiny pipeline behind a first and a middle-segment engine."""
    from segment_harness import engines_for

    return lambda family: engines_for(family, tmp_path_factory.getbasetemp())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip GPU-only tests where torch sees no CUDA device (CI has none); they are never deleted."""
    if not any("gpu" in item.keywords for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
