from protos.farm.v1 import agent_pb2 as _agent_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobSpec(_message.Message):
    __slots__ = ("model", "prompts", "seeds", "seed", "steps", "width", "height", "guidance", "sampler", "negative_prompt", "priority", "owner", "frames", "loras", "strength", "init_image")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    LORAS_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    INIT_IMAGE_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompts: _containers.RepeatedScalarFieldContainer[str]
    seeds: int
    seed: int
    steps: int
    width: int
    height: int
    guidance: float
    sampler: str
    negative_prompt: str
    priority: int
    owner: str
    frames: int
    loras: _containers.RepeatedCompositeFieldContainer[Lora]
    strength: float
    init_image: str
    def __init__(self, model: _Optional[str] = ..., prompts: _Optional[_Iterable[str]] = ..., seeds: _Optional[int] = ..., seed: _Optional[int] = ..., steps: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., guidance: _Optional[float] = ..., sampler: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., priority: _Optional[int] = ..., owner: _Optional[str] = ..., frames: _Optional[int] = ..., loras: _Optional[_Iterable[_Union[Lora, _Mapping]]] = ..., strength: _Optional[float] = ..., init_image: _Optional[str] = ...) -> None: ...

class Lora(_message.Message):
    __slots__ = ("name", "weight", "sha256", "short_hash")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SHORT_HASH_FIELD_NUMBER: _ClassVar[int]
    name: str
    weight: float
    sha256: str
    short_hash: str
    def __init__(self, name: _Optional[str] = ..., weight: _Optional[float] = ..., sha256: _Optional[str] = ..., short_hash: _Optional[str] = ...) -> None: ...

class ShardView(_message.Message):
    __slots__ = ("id", "home", "samples", "bounds", "step", "node", "memory_mode")
    ID_FIELD_NUMBER: _ClassVar[int]
    HOME_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    BOUNDS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MODE_FIELD_NUMBER: _ClassVar[int]
    id: str
    home: str
    samples: _containers.RepeatedScalarFieldContainer[int]
    bounds: _containers.RepeatedScalarFieldContainer[int]
    step: int
    node: str
    memory_mode: str
    def __init__(self, id: _Optional[str] = ..., home: _Optional[str] = ..., samples: _Optional[_Iterable[int]] = ..., bounds: _Optional[_Iterable[int]] = ..., step: _Optional[int] = ..., node: _Optional[str] = ..., memory_mode: _Optional[str] = ...) -> None: ...

