"""Outputs on the client: `farm fetch` and `FarmClient.read_output` over the real FarmControl server
(TLS, tokens): streamed in chunks, checked against the head's SHA-256, written under a temporary
name and renamed, and bad input refused in one line."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cluster_harness import Head

from farm.api import control_server
from farm.api.downloads import save_outputs
from farm.cli.main import main
from farm.cluster.pki import write_private
from farm.contracts.domain import JobStatus
from farm.contracts.errors import FarmError, InvalidInput
from farm.jobs.jobspec import make_job


@pytest.fixture
def head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Head, str, list[Path]]]:
    """A head (FakeFarm behind the real server) with a done job whose outputs are files on the head:
    one small, one of several chunks."""
    monkeypatch.setenv("FARM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FARM_HEAD", raising=False)
    monkeypatch.delenv("FARM_TOKEN", raising=False)
    h = Head(tmp_path / "home" / "head")
    write_private(h.creds.folder / "control.port", str(h.port).encode())
    job_id = h.farm.submit(make_job(prompts=["a red circle"], seeds=2, steps=4))
    folder = tmp_path / "head-renders" / job_id
    folder.mkdir(parents=True)
    files = [folder / "0000-seed0.png", folder / "0001-seed1.png"]
    files[0].write_bytes(b"\x89PNG small")
    files[1].write_bytes(os.urandom(3 * control_server.OUTPUT_CHUNK + 17))
    h.farm.jobs[job_id] = replace(h.farm.jobs[job_id], status=JobStatus.DONE, samples_done=2,
                                  outputs=tuple(str(f) for f in files))
    yield h, job_id, files
    h.server.stop(None)


def test_fetch_saves_every_output_byte_for_byte(head: tuple[Head, str, list[Path]], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    h, job_id, files = head
    assert main(["fetch", job_id, "--out", str(tmp_path / "here")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [str(tmp_path / "here" / job_id / f.name) for f in files]
    assert [Path(p).read_bytes() for p in out] == [f.read_bytes() for f in files]
    assert not list((tmp_path / "here" / job_id).glob(".*"))  # no temporary file is left
    assert main(["fetch", job_id, "--out", str(tmp_path / "here")]) == 0  # again: the same files


def test_a_running_job_saves_what_is_written_so_far(head: tuple[Head, str, list[Path]], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    h, job_id, files = head
    h.farm.jobs[job_id] = replace(h.farm.jobs[job_id], status=JobStatus.RUNNING, outputs=(str(files[0]),))
    assert main(["fetch", job_id, "--out", str(tmp_path / "here")]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [str(tmp_path / "here" / job_id / files[0].name)]
    assert captured.err == f"farm: {job_id} is running: saved 1 of 2 outputs\n"


@pytest.mark.parametrize("args, message", [
    (["fetch", "nope"], "farm: job: no job 'nope'\n"),  # the farm's own field (a real head's too)
    (["fetch", "x" * 200], "farm: job_id: must be a job id of 1 to 128 characters\n"),
])
def test_bad_fetches_are_one_line(head: tuple[Head, str, list[Path]], capsys: pytest.CaptureFixture[str],
                                  args: list[str], message: str) -> None:
    assert main(args) == 2 and capsys.readouterr().err == message


def test_an_output_index_outside_the_job_names_the_field(head: tuple[Head, str, list[Path]]) -> None:
    h, job_id, _ = head
    with pytest.raises(InvalidInput, match=r"^index: job .* has 2 outputs \(0 to 1\), got 2$"):
        h.client().read_output(job_id, 2)


def test_a_damaged_download_is_refused(head: tuple[Head, str, list[Path]], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    h, job_id, files = head

    class WrongDigest:
        @staticmethod
        def sha256(data: bytes):  # type: ignore[no-untyped-def]
            return hashlib.sha256(data + b"!")

    monkeypatch.setattr(control_server, "hashlib", WrongDigest)
    with pytest.raises(FarmError, match="arrived damaged"):
        save_outputs(h.client(), h.farm.get_job(job_id), tmp_path / "here")
    assert not (tmp_path / "here" / job_id / files[0].name).exists()


def test_a_head_path_that_would_leave_the_folder_is_refused(head: tuple[Head, str, list[Path]],
                                                            tmp_path: Path) -> None:
    h, job_id, files = head
    view = replace(h.farm.get_job(job_id), outputs=(str(files[0]) + "/..",))
    with pytest.raises(FarmError, match="not a file name"):
        save_outputs(h.farm, view, tmp_path / "here")
