"""No input crashes the coordinator or loses queued work: random job fields, random control calls
with random arguments, in random order. Each call either works or raises a FarmError (one line for
the user); afterwards every accepted job is still there and the queue still runs to the end."""

from __future__ import annotations

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_coordinator import MemorySink, ScriptedExecutor

from farm.contracts.domain import JobStatus
from farm.contracts.errors import FarmError
from farm.jobs.jobspec import make_job
from farm.runtime.coordinator import Coordinator
from node.simulated import simulated_nodes

anything = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                     st.text(max_size=12), st.lists(st.text(max_size=6), max_size=3))
job_fields = st.fixed_dictionaries({}, optional={
    "model": st.one_of(st.sampled_from(["demo-tiny", "tiny-sdxl", "nope"]), anything),
    "prompts": st.one_of(st.lists(st.text(string.ascii_letters + " ", max_size=10), max_size=3), anything),
    "seeds": st.one_of(st.integers(-2, 3), anything),
    "steps": st.one_of(st.integers(-2, 6), anything),
    "width": st.one_of(st.sampled_from([8, 60, 64, 128, 4096]), anything),
    "guidance": st.one_of(st.floats(-2, 60), anything),
    "sampler": st.one_of(st.sampled_from(["ddim", "euler_a", "heun", "flow_euler", "x"]), anything),
    "priority": st.one_of(st.integers(-200, 200), anything),
    "frames": st.one_of(st.integers(-1, 3), anything),
})
calls = st.lists(st.tuples(
    st.sampled_from(["submit", "cancel_job", "pause_job", "resume_job", "retry_job", "set_priority", "move_job",
                     "pause_node", "drain_node", "resume_node", "preview", "get_job", "tick"]),
    job_fields, st.integers(0, 5), anything,
), max_size=25)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls)
def test_random_calls_never_crash_or_lose_work(ops) -> None:
    c = Coordinator(ScriptedExecutor(simulated_nodes()), MemorySink(), max_segment_steps=2)
    accepted: list[str] = []
    node_names = [n.name for n in simulated_nodes()] + ["ghost"]
    for name, fields, pick, arg in ops:
        job_id = accepted[pick % len(accepted)] if accepted and pick < 4 else f"j-{pick}"
        try:
            if name == "submit":
                accepted.append(c.submit(make_job(**{"prompts": ["a"], **fields})))
            elif name == "tick":
                c.tick(0)
            elif name in ("pause_node", "drain_node", "resume_node"):
                getattr(c, name)(node_names[pick % len(node_names)])
            elif name == "set_priority":
                c.set_priority(job_id, arg)
            elif name == "move_job":
                c.move_job(job_id, arg if isinstance(arg, int) and not isinstance(arg, bool) else pick - 2)
            elif name == "preview":
                c.preview(job_id, pick)
            else:
                getattr(c, name)(job_id)
        except FarmError as e:
            assert "\n" not in str(e)
    assert [j.id for j in c.list_jobs()] == accepted
    for n in node_names[:-1]:
        c.resume_node(n)
    for j in accepted:
        if c.get_job(j).status == JobStatus.PAUSED:
            c.resume_job(j)
        if c.get_job(j).status == JobStatus.FAILED:
            c.retry_job(j)
    for _ in range(300):
        c.tick(0)
    assert all(c.get_job(j).status in (JobStatus.DONE, JobStatus.CANCELLED) for j in accepted)
