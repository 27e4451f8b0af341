"""The Ray the experiment runs on: joining a cluster or starting a private local one, and how
many trials it holds at once."""

from __future__ import annotations

import os

import ray

from tune.extras.progress import RayOutput
from tune.settings import ExperimentSettings


def connect_ray(settings: ExperimentSettings, output: RayOutput) -> None:
    """Join --address; inside a Ray job, the job's cluster (RAY_ADDRESS); else start a private local
    Ray (`ray.init()` alone would join any cluster someone started on this machine with `ray start`).
    Prints one line naming the Ray it runs on (quiet mode mutes Ray's own "Connecting to ...").

    A private Ray ends with its driver, however the driver ends: after a SIGKILL, Ray's two agents
    outlive it by about a minute, then end by themselves (tests/test_private_ray.py checks it).
    """
    if ray.is_initialized():
        return
    if settings.address:
        ray.init(address=settings.address, **output.init_kwargs)
        which = "joined the Ray cluster at"
    elif os.environ.get("RAY_ADDRESS"):
        ray.init(**output.init_kwargs)
        which = "joined the Ray cluster at"
    else:
        ray.init(address="local", include_dashboard=False, **output.init_kwargs)
        which = "started a private local Ray at"
    resources = ray.cluster_resources()
    print(
        f"ray: {which} {ray.get_runtime_context().gcs_address}: "
        f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs"
    )


def concurrent_trials(settings: ExperimentSettings) -> int:
    """--max-concurrent, or as many trials as the cluster's CPUs and GPUs hold now.

    The searcher keeps no more than this many trials live, and a pending trial is what makes Tune
    start a new worker: without one, on a cluster whose workers take longer to start than a trial
    lasts, Tune keeps reusing the first few workers and leaves the rest idle.
    """
    if settings.max_concurrent:
        return settings.max_concurrent
    resources = ray.cluster_resources()
    slots = resources.get("CPU", 0) / settings.cpus_per_trial
    if settings.gpus_per_trial > 0:
        slots = min(slots, resources.get("GPU", 0) / settings.gpus_per_trial)
    return max(1, int(slots + 1e-9))
