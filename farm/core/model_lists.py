"""Which models a PC takes, and what fetching one costs (pure).

An owner lists the models their PC may hold as fnmatch patterns (`farm join --models 'sd*,wan*'
--deny-models 'wan*14b*'`): a model is allowed when it matches an allow pattern (or there are none)
and no deny pattern. The planner never places a denied model's segments there and the head never
serves its files there. A model only the head holds is priced by its bytes over the node's measured
link speed, against waiting for a node that holds it.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from farm.contracts.errors import InvalidInput

MAX_PATTERNS = 64
MAX_PATTERN_CHARS = 200
# Bytes per second a node's link is priced at before its first transfer measured it (a wired
# gigabit LAN moves about 110 MB/s; this errs slow).
DEFAULT_LINK_BYTES_PER_S = 50e6
# A LoRA adapter is listed, synced and refused by the name `lora:NAME`: no Hugging Face id or diffusers
# folder is spelled so, and an owner's deny patterns can name adapters (`--deny-models 'lora:*'`).
ADAPTER_PREFIX = "lora:"


def adapter_key(name: str) -> str:
    """The name an adapter is listed and synced by: `lora:NAME`."""
    return ADAPTER_PREFIX + name


def adapter_of(model: str) -> str | None:
    """The adapter's name when `model` names one (`lora:NAME`), else None."""
    return model[len(ADAPTER_PREFIX):] if model.startswith(ADAPTER_PREFIX) else None


def parse_patterns(field: str, text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """'sd*,wan*' (or a list of patterns) -> ('sd*', 'wan*'); raises InvalidInput naming `field`."""
    items = text.split(",") if isinstance(text, str) else list(text)
    patterns = tuple(p.strip() for p in items if p.strip())
    if len(patterns) > MAX_PATTERNS:
        raise InvalidInput(field, f"at most {MAX_PATTERNS} patterns, got {len(patterns)}")
    for p in patterns:
        if len(p) > MAX_PATTERN_CHARS or not p.isprintable():
            raise InvalidInput(field, f"a pattern is 1 to {MAX_PATTERN_CHARS} printable characters, got {p[:40]!r}")
    return patterns


def allows(model: str, allow: tuple[str, ...], deny: tuple[str, ...]) -> bool:
    """Whether a PC with these lists may hold `model` (patterns match case-sensitively, as file names)."""
    if any(fnmatchcase(model, p) for p in deny):
        return False
    return not allow or any(fnmatchcase(model, p) for p in allow)


def allows_job(model: str, adapters: tuple[str, ...], allow: tuple[str, ...], deny: tuple[str, ...]) -> bool:
    """Whether a PC with these lists takes a job of `model` with these adapters: allow patterns name
    base models, so they leave adapters alone; a deny pattern refuses an adapter by `lora:NAME`."""
    return allows(model, allow, deny) and not any(fnmatchcase(adapter_key(a), p) for a in adapters for p in deny)


def transfer_seconds(size: int, link_bytes_per_s: float) -> float:
    """Seconds to fetch `size` bytes over a link measured at `link_bytes_per_s` (0: not measured yet)."""
    return size / (link_bytes_per_s if link_bytes_per_s > 0 else DEFAULT_LINK_BYTES_PER_S)
