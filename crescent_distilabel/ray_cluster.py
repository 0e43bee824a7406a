"""The one module that knows Ray: connect to (or start) a cluster and turn a built Pipeline into a RayPipeline.

We call ``ray.init`` ourselves instead of passing ``ray_head_node_url`` to distilabel: distilabel would then
add ``runtime_env={"pip": requirements}`` (a pip install on every node, which offline clusters cannot do),
and an unreachable head would fail deep inside the pipeline. Connecting first fails before ``output_dir`` is
touched, with the address in the message.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

from distilabel.steps import StepResources

if TYPE_CHECKING:
    from distilabel.pipeline import Pipeline
    from distilabel.pipeline.ray import RayPipeline

    from crescent_distilabel.recipe import RayConfig

INSTALL_HINT = "pip install 'crescent-distilabel[ray]'"


class RayClusterError(RuntimeError):
    """Ray is missing or the cluster cannot be reached; nothing was run or written."""


def step_resources(cfg: RayConfig | None, stage: str) -> StepResources:
    """Replicas, CPUs and GPUs for one stage's step; one plain replica when Ray is off."""
    if cfg is None or not cfg.enabled:
        return StepResources(replicas=1)
    return StepResources(
        replicas=getattr(cfg.replicas, stage),
        cpus=cfg.cpus_per_replica,
        gpus=cfg.gpus_per_replica or None,
    )


def connect(cfg: RayConfig) -> bool:
    """``ray.init`` for the recipe's ``ray`` section; returns True when this call started the connection (so the
    run should ``ray.shutdown()`` it afterwards).

    Raises:
        RayClusterError: Ray is not installed, or the address cannot be reached (named in the message).
    """
    try:
        import ray
    except ImportError:
        raise RayClusterError(f"ray.enabled needs Ray, which is not installed: {INSTALL_HINT}") from None

    if ray.is_initialized():  # the caller connected already (e.g. a script submitted with `ray job submit`)
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports leave the machine
    address = cfg.address or "local"  # "local": a private instance, never someone else's running cluster
    kwargs: dict = {"address": address, "log_to_driver": True, "configure_logging": False}
    if address == "local":
        kwargs["include_dashboard"] = False
    try:
        _probe(address)
        ray.init(**kwargs)
    except Exception as err:  # ConnectionError, TimeoutError, ValueError for a malformed address, ...
        where = "start a local Ray instance" if address == "local" else f"connect to the Ray cluster at {address!r}"
        raise RayClusterError(
            f"could not {where}: {type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''}. "
            "Check that the head node runs (`ray start --head`) and the address (ray.address / --ray-address); "
            "nothing was run and output_dir is untouched."
        ) from None
    return True


def _probe(address: str) -> None:
    """A TCP connect to HOST:PORT (or ray://HOST:PORT): ``ray.init`` retries an unreachable head for minutes."""
    if address in ("local", "auto"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError("expected HOST:PORT or ray://HOST:PORT")
    with socket.create_connection((host.strip("[]"), int(port)), timeout=10):
        pass


def disconnect() -> None:
    import ray

    ray.shutdown()


def to_ray(pipeline: Pipeline) -> RayPipeline:
    """The same DAG as a RayPipeline; the cluster is the one :func:`connect` joined."""
    return pipeline.ray()
