"""The head's HTTP API: AUTOMATIC1111's `/sdapi/v1` routes over any `FarmService`, and `/metrics`.

Every request of an A1111 front end or `webuiapi` script becomes farm calls: a txt2img is one job
(its batch_size x n_iter samples spread over the nodes) owned by the caller, progress reads that
job's view and latest preview, interrupt cancels it. FarmService calls block (they may cross the
network), so each runs on a worker thread and the event loop stays free for other callers.

Who is calling: on loopback anyone on this PC may (the owner is `local`); off loopback every request
needs a user token (or the admin token), as HTTP Basic (A1111's `--api-auth`: the password is the
token; the user name is ignored) or as a Bearer token. The jobs' owner is the token's user, so a
caller sees and interrupts only their own jobs. `authenticate(user, token)` decides (`token_users`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from farm.api import a1111
from farm.cluster.tokens import Principal, Role
from farm.contracts.control import FarmService, JobView
from farm.contracts.domain import JobStatus
from farm.contracts.errors import FarmError, InvalidInput, LimitReached, NotFound, Unreachable
from farm.core.transitions import ENDED

# (user name from HTTP Basic or None, token) -> the owner of the caller's jobs, or None: refused.
Authenticate = Callable[[str | None, str], str | None]
LOCAL_OWNER = "local"
POLL_S = 0.25
OWNER = re.compile(r"[A-Za-z0-9_.@-]{1,64}")


class NotAllowed(FarmError):
    """A request without a credential the API accepts (answered 401)."""


@dataclass
class Caller:
    """What the API remembers per owner: the model chosen through options, and its jobs in flight."""

    model: str
    jobs: list[tuple[str, a1111.Txt2Img]] = field(default_factory=list)


def token_users(identify: Callable[[str | None], Principal | None]) -> Authenticate:
    """The head's user tokens (and the admin token): the owner is the token's user, whatever user name
    a Basic header claims; the join token and node tokens are refused."""

    def authenticate(user: str | None, token: str) -> str | None:
        principal = identify(token)
        return principal.name if principal is not None and principal.role in (Role.USER, Role.ADMIN) else None

    return authenticate


def _credentials(header: str) -> tuple[str | None, str]:
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return None, value.strip()
    if scheme.lower() == "basic":
        try:
            user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise NotAllowed("Authorization: not valid HTTP Basic credentials") from None
        return user or None, password
    raise NotAllowed("Authorization: give the token as HTTP Basic password or as a Bearer token")


def _error(status: int, field: str | None, message: str) -> JSONResponse:
    """FastAPI's own validation shape, so A1111 clients show the field."""
    loc = ["body", *field.split(".")] if field else ["body"]
    return JSONResponse({"detail": [{"loc": loc, "msg": message, "type": "value_error"}]}, status_code=status)


