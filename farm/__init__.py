"""farm: a render farm for home GPUs.

Layers (imports point down only):
    entry points  farm/cli.py
    adapters      coordinator, wire (msgpack), executor (Ray), pipelines (diffusers/torch), outputs (PIL)
    pure core     model, jobspec, costmodel, planner
    contracts     errors, ids, ports
"""

__version__ = "0.1.0"
