"""A real local Ray (2 CPUs, loopback, no dashboard), started once per test module that asks."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    import os

    import ray

    os.environ.setdefault("RAY_worker_niceness", "0")  # as trading_agents.grid.run starts Ray
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 * 2**20,
        log_to_driver=False,
        logging_level=logging.ERROR,
        _node_ip_address="127.0.0.1",
    )
    try:
        yield
    finally:
        ray.shutdown()
