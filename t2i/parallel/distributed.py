"""Multi-host start-up: one process per host, all running the same command.

`launch/tpu_pod.sh` sets T2I_MULTIHOST=1 on every worker; then
`jax.distributed.initialize()` finds the coordinator from the TPU environment (or from
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID elsewhere). On one
machine nothing happens, so the same code runs on a laptop, in tests and on a pod.
"""

from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger("t2i.parallel")
_initialized = False


def maybe_initialize() -> None:
    global _initialized
    if _initialized or os.environ.get("T2I_MULTIHOST", "0") != "1":
        return
    jax.distributed.initialize()
    _initialized = True
    log.info(
        "process %d of %d, %d local and %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
