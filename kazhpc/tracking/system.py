"""System metrics of a job (CPU, memory, disk, network; GPU utilisation and memory when there is
one), sampled by MLflow's own monitors and named as MLflow names them (``system/cpu_utilization_percentage``;
``system/<node>/...`` on a multi-node job), so the run page's "System metrics" tab shows them.

Why not ``mlflow.start_run(log_system_metrics=True)``: its monitor sends to the store only and
stops when it cannot read the run, so a store that is down loses them. Here each sample goes
through the job's JobRun: journaled first, then sent, and ``kazhpc sync`` uploads what the store
missed.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kazhpc.tracking.live import JobRun

log = logging.getLogger("kazhpc.tracking")


def node_id() -> str | None:
    """``node_<i>`` on a job that spans nodes (SLURM's node index, else torchrun's group rank)."""
    nodes = int(os.environ.get("SLURM_NNODES") or os.environ.get("KAZHPC_NNODES") or "1")
    if nodes <= 1:
        return None
    return f"node_{os.environ.get('SLURM_NODEID') or os.environ.get('GROUP_RANK') or '0'}"


class SystemMetrics:
    """Samples every ``interval_s`` on a daemon thread and logs the average of ``samples`` samples
    as one step (MLflow's SystemMetricsMonitor's collect/aggregate, without its store-only publish)."""

    def __init__(self, run: JobRun, interval_s: float, samples: int = 1, node: str | None = None):
        from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
        from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
        from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

        self.run = run
        self.interval_s = interval_s
        self.samples = max(1, samples)
        self.prefix = "system/" + (f"{node}/" if node else "")
        self.monitors: list[Any] = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
        try:  # as MLflow's own monitor does: NVIDIA through pynvml, where there is one
            from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

            self.monitors.append(GPUMonitor())
        except Exception:  # noqa: BLE001 - no GPU, no driver or no pynvml: CPU metrics only
            log.debug("system metrics: no NVIDIA GPU monitor", exc_info=True)
        self.step = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> dict[str, float]:
        """One aggregated reading of every monitor, named as MLflow names system metrics."""
        for _ in range(self.samples):
            for monitor in self.monitors:
                monitor.collect_metrics()
        metrics = {}
        for monitor in self.monitors:
            metrics.update(monitor.aggregate_metrics())
            monitor.clear_metrics()
        return {self.prefix + k: float(v) for k, v in metrics.items()}

    def log_once(self) -> None:
        self.run.log_metrics(self.sample(), step=self.step)
        self.step += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.log_once()
            except Exception as exc:  # noqa: BLE001 - a failing probe must not stop the job
                log.warning("system metrics: %s; no more samples for this job", exc)
                return

    def __enter__(self) -> SystemMetrics:
        if self.run.active and self.interval_s > 0:
            self.log_once()  # one reading at the start, however short the job
            self._thread = threading.Thread(target=self._loop, name="kazhpc-system-metrics", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=30)
            self.log_once()  # and one at the end
            self._thread = None
