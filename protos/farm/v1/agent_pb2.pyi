from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Gpu(_message.Message):
    __slots__ = ("index", "name", "vram_total_gib", "vram_used_gib", "vram_free_gib", "utilization", "temperature_c", "power_w", "simulated")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VRAM_TOTAL_GIB_FIELD_NUMBER: _ClassVar[int]
    VRAM_USED_GIB_FIELD_NUMBER: _ClassVar[int]
    VRAM_FREE_GIB_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    POWER_W_FIELD_NUMBER: _ClassVar[int]
    SIMULATED_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    vram_total_gib: float
    vram_used_gib: float
    vram_free_gib: float
    utilization: float
    temperature_c: float
    power_w: float
    simulated: bool
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ..., vram_total_gib: _Optional[float] = ..., vram_used_gib: _Optional[float] = ..., vram_free_gib: _Optional[float] = ..., utilization: _Optional[float] = ..., temperature_c: _Optional[float] = ..., power_w: _Optional[float] = ..., simulated: _Optional[bool] = ...) -> None: ...

class Process(_message.Message):
    __slots__ = ("pid", "name", "uses_gpu")
    PID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    USES_GPU_FIELD_NUMBER: _ClassVar[int]
    pid: int
    name: str
    uses_gpu: bool
    def __init__(self, pid: _Optional[int] = ..., name: _Optional[str] = ..., uses_gpu: _Optional[bool] = ...) -> None: ...

class Hardware(_message.Message):
    __slots__ = ("hostname", "os", "cpu_count", "ram_total_gib", "gpus", "simulated")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    CPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    RAM_TOTAL_GIB_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    SIMULATED_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    os: str
    cpu_count: int
    ram_total_gib: float
    gpus: _containers.RepeatedCompositeFieldContainer[Gpu]
    simulated: bool
    def __init__(self, hostname: _Optional[str] = ..., os: _Optional[str] = ..., cpu_count: _Optional[int] = ..., ram_total_gib: _Optional[float] = ..., gpus: _Optional[_Iterable[_Union[Gpu, _Mapping]]] = ..., simulated: _Optional[bool] = ...) -> None: ...

class OwnerPolicy(_message.Message):
    __slots__ = ("vram_cap_gib", "active_hours", "pause_programs", "pause_on_other_gpu_process")
    VRAM_CAP_GIB_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_HOURS_FIELD_NUMBER: _ClassVar[int]
    PAUSE_PROGRAMS_FIELD_NUMBER: _ClassVar[int]
    PAUSE_ON_OTHER_GPU_PROCESS_FIELD_NUMBER: _ClassVar[int]
    vram_cap_gib: float
    active_hours: str
    pause_programs: _containers.RepeatedScalarFieldContainer[str]
    pause_on_other_gpu_process: bool
    def __init__(self, vram_cap_gib: _Optional[float] = ..., active_hours: _Optional[str] = ..., pause_programs: _Optional[_Iterable[str]] = ..., pause_on_other_gpu_process: _Optional[bool] = ...) -> None: ...

class Telemetry(_message.Message):
    __slots__ = ("time", "gpus", "cpu_percent", "ram_used_gib", "ram_total_gib", "state", "reason", "worker_running", "policy", "by_operator", "worker_starts")
    TIME_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    RAM_USED_GIB_FIELD_NUMBER: _ClassVar[int]
    RAM_TOTAL_GIB_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    WORKER_RUNNING_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    BY_OPERATOR_FIELD_NUMBER: _ClassVar[int]
    WORKER_STARTS_FIELD_NUMBER: _ClassVar[int]
    time: float
    gpus: _containers.RepeatedCompositeFieldContainer[Gpu]
    cpu_percent: float
    ram_used_gib: float
    ram_total_gib: float
    state: str
    reason: str
    worker_running: bool
    policy: OwnerPolicy
    by_operator: bool
    worker_starts: int
    def __init__(self, time: _Optional[float] = ..., gpus: _Optional[_Iterable[_Union[Gpu, _Mapping]]] = ..., cpu_percent: _Optional[float] = ..., ram_used_gib: _Optional[float] = ..., ram_total_gib: _Optional[float] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., worker_running: _Optional[bool] = ..., policy: _Optional[_Union[OwnerPolicy, _Mapping]] = ..., by_operator: _Optional[bool] = ..., worker_starts: _Optional[int] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TelemetryRequest(_message.Message):
    __slots__ = ("interval_s",)
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    interval_s: float
    def __init__(self, interval_s: _Optional[float] = ...) -> None: ...

class NodeCommand(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class AgentState(_message.Message):
    __slots__ = ("state", "reason")
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    state: str
    reason: str
    def __init__(self, state: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SetPolicyRequest(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: OwnerPolicy
    def __init__(self, policy: _Optional[_Union[OwnerPolicy, _Mapping]] = ...) -> None: ...
