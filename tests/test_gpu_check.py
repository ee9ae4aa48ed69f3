"""bench/gpu_check.py: without a GPU it says so and exits 0; its dry run drives the same engine
plumbing (skeleton folder, preloaded modules, planned modes, hand-off, plain call) on tiny models."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


def load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_without_a_gpu_it_says_so_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert load().main([]) == 0
    assert "no NVIDIA GPU" in capsys.readouterr().out


def test_dry_run_prints_a_row_per_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rows.json"
    assert load().main(["--dry-run", "--models", "sd15", "--steps", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["budget"] for r in rows] == [24.0, 12.0, 16.0, 24.0]
    assert all(r["farm_s"] > 0 and r["plain_s"] > 0 and r["predicted_gib"] > 0 for r in rows)
    assert "ratio" in capsys.readouterr().out


@pytest.mark.gpu
@pytest.mark.slow
def test_on_a_gpu_sd15_runs_in_every_planned_mode() -> None:
    assert load().main(["--models", "sd15", "--steps", "2"]) == 0
