"""Adapters over diffusers and torch: build or load pipelines, run segments, convert tensors.

This package is the only place that imports torch or diffusers, so the rest of the farm (planner,
coordinator, wire codec) stays importable and testable without them.
"""

import os

# Set before transformers and diffusers are first imported: they read these at import time, and
# their warnings and progress bars would garble the farm's own progress display.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