class NodeShare(_message.Message):
    __slots__ = ("node", "samples", "shards", "segments", "steps", "seconds")
    NODE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    node: str
    samples: int
    shards: int
    segments: int
    steps: int
    seconds: float
    def __init__(self, node: _Optional[str] = ..., samples: _Optional[int] = ..., shards: _Optional[int] = ..., segments: _Optional[int] = ..., steps: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class JobView(_message.Message):
    __slots__ = ("id", "spec", "status", "samples_done", "samples_total", "steps_done", "steps_total", "submitted_at", "position", "started_at", "finished_at", "eta_s", "error", "outputs", "shards", "shares")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_DONE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    STEPS_DONE_FIELD_NUMBER: _ClassVar[int]
    STEPS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    ETA_S_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    id: str
    spec: JobSpec
    status: str
    samples_done: int
    samples_total: int
    steps_done: int
    steps_total: int
    submitted_at: float
    position: int
    started_at: float
    finished_at: float
    eta_s: float
    error: str
    outputs: _containers.RepeatedScalarFieldContainer[str]
    shards: _containers.RepeatedCompositeFieldContainer[ShardView]
    shares: _containers.RepeatedCompositeFieldContainer[NodeShare]
    def __init__(self, id: _Optional[str] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., status: _Optional[str] = ..., samples_done: _Optional[int] = ..., samples_total: _Optional[int] = ..., steps_done: _Optional[int] = ..., steps_total: _Optional[int] = ..., submitted_at: _Optional[float] = ..., position: _Optional[int] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., eta_s: _Optional[float] = ..., error: _Optional[str] = ..., outputs: _Optional[_Iterable[str]] = ..., shards: _Optional[_Iterable[_Union[ShardView, _Mapping]]] = ..., shares: _Optional[_Iterable[_Union[NodeShare, _Mapping]]] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("name", "vram_gib", "speed", "gpu", "simulated")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VRAM_GIB_FIELD_NUMBER: _ClassVar[int]
    SPEED_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    SIMULATED_FIELD_NUMBER: _ClassVar[int]
    name: str
    vram_gib: float
    speed: float
    gpu: str
    simulated: bool
    def __init__(self, name: _Optional[str] = ..., vram_gib: _Optional[float] = ..., speed: _Optional[float] = ..., gpu: _Optional[str] = ..., simulated: _Optional[bool] = ...) -> None: ...

class NodeView(_message.Message):
    __slots__ = ("info", "status", "segment", "segment_step", "segment_total", "vram_used_gib", "utilization", "temperature_c", "power_w", "loaded", "policy", "pause_reason", "stored", "allow_models", "deny_models")
    INFO_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_STEP_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_TOTAL_FIELD_NUMBER: _ClassVar[int]
    VRAM_USED_GIB_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    POWER_W_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    PAUSE_REASON_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    ALLOW_MODELS_FIELD_NUMBER: _ClassVar[int]
    DENY_MODELS_FIELD_NUMBER: _ClassVar[int]
    info: NodeInfo
    status: str
    segment: str
    segment_step: int
    segment_total: int
    vram_used_gib: float
    utilization: float
    temperature_c: float
    power_w: float
    loaded: _containers.RepeatedScalarFieldContainer[str]
    policy: _agent_pb2.OwnerPolicy
    pause_reason: str
    stored: _containers.RepeatedScalarFieldContainer[str]
    allow_models: _containers.RepeatedScalarFieldContainer[str]
    deny_models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, info: _Optional[_Union[NodeInfo, _Mapping]] = ..., status: _Optional[str] = ..., segment: _Optional[str] = ..., segment_step: _Optional[int] = ..., segment_total: _Optional[int] = ..., vram_used_gib: _Optional[float] = ..., utilization: _Optional[float] = ..., temperature_c: _Optional[float] = ..., power_w: _Optional[float] = ..., loaded: _Optional[_Iterable[str]] = ..., policy: _Optional[_Union[_agent_pb2.OwnerPolicy, _Mapping]] = ..., pause_reason: _Optional[str] = ..., stored: _Optional[_Iterable[str]] = ..., allow_models: _Optional[_Iterable[str]] = ..., deny_models: _Optional[_Iterable[str]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("seq", "time", "kind", "job_id", "node", "message")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    time: float
    kind: str
    job_id: str
    node: str
    message: str
    def __init__(self, seq: _Optional[int] = ..., time: _Optional[float] = ..., kind: _Optional[str] = ..., job_id: _Optional[str] = ..., node: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("name", "csr_pem", "hardware", "agent_address", "policy")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    AGENT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    name: str
    csr_pem: str
    hardware: _agent_pb2.Hardware
    agent_address: str
    policy: _agent_pb2.OwnerPolicy
    def __init__(self, name: _Optional[str] = ..., csr_pem: _Optional[str] = ..., hardware: _Optional[_Union[_agent_pb2.Hardware, _Mapping]] = ..., agent_address: _Optional[str] = ..., policy: _Optional[_Union[_agent_pb2.OwnerPolicy, _Mapping]] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("node_token", "ca_pem", "cert_pem", "ray_address", "ray_token", "nodes", "ray_cert_pem", "ray_ca_pem")
    NODE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    RAY_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    RAY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    RAY_CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    RAY_CA_PEM_FIELD_NUMBER: _ClassVar[int]
    node_token: str
    ca_pem: str
    cert_pem: str
    ray_address: str
    ray_token: str
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    ray_cert_pem: str
    ray_ca_pem: str
    def __init__(self, node_token: _Optional[str] = ..., ca_pem: _Optional[str] = ..., cert_pem: _Optional[str] = ..., ray_address: _Optional[str] = ..., ray_token: _Optional[str] = ..., nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ..., ray_cert_pem: _Optional[str] = ..., ray_ca_pem: _Optional[str] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("spec", "init_image")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    INIT_IMAGE_FIELD_NUMBER: _ClassVar[int]
    spec: JobSpec
    init_image: bytes
    def __init__(self, spec: _Optional[_Union[JobSpec, _Mapping]] = ..., init_image: _Optional[bytes] = ...) -> None: ...

class SubmitReply(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobRef(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsReply(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobView]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobView, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SetPriorityRequest(_message.Message):
    __slots__ = ("job_id", "priority")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    priority: int
    def __init__(self, job_id: _Optional[str] = ..., priority: _Optional[int] = ...) -> None: ...

class MoveJobRequest(_message.Message):
    __slots__ = ("job_id", "offset")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    offset: int
    def __init__(self, job_id: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNodesReply(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeView]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeView, _Mapping]]] = ...) -> None: ...

class NodeRef(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StreamEventsRequest(_message.Message):
    __slots__ = ("after", "follow", "wait_s")
    AFTER_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    after: int
    follow: bool
    wait_s: float
    def __init__(self, after: _Optional[int] = ..., follow: _Optional[bool] = ..., wait_s: _Optional[float] = ...) -> None: ...

class PreviewRequest(_message.Message):
    __slots__ = ("job_id", "sample")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    sample: int
    def __init__(self, job_id: _Optional[str] = ..., sample: _Optional[int] = ...) -> None: ...

class PreviewReply(_message.Message):
    __slots__ = ("present", "png")
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    present: bool
    png: bytes
    def __init__(self, present: _Optional[bool] = ..., png: _Optional[bytes] = ...) -> None: ...

class OutputRequest(_message.Message):
    __slots__ = ("job_id", "index")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    index: int
    def __init__(self, job_id: _Optional[str] = ..., index: _Optional[int] = ...) -> None: ...

class OutputChunk(_message.Message):
    __slots__ = ("data", "size", "sha256")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    size: int
    sha256: str
    def __init__(self, data: _Optional[bytes] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class RotateTokenRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RotateTokenReply(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class IssueUserTokenRequest(_message.Message):
    __slots__ = ("user",)
    USER_FIELD_NUMBER: _ClassVar[int]
    user: str
    def __init__(self, user: _Optional[str] = ...) -> None: ...

class IssueUserTokenReply(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class RayTokenRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RayTokenReply(_message.Message):
    __slots__ = ("ray_address", "ray_token", "ray_cert_pem", "ray_ca_pem")
    RAY_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    RAY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RAY_CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    RAY_CA_PEM_FIELD_NUMBER: _ClassVar[int]
    ray_address: str
    ray_token: str
    ray_cert_pem: str
    ray_ca_pem: str
    def __init__(self, ray_address: _Optional[str] = ..., ray_token: _Optional[str] = ..., ray_cert_pem: _Optional[str] = ..., ray_ca_pem: _Optional[str] = ...) -> None: ...