def make_app(service: FarmService, *, authenticate: Authenticate | None, require_credentials: bool,
             metrics: Callable[[], tuple[bytes, str]] | None = None,
             default_model: str = a1111.DEFAULT_MODEL) -> FastAPI:
    """The API over `service`; with `require_credentials` (off loopback) every route needs one."""
    app = FastAPI(title="farm: AUTOMATIC1111-compatible API", version="1")
    callers: dict[str, Caller] = {}

    def caller(request: Request) -> str:
        header = request.headers.get("authorization")
        if header is None:
            if require_credentials:
                raise NotAllowed("this API needs a token: HTTP Basic (any user name, the token as password) "
                                 "or Authorization: Bearer TOKEN")
            return LOCAL_OWNER
        user, token = _credentials(header)
        owner = authenticate(user, token) if authenticate is not None else None
        if owner is None:
            raise NotAllowed("the token was refused")
        if not OWNER.fullmatch(owner):
            raise NotAllowed("user name: must be 1 to 64 letters, digits, '.', '@', '_' or '-'")
        return owner

    def state(owner: str) -> Caller:
        return callers.setdefault(owner, Caller(default_model))

    @app.exception_handler(NotAllowed)
    async def not_allowed(request: Request, e: NotAllowed) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=401, headers={"WWW-Authenticate": 'Basic realm="farm"'})

    @app.exception_handler(InvalidInput)
    async def invalid(request: Request, e: InvalidInput) -> JSONResponse:
        if isinstance(e, NotFound):
            return JSONResponse({"detail": str(e)}, status_code=404)
        return _error(422, e.field, str(e).partition(": ")[2])

    @app.exception_handler(FarmError)
    async def farm_error(request: Request, e: FarmError) -> JSONResponse:
        status = 503 if isinstance(e, Unreachable) else 429 if isinstance(e, LimitReached) else 409
        return JSONResponse({"error": type(e).__name__, "detail": str(e)}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {"loc": ["body"], "msg": "invalid request"}
        field = ".".join(str(p) for p in first["loc"][1:]) or None
        return _error(422, field, first["msg"])

    @app.post("/sdapi/v1/txt2img", response_model=a1111.TextToImageResponse)
    async def txt2img(body: a1111.Txt2ImgRequest, request: Request,
                      owner: str = Depends(caller)) -> a1111.TextToImageResponse:
        return await render(body, request, owner, None)

    @app.post("/sdapi/v1/img2img", response_model=a1111.TextToImageResponse)
    async def img2img(body: a1111.Img2ImgRequest, request: Request,
                      owner: str = Depends(caller)) -> a1111.TextToImageResponse:
        """A1111's img2img: one init image (base64), resized to width x height, re-noised by
        denoising_strength; stored once on the head by its hash, sent only to the node that encodes it."""
        return await render(body, request, owner, a1111.init_image(body))

    async def render(body: a1111.Txt2ImgRequest, request: Request, owner: str,
                     image: bytes | None) -> a1111.TextToImageResponse:
        me = state(owner)
        job = a1111.to_job(body, me.model, owner, image)
        started = time.strftime("%Y%m%d%H%M%S")
        job_id = await run_in_threadpool(service.submit, job.spec, init_image=image)
        me.jobs.append((job_id, job))
        try:
            view = await _until_final(service, job_id, request)
        finally:  # progress and interrupt look at unfinished jobs only
            me.jobs.remove((job_id, job))
        if view.status == JobStatus.FAILED:
            raise FarmError(f"job {job_id} failed: {view.error}")
        pngs = [await run_in_threadpool(service.read_output, job_id, i) for i in range(len(view.outputs))]
        return a1111.answer(body, job, view, pngs, started)

    @app.get("/sdapi/v1/progress", response_model=a1111.ProgressResponse)
    async def progress(skip_current_image: bool = False, owner: str = Depends(caller)) -> a1111.ProgressResponse:
        return await run_in_threadpool(_progress, service, state(owner), skip_current_image)

    @app.post("/sdapi/v1/interrupt")
    async def interrupt(owner: str = Depends(caller)) -> dict[str, Any]:
        """Cancel the caller's unfinished jobs; their txt2img answers with the images already done."""
        for job_id, _ in list(state(owner).jobs):
            await run_in_threadpool(_cancel, service, job_id)
        return {}

    @app.get("/sdapi/v1/options")
    async def get_options(owner: str = Depends(caller)) -> dict[str, Any]:
        return {"sd_model_checkpoint": state(owner).model, "sd_checkpoint_hash": None, "samples_format": "png"}

    @app.post("/sdapi/v1/options")
    async def set_options(options: dict[str, Any], owner: str = Depends(caller)) -> None:
        """Options are kept per owner, so one user's model choice is not another's."""
        if "sd_model_checkpoint" in options:
            state(owner).model = a1111.model_title(options["sd_model_checkpoint"])

    @app.get("/sdapi/v1/sd-models", response_model=list[a1111.SDModelItem])
    async def sd_models(owner: str = Depends(caller)) -> list[a1111.SDModelItem]:
        return a1111.model_items([c.model for c in callers.values()])

    @app.get("/sdapi/v1/loras", response_model=list[a1111.LoraItem])
    async def loras(owner: str = Depends(caller)) -> list[a1111.LoraItem]:
        return await run_in_threadpool(a1111.lora_items)  # hashes each file once (`farm.jobs.loras`)

    @app.get("/sdapi/v1/samplers", response_model=list[a1111.SamplerItem])
    async def samplers(owner: str = Depends(caller)) -> list[a1111.SamplerItem]:
        return a1111.sampler_items()

    @app.get("/sdapi/v1/schedulers", response_model=list[a1111.SchedulerItem])
    async def schedulers(owner: str = Depends(caller)) -> list[a1111.SchedulerItem]:
        return a1111.scheduler_items()

    if metrics is not None:
        @app.get("/metrics")
        async def scrape(owner: str = Depends(caller)) -> Response:
            body, content_type = await run_in_threadpool(metrics)
            return Response(body, media_type=content_type)

    return app


async def _until_final(service: FarmService, job_id: str, request: Request) -> JobView:
    """Wait for the job without holding a thread; a caller that hangs up cancels it."""
    while True:
        view = await run_in_threadpool(service.get_job, job_id)
        if view.status in ENDED:
            return view
        if await request.is_disconnected():
            await run_in_threadpool(_cancel, service, job_id)
        await asyncio.sleep(POLL_S)


def _cancel(service: FarmService, job_id: str) -> None:
    try:
        service.cancel_job(job_id)
    except InvalidInput:  # it ended meanwhile: nothing left to stop
        pass


def _progress(service: FarmService, me: Caller, skip_image: bool) -> a1111.ProgressResponse:
    """A1111's progress of the caller's oldest unfinished job (idle: all zero)."""
    for job_id, job in me.jobs:
        view = service.get_job(job_id)
        if view.status in ENDED:
            continue
        steps = job.spec.run_steps
        state = {"skipped": False, "interrupted": False, "job": f"farm {job_id}", "job_count": job.n_iter,
                 "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(view.submitted_at)),
                 "job_no": min(view.samples_done // job.batch_size, job.n_iter - 1),
                 "sampling_step": view.steps_done // max(view.samples_total, 1), "sampling_steps": steps}
        image = None if skip_image else _preview(service, view)
        return a1111.ProgressResponse(progress=view.progress, eta_relative=view.eta_s or 0.0, state=state,
                                      current_image=image, textinfo=f"{view.status}: "
                                      f"{view.samples_done}/{view.samples_total} samples")
    idle = {"skipped": False, "interrupted": False, "job": "", "job_count": 0, "job_timestamp": "0", "job_no": 0,
            "sampling_step": 0, "sampling_steps": 0}
    return a1111.ProgressResponse(progress=0.0, eta_relative=0.0, state=idle)


def _preview(service: FarmService, view: JobView) -> str | None:
    """The latest preview of a sample rendering now (base64 PNG), if a node has sent one."""
    for shard in sorted(view.shards, key=lambda s: not s.node):  # running shards first
        if shard.step >= shard.bounds[-1][1]:
            continue
        for sample in shard.samples:
            png = service.preview(view.id, sample)
            if png is not None:
                return base64.b64encode(png).decode()
    return None
