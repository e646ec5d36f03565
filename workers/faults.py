"""Fault injection for the fault campaign (`tests/test_faults.py`): inert unless IAD_FAULT_PAUSE is set.

`IAD_FAULT_PAUSE=<phase>` makes a worker stop for `IAD_FAULT_PAUSE_S` seconds (default 60) when a job first
reaches that phase, after creating the file `IAD_FAULT_MARKER`, so that a test can kill it (SIGKILL) at a
known point of a job instead of guessing with sleeps. Phases, from the job's progress messages:

- loading: claimed, the split and the data are being prepared;
- fitting: the model is being fitted;
- predicting: test images are being scored (maps of earlier categories may be on disk);
- writing: every map file is written, the result rows are not (one transaction follows).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PHASES = ("loading", "fitting", "predicting", "writing")
_MESSAGE_PHASES = (("preparing the split", "loading"), ("fitting", "fitting"), ("scored", "predicting"),
                   ("saving results", "writing"))
_paused: set[str] = set()


def phase_of(message: str) -> str | None:
    return next((phase for needle, phase in _MESSAGE_PHASES if needle in message), None)


def checkpoint(message: str) -> None:
    """Pause here when IAD_FAULT_PAUSE names the phase `message` belongs to (once per process and phase)."""
    wanted = os.environ.get("IAD_FAULT_PAUSE")
    if not wanted or wanted in _paused or phase_of(message) != wanted:
        return
    _paused.add(wanted)
    marker = os.environ.get("IAD_FAULT_MARKER")
    if marker:
        Path(marker).write_text(f"{wanted}\n{message}\n")
    time.sleep(float(os.environ.get("IAD_FAULT_PAUSE_S", "60")))
