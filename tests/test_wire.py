"""The checkpoint codec: exact round trips, and refusal of anything that is not a checkpoint."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farm.contracts.errors import CheckpointError
from farm.wire import checkpoint_codec as wire
from farm.wire.checkpoint import Checkpoint, RawTensor


def make_checkpoint(batch: int = 2) -> Checkpoint:
    latents = RawTensor("float32", (batch, 4, 2, 2), struct.pack(f"<{batch * 16}f", *range(batch * 16)))
    embeds = RawTensor("bfloat16", (2 * batch, 3, 2), bytes(range(24 * batch)))
    return Checkpoint(
        model="demo-tiny", family="sd15", sampler="dpmpp_2m", step=3, steps=10, guidance=7.5, width=64,
        height=64, frames=1, seeds=tuple(range(batch)), latents=latents,
        conditioning={"prompt_embeds": embeds, "pooled": RawTensor("float32", (batch, 1), bytes(4 * batch))},
        scheduler_state={"_step_index": 3, "lower_order_nums": 2, "model_outputs": [None, latents],
                         "sigmas": RawTensor("float64", (2,), struct.pack("<2d", 1.5, 0.0)), "flag": True},
        rng_states=tuple(bytes([i]) * 16 for i in range(batch)),
    )


def test_round_trip_is_exact() -> None:
    cp = make_checkpoint()
    assert wire.decode(wire.encode(cp)) == cp


def test_every_truncation_is_refused() -> None:
    payload = wire.encode(make_checkpoint(1))
    for cut in range(len(payload)):
        with pytest.raises(CheckpointError):
            wire.decode(payload[:cut])


@pytest.mark.parametrize(
    "payload, needle",
    [
        (b"", "not a valid msgpack"),
        (b"\xc1garbage", "not a valid msgpack"),
        (msgpack.packb([1, 2, 3]), "not a farm checkpoint"),
        (msgpack.packb({"format": "farm.checkpoint", "version": 99}), "version 99"),
        (msgpack.packb({"format": "farm.checkpoint", "version": 1}), "missing field"),
    ],
)
def test_garbage_is_refused_with_a_clear_line(payload: bytes, needle: str) -> None:
    with pytest.raises(CheckpointError, match=needle):
        wire.decode(payload)


def test_oversized_payload_is_refused() -> None:
    payload = wire.encode(make_checkpoint())
    with pytest.raises(CheckpointError, match="over the"):
        wire.decode(payload, max_bytes=len(payload) - 1)


def test_tensor_whose_bytes_do_not_match_its_shape_is_refused() -> None:
    body = msgpack.unpackb(wire.encode(make_checkpoint()), raw=False, ext_hook=lambda c, d: msgpack.ExtType(c, d))
    body["latents"] = msgpack.ExtType(wire.TENSOR_EXT, msgpack.packb(["float32", [2, 4, 2, 2], b"\0" * 7]))
    with pytest.raises(CheckpointError, match="bad tensor"):
        wire.decode(msgpack.packb(body, use_bin_type=True))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_never_crash(data: bytes) -> None:
    try:
        wire.decode(data)
    except CheckpointError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_checkpoints_decode_or_are_refused(data: st.DataObject) -> None:
    payload = bytearray(wire.encode(make_checkpoint(1)))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(payload) - 1))
        payload[i] = data.draw(st.integers(0, 255))
    try:
        cp = wire.decode(bytes(payload))
    except CheckpointError:
        return
    assert isinstance(cp, Checkpoint)
