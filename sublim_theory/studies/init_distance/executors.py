"""Executors: how the pending jobs run. Each maps jobs to an iterator of their row lists, in order.

Every job is run by :func:`run_configuration`, a pure top-level function of a plain dict
(picklable), and both executors yield in job order, so their tables are byte-identical and a
killed run resumes the same way under either.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch

from sublim_theory.errors import InputError
from sublim_theory.studies.init_distance.measure import run_configuration

__all__ = [
    "DEFAULT_RAY_TIMEOUT",
    "EXECUTORS",
    "Rows",
    "run_configuration_in_worker",
    "run_local",
    "run_ray",
]

Rows = list[dict[str, Any]]
DEFAULT_RAY_TIMEOUT = 30.0


def run_local(
    jobs: list[dict[str, Any]], address: str | None = None, timeout: float = DEFAULT_RAY_TIMEOUT
) -> Iterator[Rows]:
    """The in-process executor: run each job in order, yield its rows as soon as it finishes."""
    if address is not None:
        raise InputError("--address only applies to --executor ray")
    for job in jobs:
        yield run_configuration(job)


def run_configuration_in_worker(job: dict[str, Any]) -> Rows:
    """``run_configuration`` with one torch thread: a worker process is one task of many."""
    torch.set_num_threads(1)
    return run_configuration(job)


def _probe(address: str, timeout: float) -> None:
    """Fail at once when nothing listens at a ``host:port`` (Ray itself would retry forever)."""
    host_port = address.removeprefix("ray://")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" or a form Ray resolves itself; the timeout still bounds ray.init
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise InputError(
            f"cannot reach Ray at {address} ({reason}); start the cluster, fix --address or "
            "use --executor local"
        ) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _init_ray(ray: Any, address: str | None, timeout: float) -> None:
    """``ray.init``; joining a cluster is bounded by ``timeout`` seconds. One-line InputErrors.

    A private instance (``address=None``) starts in this thread (Ray starts its processes from
    the main thread). Joining runs ``ray.init`` in a helper thread that is abandoned after
    ``timeout``: Ray retries an unreachable or silent address for minutes.

    Raises:
        InputError: Ray cannot start locally, or does not answer at ``address`` within ``timeout``.

    """
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address is None:
        try:
            ray.init(_node_ip_address="127.0.0.1", **options)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise InputError(f"cannot start a local Ray instance: {_first_line(error)}") from None
        return
    _probe(address, timeout)
    outcome: dict[str, BaseException | None] = {}

    def join() -> None:
        try:
            ray.init(address=address, **options)
            outcome["error"] = None
        except BaseException as error:  # noqa: BLE001 - reported below as one line
            outcome["error"] = error

    thread = threading.Thread(target=join, daemon=True)
    thread.start()
    thread.join(timeout)
    if "error" not in outcome:
        raise InputError(
            f"Ray at {address} did not answer within {timeout:g} s (--ray-timeout); check the "
            "cluster or use --executor local"
        )
    if outcome["error"] is not None:
        raise InputError(f"cannot reach Ray at {address}: {_first_line(outcome['error'])}")


def run_ray(
    jobs: list[dict[str, Any]], address: str | None = None, timeout: float = DEFAULT_RAY_TIMEOUT
) -> Iterator[Rows]:
    """The Ray executor: every job is a Ray task; rows come back in job order.

    ``address=None`` starts a private local Ray instance bound to 127.0.0.1 (shut down at the
    end); otherwise it joins the cluster at ``address`` (e.g. ``ray://host:10001`` or ``auto``).
    Connecting takes at most ``timeout`` seconds.

    Yields:
        Each job's rows, in job order.

    Raises:
        InputError: Ray is not installed, or does not answer at ``address`` within ``timeout``.

    """
    if not jobs:
        return
    try:
        import ray
    except ImportError:
        raise InputError(
            "the 'ray' executor needs Ray: pip install 'sublim-theory[ray]' (or use --executor local)"
        ) from None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started_here = not ray.is_initialized()
    if started_here:
        _init_ray(ray, address, timeout)
    try:
        task = ray.remote(run_configuration_in_worker)
        references = [task.remote(job) for job in jobs]
        for reference in references:
            yield ray.get(reference)
    finally:
        if started_here:
            ray.shutdown()


EXECUTORS: dict[str, Callable[..., Iterator[Rows]]] = {"local": run_local, "ray": run_ray}
