"""Named steps of the retention job where a crash test can stop it.

With ``SEQR_RETENTION_PAUSE_AT`` set to a step name, the job writes that name to the file named
by ``SEQR_RETENTION_PAUSE_FILE`` when it reaches the step and then sleeps, so a test can kill it
there with SIGKILL. Both variables are unset in normal use and the hook then does nothing.
"""

from __future__ import annotations

import enum
import logging
import os
import time
from pathlib import Path

logger = logging.getLogger(__name__)

PAUSE_AT_VARIABLE = "SEQR_RETENTION_PAUSE_AT"
PAUSE_FILE_VARIABLE = "SEQR_RETENTION_PAUSE_FILE"


class Step(enum.StrEnum):
    """Points of a retention run after which the durable state differs."""

    SHREDDED = "shredded"  # due documents are removed; no silo retrained yet
    # A silo's documents are decrypted in memory and its training starts. Nothing is stored until
    # training and calibration finish, so any later point of training leaves the same state.
    TRAINING = "training"
    TRAINED = "trained"  # the new version is stored in status training, not active
    ACTIVATED = "activated"  # the new version is active; the old one is retired, not destroyed


def pause_if_requested(step: Step) -> None:
    """Sleep forever at ``step`` when ``SEQR_RETENTION_PAUSE_AT`` names it; otherwise return at once."""
    if os.environ.get(PAUSE_AT_VARIABLE) != step.value:
        return
    marker = os.environ.get(PAUSE_FILE_VARIABLE)
    if marker:
        Path(marker).write_text(step.value)
    logger.warning("retention job paused at step %s (%s is set)", step.value, PAUSE_AT_VARIABLE)
    while True:
        time.sleep(1)
