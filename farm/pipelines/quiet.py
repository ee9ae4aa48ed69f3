"""Silence library chatter (progress bars, deprecation notes) that would garble the farm's own output."""

from __future__ import annotations

import logging
import warnings


def quiet_libraries() -> None:
    """The logging and warning settings (the environment variables are set in the package's __init__,
    before diffusers and transformers are first imported)."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*torchvision.*")
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)
