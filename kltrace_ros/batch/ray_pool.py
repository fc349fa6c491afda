"""`kltrace bags --ray`: the jobs of ``batch.jobs`` on a Ray cluster, one actor per worker.

Each actor loads the model once and then does job after job with :func:`batch.jobs.run_job` (the same
function the one-by-one mode calls). Actors ask Ray for CPUs, and for a GPU share when the cluster has
GPUs and the device allows CUDA; torch in each actor uses as many threads as CPUs it was given, so that
workers never oversubscribe the cores. A worker that dies (killed, out of memory) fails its job only:
the job is reported and a new worker takes its place.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import ray
import torch
from ray.experimental import tqdm_ray

from kltrace_ros.tracking.builder import load_engine

from .jobs import Job, Settings, new_record, run_job


def frame_progress(iterable, **kwargs):
    """A worker's frame bar, shown by the driver (Ray's tqdm; closed at the end so it shows 100%)."""
    bar = tqdm_ray.tqdm(iterable, **kwargs)
    try:
        yield from bar
    finally:
        bar.close()


@ray.remote
class Worker:
    """One model, many jobs (``Settings`` arrive once, with the actor)."""

    def __init__(self, settings: Settings, out_dir: str, threads: int):
        torch.set_num_threads(max(1, threads))
        self.settings, self.out_dir = settings, Path(out_dir)
        self.engine = load_engine(settings.options)
        self.pid = os.getpid()

    def ready(self) -> int:
        return self.pid

    def run(self, job: Job) -> dict:
        return run_job(self.engine, job, self.out_dir, self.settings, progress=frame_progress)


def connect(address: str) -> None:
    """``auto``: start a local Ray instance on this machine (or join the one RAY_ADDRESS names);
    anything else: the address of an existing cluster (``ray://host:10001`` or ``host:6379``)."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")       # robots are often offline: never phone home
    kwargs = {"include_dashboard": False, "log_to_driver": True}
    if address == "auto":
        ray.init(**kwargs)
    else:
        ray.init(address=address, **kwargs)


def plan(workers: int | None, device: str, jobs: int) -> tuple[int, dict, int, str]:
    """(number of workers, Ray resources per worker, torch threads per worker, device) for this cluster:
    at most one worker per job; CPU workers never more than the cluster's CPUs, and each asks for no more
    CPUs than the largest machine has (else Ray could never place it)."""
    res = ray.cluster_resources()
    cpus, gpus = int(res.get("CPU", 1)), res.get("GPU", 0.0)
    biggest = max([int(n["Resources"].get("CPU", 1)) for n in ray.nodes() if n.get("Alive")] or [1])
    use_gpu = gpus > 0 and device in ("auto", "cuda")
    n = workers or (int(gpus) if use_gpu and gpus >= 1 else cpus)
    if not use_gpu and n > cpus:
        print(f"--workers {n}: the cluster has {cpus} CPUs; running {cpus} workers")
        n = cpus
    n = max(1, min(n, jobs))
    per_cpu = max(1, min(cpus // n, biggest))
    resources = {"num_cpus": per_cpu}
    if use_gpu:
        resources["num_gpus"] = gpus / n if gpus < n else math.floor(gpus / n)
    return n, resources, per_cpu, ("cuda" if use_gpu else "cpu")


READY_TIMEOUT_S = 600   # Ray could not place the workers by then: the cluster lacks what they ask for


def run_ray(jobs: list[Job], out_dir: Path, settings: Settings, address: str = "auto",
            workers: int | None = None, threads: int | None = None) -> tuple[list[dict], float, int]:
    """Every job on Ray; (results in job order, start-up seconds: Ray and the workers' models, workers)."""
    t0 = time.perf_counter()
    connect(address)
    n, resources, per_cpu, device = plan(workers, settings.options.device, len(jobs))
    settings = Settings(settings.topic, settings.options.with_(device=device), settings.overlay, settings.max_side)

    def start():
        return Worker.options(**resources).remote(settings, str(out_dir), threads or per_cpu)

    actors = []
    results: dict[int, dict] = {}
    try:
        actors = [start() for _ in range(n)]
        try:
            ray.get([a.ready.remote() for a in actors], timeout=READY_TIMEOUT_S)   # models loaded
        except ray.exceptions.GetTimeoutError:
            raise ValueError(f"Ray could not start {n} workers with {resources} each within {READY_TIMEOUT_S} s: "
                             f"the cluster lacks these resources; lower --workers") from None
        except ray.exceptions.RayActorError as err:
            raise ValueError(f"a Ray worker could not load the model: {str(err).splitlines()[0]}") from None
        startup = time.perf_counter() - t0
        queue = list(enumerate(jobs))
        running = {}
        bar = tqdm_ray.tqdm(total=len(jobs), desc="recordings", unit="rec")   # beside the workers' frame bars
        for a in actors:
            if queue:
                i, job = queue.pop(0)
                running[a.run.remote(job)] = (a, i)
        while running:
            (ref,), _ = ray.wait(list(running), num_returns=1)
            actor, i = running.pop(ref)
            try:
                results[i] = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as err:
                results[i] = new_record(jobs[i], "failed",
                                        f"worker failed: {type(err).__name__}: {str(err).splitlines()[0]}")
                ray.kill(actor)
                actors.remove(actor)
                actor = start()
                actors.append(actor)
            bar.update(1)
            if queue:
                j, job = queue.pop(0)
                running[actor.run.remote(job)] = (actor, j)
        bar.close()
    finally:
        for a in actors:
            ray.kill(a)
    return [results[i] for i in range(len(jobs))], startup, n
