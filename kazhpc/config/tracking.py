"""The ``tracking`` section: where runs are logged (MLflow)."""

from __future__ import annotations

from pydantic import Field

from kazhpc.config.paths import Strict


class TrackingConfig(Strict):
    """Where runs are logged. The default is a sqlite store under runs_root, no server needed."""

    enabled: bool = True
    uri: str | None = Field(
        None, description="MLflow tracking URI; default sqlite:///<runs_root>/mlflow.db"
    )
    experiment: str = Field("kazhpc", min_length=1)
    timeout_s: float = Field(
        5.0, gt=0, description="how long to wait for a tracking server before logging offline"
    )
    system_metrics_s: float = Field(
        10.0, ge=0, description="seconds between system metrics samples (CPU, memory, GPU) of train and evaluate "
        "stages, logged as MLflow's system/ metrics; 0: none",
    )
    register_models: bool = Field(
        True, description="log each train stage's adapter as an MLflow model and register it as a version of "
        "'kazhpc-<pipeline name>' (evaluate tags the version with its scores)",
    )
