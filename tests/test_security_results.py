"""Nothing a node says is trusted (issue 15, point 3): a segment's reply is msgpack bytes in the farm's
own format, decoded by the head's code; a reply holding a pickled object, an extension type, an image
of another dtype or size, or extra fields is refused, charged to the node it was sent to, and the job
completes on the other nodes."""

from __future__ import annotations

import pickle
import sys

import msgpack
import pytest
from test_coordinator import MemorySink, ScriptedExecutor, run_until_final, small_job

from farm.contracts.domain import JobStatus, SegmentResult, SegmentTask
from farm.runtime.coordinator import Coordinator
from farm.runtime.executor import segment_outcome
from farm.wire import result_codec
from farm.wire.result_codec import NodeError, ResultError
from node.simulated import simulated_nodes

BAD = "sim-24gb"


class Payload:
    """An object a hostile node would like the head to unpickle (its reduce would run a command)."""

    def __reduce__(self):
        return (print, ("code of the node's making ran on the head",))


def honest(task: SegmentTask, node: str) -> SegmentResult:
    common = dict(shard_id=task.shard_id, index=task.index, node=node, gpu="fake", seconds=1.0)
    if task.last:
        size = task.job.width * task.job.height * 3 * task.job.frames
        return SegmentResult(**common, images=tuple(bytes(size) for _ in task.samples))
    return ScriptedExecutor._outcome(ScriptedExecutor([]), node, task)


def body(task: SegmentTask, node: str) -> dict:
    return msgpack.unpackb(result_codec.encode(honest(task, node), result_codec.image_shape(task.job)))


def hostile(kind: str, task: SegmentTask, node: str) -> object:
    """The bytes (or object) a hostile node sends back for `task`."""
    b = body(task, node)
    if kind == "pickled object":
        return pickle.dumps(Payload())
    if kind == "not bytes":
        return {"shard_id": task.shard_id}
    if kind == "extension type":
        b["loaded"] = [msgpack.ExtType(42, b"\x80\x04")]
    elif kind == "extra field":
        b["__reduce__"] = "os.system"
    elif kind == "wrong dtype":
        b["images"] = [{**i, "dtype": "float32"} for i in b["images"]] or \
            [{"dtype": "object", "shape": [1], "data": b""}]
    elif kind == "oversized array":
        b["images"] = [{**i, "shape": [1, 4096, 4096, 3], "data": bytes(4096 * 4096 * 3)} for i in b["images"]] or \
            [{"dtype": "uint8", "shape": [1, 4096, 4096, 3], "data": bytes(4096 * 4096 * 3)}]
    elif kind == "wrong type":
        b["seconds"] = "1e6"
    return msgpack.packb(b, use_bin_type=True)


KINDS = ("pickled object", "not bytes", "extension type", "extra field", "wrong dtype", "oversized array",
         "wrong type")


class Hostile(ScriptedExecutor):
    """Replies as bytes, decoded by the head's own decoder (`segment_outcome`); `BAD` replies `kind`."""

    def __init__(self, kind: str) -> None:
        super().__init__(simulated_nodes())
        self.kind = kind

    def _outcome(self, node: str, task: SegmentTask):
        reply = hostile(self.kind, task, node) if node == BAD else \
            result_codec.encode(super()._outcome(node, task), result_codec.image_shape(task.job))
        return segment_outcome(node, reply, result_codec.image_shape(task.job))


@pytest.mark.parametrize("kind", KINDS)
def test_a_hostile_reply_is_refused_charged_to_its_node_and_the_job_completes_elsewhere(kind: str, capsys) -> None:
    executor, sink = Hostile(kind), MemorySink()
    c = Coordinator(executor, sink, clock=lambda: 1000.0, max_failures=50, max_segment_steps=2)
    job_id = c.submit(small_job())
    run_until_final(c, job_id)
    assert c.get_job(job_id).status == JobStatus.DONE, kind
    assert sorted(i for _, i, _ in sink.written) == list(range(6))
    failed = [e for e in c.events(0) if e.kind == "segment_failed"]
    assert failed and all(e.node == BAD for e in failed), kind
    assert c.state.jobs[job_id].node_failures[BAD] >= 3, kind
    assert "ran on the head" not in capsys.readouterr().out


def test_the_decoder_names_what_is_wrong_in_one_line() -> None:
    shape = (1, 8, 8, 3)
    ok = SegmentResult("j/s0", 0, "n", "gpu", 1.0, images=(bytes(8 * 8 * 3),))
    assert result_codec.decode(result_codec.encode(ok, shape), shape) == ok
    cases = {
        "pickle": (pickle.dumps(Payload()), "not a"),
        "ext": (msgpack.packb({"format": "farm.result", "x": msgpack.ExtType(1, b"")}), "extension type 1"),
        "version": (msgpack.packb({"format": "farm.result", "version": 99, "kind": "ok"}), "version"),
        "too big": (bytes(64), "allowed: 0 to 10"),
    }
    for name, (payload, words) in cases.items():
        with pytest.raises(ResultError) as e:
            result_codec.decode(payload, shape, max_bytes=10 if name == "too big" else result_codec.MAX_BYTES)
        assert words in str(e.value) and "\n" not in str(e.value), name
    other = result_codec.encode(ok, (1, 4, 4, 3))
    with pytest.raises(ResultError, match=r"shape \[1, 4, 4, 3\] \(allowed: \[1, 8, 8, 3\]"):
        result_codec.decode(other, shape)
    error = result_codec.decode(result_codec.encode_error("CUDAError", "out of memory"), shape)
    assert error == NodeError("CUDAError", "out of memory")


class EvilWorker:
    """A modified node's actor: replies with a pickled object instead of the farm's format."""

    def run(self, task: SegmentTask):  # type: ignore[no-untyped-def]
        yield pickle.dumps(Payload())  # a streaming generator, as `SegmentWorker.run` is

    def pid(self) -> int:
        return 0


@pytest.mark.slow
def test_over_ray_a_node_replying_a_pickle_fails_its_segment_and_the_job_completes(embedded, tmp_path,
                                                                                    capsys) -> None:
    """Through real Ray actors: the hostile node's reply is refused by the head's decoder."""
    import ray
    from waiting import ready

    from farm.cli.demo import demo_job
    from farm.runtime.executor import NODE_RESOURCE, RayExecutor
    from farm.runtime.outputs import PngWriter

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    executor = RayExecutor(embedded.nodes())
    try:
        executor.actors[BAD] = ray.remote(EvilWorker).options(num_cpus=0, resources={NODE_RESOURCE + BAD: 1}).remote()
        c = Coordinator(executor, PngWriter(tmp_path), max_segment_steps=2, max_failures=50)
        ready(c)
        view = c.render(demo_job(steps=2, seeds=1))
        assert view.status == JobStatus.DONE and len(view.outputs) == 4
        failed = [e for e in c.events(0) if e.kind == "segment_failed"]
        assert failed and all(e.node == BAD and "bad result" in e.message for e in failed)
        assert "ran on the head" not in capsys.readouterr().out
    finally:
        executor.shutdown()
