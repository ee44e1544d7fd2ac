"""Where the search's work runs: one interface for in-process, process-pool and Ray executors.

The search (:func:`lps_keras.search.run_expansion`) only sees a ``concurrent.futures.Executor``:
``submit(fn, *args) -> Future``, results consumed with ``as_completed`` in the driver, which
journals each one as it comes back. Every :class:`SearchExecutor` keeps the same contract:

- an evaluation that raises is retried ``retries`` times (default once); if it still fails its
  future raises :class:`CandidateFailed` with the error, which the search records in the journal
  as that candidate's failure before going on with the rest of the step. Anything else (a broken
  pool, Ctrl-C) stops the search as before;
- :meth:`SearchExecutor.on_device` runs a function where latencies are measured: here, or (Ray with a
  ``latency_resource``) on the node that offers that custom resource, the deployment device
  (:mod:`lps_keras.search.latencies` builds the search's latency functions on it).

Implementations: :class:`SequentialExecutor` (one at a time, in this process), :class:`PoolExecutor`
(spawned processes, one GPU each) and :class:`RayExecutor` (one Ray task per candidate). Ray is an
optional extra (``requirements-ray.txt``); it is imported only when a Ray executor is made.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, Optional

from lps_keras.errors import PermanentError
from lps_keras.search.ray_join import ExecutorError, join_ray

RETRIES = 1
RAY_EXTRA = "pip install -r requirements-ray.txt (or pip install 'lps-keras[ray]')"


class CandidateFailed(RuntimeError):
    """An evaluation still failed after its retries; ``str(self)`` is the error, for the journal."""


def describe_error(exc: BaseException, limit: int = 2000) -> str:
    """``Type: message`` of the original error (unwrapping Ray's task error), cut to ``limit`` characters."""
    cause = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError carries the user's exception
    exc = cause if isinstance(cause, BaseException) else exc
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Retrying:
    """``fn`` called up to ``1 + retries`` times; the last error becomes :class:`CandidateFailed`.

    Module level and plain attributes, so it pickles into spawned worker processes.
    """

    def __init__(self, fn: Callable, retries: int):
        self.fn, self.retries = fn, retries

    def __call__(self, *args, **kwargs):
        for _ in range(self.retries + 1):
            try:
                return self.fn(*args, **kwargs)
            except PermanentError:  # e.g. a candidate's run directory holds another run: stop the search
                raise
            except Exception as e:  # noqa: BLE001 - any error of the candidate's own work is retried
                error = e
        raise CandidateFailed(f"{describe_error(error)} (failed {self.retries + 1} times)")


class SearchExecutor(concurrent.futures.Executor):
    """The executor interface the search runs on (see the module docstring for the contract)."""

    kind = "abstract"
    retries = RETRIES
    latency_resource: Optional[str] = None

    def submit(self, fn, /, *args, **kwargs) -> concurrent.futures.Future:
        raise NotImplementedError

    def on_device(self, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)`` where latencies are measured: here (a Ray executor with a
        ``latency_resource`` runs it on that node). :mod:`lps_keras.search.latencies` uses it."""
        return fn(*args, **kwargs)


class SequentialExecutor(SearchExecutor):
    """One evaluation at a time, in this process, in submission order.

    The work runs in one daemon thread, so that the caller collects (and journals) each result as it
    comes, as with the other executors. An interrupt (a ``BaseException`` that is not an
    ``Exception``) raised by an evaluation cancels everything queued after it. ``shutdown`` with
    ``cancel_futures`` does not wait for a running evaluation (TensorFlow cannot be interrupted in a
    thread; Ctrl-C should not wait for a proxy training to end): it dies with the process.
    """

    kind = "sequential"

    def __init__(self, retries: int = RETRIES):
        self.retries = retries
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        self._halted = False  # an interrupt was raised: nothing more runs

    def submit(self, fn, /, *args, **kwargs):
        if self._closed:
            raise RuntimeError("cannot submit to an executor after shutdown")
        fut: concurrent.futures.Future = concurrent.futures.Future()
        if self._halted:
            _cancel(fut)
            return fut
        self._queue.put((fut, _Retrying(fn, self.retries), args, kwargs))
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="lps-search", daemon=True)
            self._thread.start()
        return fut

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fut, fn, args, kwargs = item
            if self._halted:
                fut.cancel()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args, **kwargs))
            except BaseException as e:  # noqa: BLE001 - handed to the caller through the future
                if not isinstance(e, Exception):  # cancel the rest before the caller hears of it
                    self._halted = True
                    self._cancel_queued()
                fut.set_exception(e)

    def _cancel_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is None:
                self._queue.put(None)
                return
            _cancel(item[0])

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._closed = True
        if cancel_futures:
            self._cancel_queued()
        self._queue.put(None)
        if wait and not cancel_futures and self._thread is not None:
            self._thread.join()


def _cancel(fut: concurrent.futures.Future) -> None:
    # Future.cancel alone does not wake as_completed(); set_running_or_notify_cancel does (as in the stdlib pools).
    if fut.cancel():
        fut.set_running_or_notify_cancel()


def split_cpus(cpus, workers: int) -> list[list[int]]:
    """``cpus`` (ids) in ``workers`` contiguous, disjoint shares as even as possible (``workers`` <= len(cpus))."""
    cpus = sorted(cpus)
    if not 1 <= workers <= len(cpus):
        raise ExecutorError(f"cannot split {len(cpus)} CPU(s) between {workers} workers: use at most {len(cpus)}")
    base, extra = divmod(len(cpus), workers)
    shares, i = [], 0
    for w in range(workers):
        n = base + (w < extra)
        shares.append(cpus[i:i + n])
        i += n
    return shares


def _init_worker(devices, cpu_shares=None) -> None:
    # One accelerator (and/or one share of the CPU cores) per worker, claimed before TensorFlow is imported
    # in this process: TensorFlow sizes its thread pools from the CPU affinity it finds at import.
    from lps_keras.cli import quiet_tensorflow

    try:
        device = devices.get_nowait()
    except Exception:  # noqa: BLE001 - no device left: run on what the process sees
        device = None
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(device)
    if cpu_shares is not None:
        try:
            os.sched_setaffinity(0, cpu_shares.get_nowait())
        except Exception:  # noqa: BLE001 - no share left (a replaced worker): keep the parent's affinity
            pass
    quiet_tensorflow()  # spawned workers import TensorFlow afresh: without its start-up noise


class PoolExecutor(SearchExecutor):
    """``workers`` spawned processes (not forked: TensorFlow is not fork-safe).

    ``devices`` (e.g. ``["0", "1"]``) pins one GPU per worker via ``CUDA_VISIBLE_DEVICES``.
    ``pin_cpus`` gives each worker a disjoint share of this process's CPU cores (:func:`split_cpus`):
    on a CPU-only machine, N single-share workers train faster together than N workers whose thread
    pools all span every core (on the 2-core reference machine, 2 one-core workers did 1.37x the
    training steps per second of one 2-thread process).
    """

    kind = "pool"

    def __init__(self, workers: int, devices: Optional[list[str]] = None, retries: int = RETRIES,
                 pin_cpus: bool = False):
        self.retries = retries
        ctx = multiprocessing.get_context("spawn")
        manager = ctx.Manager()
        queue = manager.Queue()
        for d in devices or []:
            queue.put(d)
        shares = None
        if pin_cpus:
            shares = manager.Queue()
            for share in split_cpus(os.sched_getaffinity(0), workers):
                shares.put(share)
        self._pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                                            initializer=_init_worker, initargs=(queue, shares))

    def submit(self, fn, /, *args, **kwargs):
        return self._pool.submit(_Retrying(fn, self.retries), *args, **kwargs)

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)


# --------------------------------------------------------------------------- Ray
def import_ray():
    """The ``ray`` module, or :class:`ExecutorError` naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise ExecutorError(f"--executor ray needs Ray, which is not installed: {RAY_EXTRA}") from None
    return ray


def _ray_call(fn, *args, **kwargs):
    # Runs in a Ray worker: without TensorFlow's start-up noise, like the pool's workers.
    from lps_keras.cli import quiet_tensorflow

    quiet_tensorflow()
    return fn(*args, **kwargs)


class RayExecutor(SearchExecutor):
    """Each submitted evaluation is one Ray task; the driver (this process) keeps the journal.

    ``address``: the cluster to join (``ray start --head`` prints it; None starts a local
    instance, or joins the one this process already initialised). A task needs ``cpus_per_task``
    CPUs and ``gpus_per_task`` GPUs (Ray sets ``CUDA_VISIBLE_DEVICES`` for it); Ray re-runs a
    task that raised or whose worker died ``retries`` times. ``latency_resource`` names a custom
    resource: every latency measurement is then a task that needs one unit of it, so it runs on
    the node started with ``--resources='{"NAME": 1}'`` (one measurement at a time there), and
    the cache records that node's device name. Models and engines are built on that node.
    """

    kind = "ray"

    def __init__(self, address: Optional[str] = None, gpus_per_task: float = 0, cpus_per_task: float = 1,
                 latency_resource: Optional[str] = None, retries: int = RETRIES):
        ray = import_ray()
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        self.retries, self.latency_resource = retries, latency_resource
        self._ray = ray
        self._pending: dict[Any, concurrent.futures.Future] = {}
        self._lock = threading.Lock()
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            kwargs = {"include_dashboard": False} if address is None else {}
            join_ray(ray, address, describe_error, **kwargs)  # one line on failure, Ray's own log dropped
        resources = ray.cluster_resources()
        if gpus_per_task > 0 and resources.get("GPU", 0) < gpus_per_task:
            self.shutdown()
            raise ExecutorError(f"--gpus-per-task {gpus_per_task}: the Ray cluster has "
                                f"{resources.get('GPU', 0):g} GPU(s); start GPU workers with ray start --num-gpus")
        if latency_resource is not None and resources.get(latency_resource, 0) < 1:
            self.shutdown()
            raise ExecutorError(f"--latency-resource {latency_resource!r}: no node of the Ray cluster offers it; "
                                f"start the device node with ray start --address=... "
                                f"--resources='{{\"{latency_resource}\": 1}}'")
        call = ray.remote(_ray_call)
        self._task = call.options(num_cpus=cpus_per_task, num_gpus=gpus_per_task, max_retries=retries,
                                  retry_exceptions=True)
        # Measurements hold the device's one unit, need no CPU slot of their own, and are not retried
        # on an exception (a measurement error is the user's to see), only on a lost worker.
        self._on_device = None if latency_resource is None else \
            call.options(num_cpus=0, resources={latency_resource: 1}, retry_exceptions=False)

    def submit(self, fn, /, *args, **kwargs):
        ref = self._task.remote(fn, *args, **kwargs)
        out = _RayFuture(self._ray, ref)
        with self._lock:
            self._pending[ref] = out
        retries = self.retries

        def done(f: concurrent.futures.Future) -> None:
            with self._lock:
                self._pending.pop(ref, None)
            try:
                if f.cancelled():
                    out.cancel()
                elif isinstance(cause := getattr(f.exception(), "cause", None), PermanentError):
                    out.set_exception(cause)  # not a failed candidate: the search stops on it (Ray retried it once)
                elif f.exception() is not None:
                    out.set_exception(CandidateFailed(f"{describe_error(f.exception())} "
                                                      f"(failed {retries + 1} times on Ray)"))
                else:
                    out.set_result(f.result())
            except concurrent.futures.InvalidStateError:  # cancelled by the search meanwhile
                pass

        ref.future().add_done_callback(done)
        return out

    def on_device(self, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)`` run on the latency-resource node (here when there is none)."""
        if self._on_device is None:
            return fn(*args, **kwargs)
        return self._ray.get(self._on_device.remote(fn, *args, **kwargs))

    def shutdown(self, wait=True, *, cancel_futures=False):
        with self._lock:
            pending = list(self._pending)
        if cancel_futures:
            for ref in pending:
                self._ray.cancel(ref)
        elif wait and pending:
            self._ray.wait(pending, num_returns=len(pending))
        if self._owns_ray and self._ray.is_initialized():
            self._ray.shutdown()


class _RayFuture(concurrent.futures.Future):
    """A future whose ``cancel`` also cancels its Ray task."""

    def __init__(self, ray, ref):
        super().__init__()
        self._ray_module, self._ref = ray, ref

    def cancel(self) -> bool:
        cancelled = super().cancel()
        if cancelled:
            try:
                self._ray_module.cancel(self._ref)
            except Exception:  # noqa: BLE001 - the task may have finished or the cluster be gone
                pass
        return cancelled


# --------------------------------------------------------------------------- factory
EXECUTORS = ("pool", "ray")


def make_executor(kind: str = "pool", workers: int = 1, devices: Optional[list[str]] = None,
                  address: Optional[str] = None, gpus_per_task: float = 0, latency_resource: Optional[str] = None,
                  retries: int = RETRIES, pin_cpus: bool = False) -> SearchExecutor:
    """The executor for ``kind``: ``pool`` (sequential for ``workers`` <= 1) or ``ray``.

    ``devices`` pins one GPU per pool worker, ``pin_cpus`` one share of the CPU cores (see
    :class:`PoolExecutor`); ``address``, ``gpus_per_task`` and ``latency_resource`` are the Ray
    settings (see :class:`RayExecutor`).
    """
    if pin_cpus and kind != "pool":
        raise ExecutorError("search.pin_cpus applies to the pool executor only")
    if kind == "ray":
        return RayExecutor(address=address, gpus_per_task=gpus_per_task, latency_resource=latency_resource,
                           retries=retries)
    if kind != "pool":
        raise ExecutorError(f"unknown executor {kind!r}; choose one of {', '.join(EXECUTORS)}")
    if latency_resource is not None or address is not None:
        raise ExecutorError("--ray-address and --latency-resource need --executor ray")
    if workers <= 1:
        return SequentialExecutor(retries=retries)
    return PoolExecutor(workers, devices, retries=retries, pin_cpus=pin_cpus)
