"""The A1111-compatible HTTP API through the real `webuiapi` client, against a running farm: the
real coordinator on the embedded Ray farm, wrapped as the head wraps it, served by uvicorn on
loopback. The images the client receives must be the farm's own PNG files, byte for byte."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import webuiapi
from fake_farm import FakeFarm
from http_harness import PROMPT, Served
from waiting import wait_until

from farm.api.http import make_app, token_users
from farm.api.http_server import HttpServer, needs_credentials, parse_http
from farm.cli.main import main
from farm.cluster.credentials import HeadCredentials
from farm.cluster.tokens import TokenStore
from farm.contracts.domain import JobStatus
from farm.contracts.errors import FarmError, InvalidInput
from farm.runtime.executor import RayExecutor
from farm.runtime.outputs import png_text


@pytest.fixture(scope="module")
def served(embedded: RayExecutor, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    s = Served(embedded, tmp_path_factory.mktemp("http-renders"))
    yield s
    s.stop()


@pytest.mark.slow
def test_txt2img_batches_and_iterations_are_one_job_of_the_farms_own_pngs(served: Served) -> None:
    r = served.api.txt2img(prompt=PROMPT, negative_prompt="noise", seed=7, steps=4, cfg_scale=3.0, width=64,
                           height=64, sampler_name="Euler a", batch_size=2, n_iter=2)
    info = r.info
    assert info["all_seeds"] == [7, 8, 9, 10] and info["all_prompts"] == [PROMPT] * 4
    assert (info["sd_model_name"], info["sampler_name"], info["cfg_scale"], info["steps"]) == ("demo-shapes",
                                                                                               "Euler a", 3.0, 4)
    assert (info["width"], info["height"], info["batch_size"], info["n_iter"]) == (64, 64, 2, 2)
    assert "enable_hr" in info["ignored_fields"] and "prompt" not in info["ignored_fields"]
    view = served.coordinator.get_job(info["job_id"])
    assert view.status == JobStatus.DONE and view.samples_total == 4 and view.spec.owner == "local"
    assert view.spec.sampler == "euler_a" and view.spec.negative_prompt == "noise"
    # Byte-identical to the files the farm wrote, in seed order, each with its `parameters` chunk.
    received = [base64.b64decode(i) for i in r.json["images"]]
    files = sorted((served.out / view.id).glob("*.png"))
    assert received == [f.read_bytes() for f in files] and len(files) == 4
    assert info["infotexts"] == [png_text(b)["parameters"] for b in received]
    assert info["infotexts"][0].startswith(f"{PROMPT}\nNegative prompt: noise\nSteps: 4") and "Seed: 7" in \
        info["infotexts"][0]
    assert [img.size for img in r.images] == [(64, 64)] * 4
    assert r.parameters["batch_size"] == 2 and r.parameters["seed"] == 7


@pytest.mark.slow
def test_model_list_options_progress_and_interrupt(served: Served) -> None:
    api = served.api
    titles = api.util_get_model_names()
    assert "demo-shapes" in titles and "demo-tiny" in titles and not any("wan" in t for t in titles)
    assert api.util_get_sampler_names() == sorted(["Euler a", "Euler", "DPM++ 2M", "DDIM", "UniPC", "Heun", "DPM2"])
    assert api.util_get_scheduler_names() == ["automatic"]
    assert api.util_get_current_model() == "demo-shapes"
    api.util_set_model("demo-tiny")
    assert api.util_get_current_model() == "demo-tiny"
    assert api.get_progress()["state"]["job_count"] == 0  # idle

    answer: dict[str, webuiapi.WebUIApiResult] = {}
    run = threading.Thread(target=lambda: answer.update(r=api.txt2img(prompt="noise", seed=1, steps=60, width=64,
                                                                      height=64, batch_size=3, n_iter=2)))
    run.start()
    seen: list[dict] = []

    def moving() -> bool:
        seen.append(api.get_progress())
        return 0 < seen[-1]["progress"] < 1 and seen[-1]["state"]["sampling_step"] > 0

    assert wait_until(moving, timeout=120), seen[-3:]
    state = seen[-1]["state"]
    assert state["job_count"] == 2 and state["sampling_steps"] == 60
    assert wait_until(lambda: api.get_progress()["current_image"] is not None, timeout=60)
    png = base64.b64decode(api.get_progress()["current_image"] or "")
    assert png.startswith(b"\x89PNG")
    assert api.interrupt() == {}
    run.join(timeout=60)
    info = answer["r"].info
    assert info["status"] == "cancelled" and info["sd_model_name"] == "demo-tiny"
    assert len(answer["r"].images) < 6
    assert api.get_progress()["state"]["job_count"] == 0


@pytest.mark.parametrize("body, field", [
    ({"steps": 1}, "steps"),
    ({"cfg_scale": -1}, "cfg_scale"),
    ({"width": 60}, "width"),
    ({"sampler_name": "LMS"}, "sampler_name"),
    ({"scheduler": "karras"}, "scheduler"),
    ({"batch_size": 0}, "batch_size"),
    ({"seed": -2}, "seed"),
    ({"prompt": " "}, "prompt"),
    ({"batch_size": 100, "n_iter": 101}, "n_iter"),
    ({"override_settings": {"sd_model_checkpoint": "nope"}}, "override_settings.sd_model_checkpoint"),
    ({"override_settings": {"sd_model_checkpoint": "tiny-wan21"}}, "override_settings.sd_model_checkpoint"),
    ({"steps": "many"}, "steps"),
])
def test_bad_values_are_422_naming_the_field(served: Served, body: dict, field: str) -> None:
    r = requests.post(f"{served.http.url}/sdapi/v1/txt2img", json={"prompt": PROMPT, **body}, timeout=30)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert ".".join(detail["loc"][1:]) == field and detail["msg"]


def test_options_refuse_an_unknown_model(served: Served) -> None:
    r = requests.post(f"{served.http.url}/sdapi/v1/options", json={"sd_model_checkpoint": "sd-xl-nope"}, timeout=30)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "sd_model_checkpoint"]


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[tuple[FakeFarm, str, TokenStore]]:
    """The API as off loopback: a credential on every request (the head's own user tokens)."""
    farm = FakeFarm()
    tokens = HeadCredentials.load_or_create(tmp_path / "head").tokens
    app = make_app(farm, authenticate=token_users(tokens.identify), require_credentials=True)
    server = HttpServer(app, "127.0.0.1", 0)
    server.start()
    yield farm, server.url, tokens
    server.stop()


def test_off_loopback_every_request_needs_a_user_token(guarded: tuple[FakeFarm, str, TokenStore]) -> None:
    farm, url, tokens = guarded
    secret = tokens.issue_user_token("ana")
    assert requests.get(f"{url}/sdapi/v1/options", timeout=10).status_code == 401
    assert requests.get(f"{url}/sdapi/v1/options", auth=("ana", "wrong"), timeout=10).status_code == 401
    assert requests.get(f"{url}/sdapi/v1/sd-models", headers={"Authorization": "Bearer nope"},
                        timeout=10).status_code == 401
    for not_a_user in (tokens.join_token, tokens.issue_node_token("pc1")):  # PCs' credentials open no API
        assert requests.get(f"{url}/sdapi/v1/options", auth=("ana", not_a_user), timeout=10).status_code == 401
    assert requests.get(f"{url}/sdapi/v1/options", headers={"Authorization": f"Bearer {secret}"},
                        timeout=10).status_code == 200
    # A1111's --api-auth style: the token's user owns the job, whatever user name the client claims;
    # interrupt cancels it and txt2img answers.
    api = webuiapi.WebUIApi(host="127.0.0.1", port=int(url.rsplit(":", 1)[1]), username="mallory", password=secret)
    answer: dict[str, webuiapi.WebUIApiResult] = {}
    run = threading.Thread(target=lambda: answer.update(r=api.txt2img(prompt=PROMPT, width=64, height=64)))
    run.start()
    assert wait_until(lambda: bool(farm.jobs), timeout=10)
    (job,) = farm.jobs.values()
    assert job.spec.owner == "ana" and job.spec.model == "demo-shapes"
    assert api.get_progress()["state"]["job_count"] == 1
    api.interrupt()
    run.join(timeout=10)
    assert answer["r"].info["status"] == "cancelled" and answer["r"].images == []


def test_tls_with_the_heads_certificate(tmp_path: Path) -> None:
    creds = HeadCredentials.load_or_create(tmp_path / "head")
    app = make_app(FakeFarm(), authenticate=None, require_credentials=False)
    server = HttpServer(app, "127.0.0.1", 0, tls=(creds.folder / "head.key", creds.folder / "head.pem"))
    server.start()
    try:
        context = ssl.create_default_context(cafile=str(creds.folder / "ca.pem"))
        context.check_hostname = False  # the certificate names the role `farm-head`, not this address
        with urllib.request.urlopen(f"{server.url}/sdapi/v1/options", context=context, timeout=10) as r:
            assert server.url.startswith("https://") and json.loads(r.read())["sd_model_checkpoint"] == "demo-shapes"
        with pytest.raises(OSError):  # a client that trusts another CA is refused the handshake
            urllib.request.urlopen(f"{server.url}/sdapi/v1/options", context=ssl.create_default_context(), timeout=10)
    finally:
        server.stop()


def test_http_address_rules() -> None:
    assert parse_http("127.0.0.1:7860") == ("127.0.0.1", 7860) and parse_http("off") is None
    assert parse_http("[::1]:80") == ("::1", 80)
    for bad in ("7860", "host:", "host:99999", "on"):
        with pytest.raises(InvalidInput, match="--http"):
            parse_http(bad)
    assert not needs_credentials("127.0.0.1") and needs_credentials("0.0.0.0") and needs_credentials("192.168.1.10")


def test_a_port_in_use_is_one_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(FarmError, match=f"cannot serve HTTP on 127.0.0.1:{port}: .*--http off"):
            HttpServer(make_app(FakeFarm(), authenticate=None, require_credentials=False), "127.0.0.1", port)


@pytest.mark.parametrize("args, message", [
    (["--http", "7860"], "farm: --http: must be ADDR:PORT (e.g. 127.0.0.1:7860 or 0.0.0.0:7860) or off, got '7860'"),
    (["--http", "off", "--http-tls"], "farm: --http-tls: needs the HTTP API on: drop --http off"),
])
def test_bad_http_flags_are_refused_before_the_head_starts(capsys: pytest.CaptureFixture[str], args: list[str],
                                                           message: str) -> None:
    assert main(["head", *args]) == 2 and capsys.readouterr().err == message + "\n"
