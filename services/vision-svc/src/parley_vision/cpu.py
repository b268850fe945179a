"""CPU settings for a vision-svc process.

The matrices here are small (a 1080p frame's resample is 64x135 by 135x240), and OpenBLAS's
default of one thread per core makes them slower, not faster: measured on one pinned core,
deciding a 1080p frame took 3.4 ms of CPU with BLAS threads and 1.2 ms without
(bench/vision). A replica therefore runs BLAS single-threaded; parallelism comes from the
event loop's streams and from more replicas.
"""

from __future__ import annotations

from threadpoolctl import threadpool_limits


def limit_blas_threads() -> None:
    """Run numpy's BLAS on one thread for the rest of the process."""
    threadpool_limits(limits=1, user_api="blas")
