"""How the serving processes' PyTorch threads wait: set before torch is first imported, since OpenMP reads it once.

Serving runs the network's OpenMP threads beside the decode threads on the same cores. OpenMP's default lets a
thread spin for a while after each parallel region; here that spinning takes the cores the decode threads need, and
a decode thread that takes a core from a network thread in a parallel region stalls the other. Waiting passively
(the threads sleep at once) costs the network alone some speed but serves faster with decoding beside it: on this
project's 2-core CPU, Predictor.predict over 600 real files (decode threads, thumbnails, 2 network threads) went from
366 and 347 to 451 and 426 images/s with two-views-1, and stayed at 111/111 and 107/108 with release-1 (two
interleaved runs each; the network alone on tensors in memory: 958 against 762 images/s, which serving never sees).
"""

from __future__ import annotations

import os
import sys


def wait_passively() -> bool:
    """Make this process's OpenMP threads wait passively unless OMP_WAIT_POLICY is already set; call it before
    torch is imported. Returns whether the setting takes effect (False once torch is loaded)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return "torch" not in sys.modules
