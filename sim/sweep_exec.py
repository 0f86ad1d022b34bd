"""Where sweep runs execute: a local process pool (one run per core) or Ray tasks, same runner either way.

Both executors call ``on_row`` in the calling process as each run finishes, so recording results (and
the progress bar) happen in one place whatever runs the work. A runner is a picklable top-level function
``runner(point, shared)``; ``shared`` is None locally and, under Ray, a 1-tuple holding a dict of object
references to blobs (trace files) that a task fetches only when its worker does not have them yet.
"""

from __future__ import annotations

import multiprocessing
import tempfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from traces.fileio import atomic_write

Row = dict[str, Any]
Runner = Callable[..., Row]


def execute_local(points: Sequence[Any], runner: Runner, workers: int, on_row: Callable[[Row], None]) -> None:
    """Run ``runner(point)`` for every point on ``workers`` processes, calling ``on_row`` as each finishes.

    With one worker everything runs in this process (no pool start-up cost). On the first failure the
    pending runs are cancelled and the error is raised; rows already passed to ``on_row`` stay recorded.
    """
    if workers <= 1 or len(points) <= 1:
        for point in points:
            on_row(runner(point))
        return
    context = multiprocessing.get_context("spawn")  # no forked copies of tqdm's or Ray's threads
    with ProcessPoolExecutor(max_workers=min(workers, len(points)), mp_context=context) as pool:
        pending = {pool.submit(runner, point) for point in points}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    on_row(future.result())
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def execute_ray(
    points: Sequence[Any],
    runner: Runner,
    address: str,
    on_row: Callable[[Row], None],
    shared: Mapping[str, bytes] | None = None,
) -> None:
    """Run the same ``runner(point, shared_refs)`` as Ray tasks; ``on_row`` is called as each finishes.

    ``address`` is a Ray cluster address, ``auto`` (the cluster this machine belongs to) or ``local``
    (start a private single-machine instance for this sweep). If Ray is already initialised in this
    process, that connection is used. ``shared`` blobs (trace files) are put in the object store once and
    fetched by a worker only when its cache lacks them, so the cluster's machines need no shared disk.
    """
    import ray

    started_here = False
    if not ray.is_initialized():
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address != "local":
            options["address"] = address
        ray.init(**options)
        started_here = True
    try:
        refs = {name: ray.put(blob) for name, blob in (shared or {}).items()}
        remote = ray.remote(num_cpus=1)(runner)
        # the dict of refs travels inside a tuple, so Ray does not resolve (copy) every blob into every task
        pending = [remote.remote(point, (refs,)) for point in points]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                on_row(ray.get(done[0]))
        except BaseException:
            for ref in pending:
                ray.cancel(ref)
            raise
    finally:
        if started_here:
            ray.shutdown()


def resolve_shared(name: str, shared: tuple[Mapping[str, Any]] | None) -> bytes | None:
    """Inside a Ray task: the bytes of shared blob ``name``, or None when not running under Ray."""
    if not shared:
        return None
    import ray

    return ray.get(shared[0][name])


def materialise(blob: bytes, name: str) -> Path:
    """Write a shared blob to this machine's temp directory (once per worker) and return its path."""
    path = Path(tempfile.gettempdir()) / "moe-prefetch-sweep" / name
    if not path.exists():
        with atomic_write(path) as tmp:
            tmp.write_bytes(blob)
    return path
