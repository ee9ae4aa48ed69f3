"""Farm errors as gRPC status codes: every servicer (FarmControl, FarmModels, the PC's NodeAgent)
answers a failed call the same way, with the error's one-line message and the code a client can act
on, and an unexpected exception becomes INTERNAL instead of stopping the server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import grpc

from farm.contracts.errors import FarmError, InvalidInput, LimitReached, NotFound, PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)
T = TypeVar("T")

# First match wins: NotFound is an InvalidInput, every farm error a FarmError.
CODES: tuple[tuple[type[FarmError], grpc.StatusCode], ...] = (
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (LimitReached, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (FarmError, grpc.StatusCode.FAILED_PRECONDITION),  # e.g. DoesNotFit, an illegal status change
)


def answer(context: grpc.ServicerContext, fn: Callable[[], T]) -> T:
    """Run `fn` for one call, turning its error into a status code and its one line."""
    try:
        return fn()
    except FarmError as e:
        context.abort(next(code for kind, code in CODES if isinstance(e, kind)), str(e))
    except Exception as e:  # one bad call never stops the server
        log.exception("gRPC call failed")
        context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}")
    raise AssertionError("unreachable: abort raises")
