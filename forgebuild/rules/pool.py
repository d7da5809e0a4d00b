"""Per-file work in a pool of processes: how many, and the results in the jobs' order.

Rules whose work splits into independent jobs (corpus's source units, images' batches of pictures)
run them here. Standard library only; the pool is made inside `in_order`, never at import.
"""
from __future__ import annotations

import os


def worker_count(requested: int, jobs: int) -> int:
    """`requested` processes (0: one per CPU), never more than there are jobs."""
    return min(requested or os.cpu_count() or 1, jobs)


def in_order(fn, jobs: list, workers: int, chunksize: int = 1):
    """fn(job) for each job, in the jobs' order: in this process when `workers` is 1 or less, else in a
    pool of that many, each result as soon as it and those before it are done."""
    if workers <= 1:
        yield from map(fn, jobs)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # fork: the children inherit the modules the build loaded (and no pyarrow threads are running yet)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        yield from pool.map(fn, jobs, chunksize=chunksize)
