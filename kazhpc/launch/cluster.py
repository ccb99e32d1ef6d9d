"""Cluster profiles (``configs/clusters/*.yaml``): what a SLURM site offers and what each job asks of it.

A profile is validated like a pipeline config (unknown keys are errors with file:line), and every
request a pipeline would make of it (GPUs, memory, time) is checked against it before anything is
submitted: an impossible request costs seconds here, not a day in the queue.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from kazhpc.config import JOB_NAMES, Strict, describe_validation_error, load_yaml_file, suggest
from kazhpc.errors import ConfigError

_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_time(value: str | int) -> int:
    """A SLURM time limit ('30', '02:00:00', '1-12:00:00', or minutes as an int) in minutes."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError("a time limit must be positive")
        return value
    match = _TIME.match(str(value).strip())
    if not match:
        raise ValueError(f"time limit {value!r}: expected minutes, HH:MM:SS or D-HH:MM:SS")
    days, first, second, third = match.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        minutes = int(days) * 1440 + int(first) * 60 + int(second or 0) + (1 if int(third or 0) else 0)
    elif third is not None:  # HH:MM:SS
        minutes = int(first) * 60 + int(second) + (1 if int(third) else 0)
    elif second is not None:  # MM:SS
        minutes = int(first) + (1 if int(second) else 0)
    else:  # MM
        minutes = int(first)
    if minutes <= 0:
        raise ValueError(f"time limit {value!r}: must be positive")
    return minutes


def format_time(minutes: int) -> str:
    days, rest = divmod(minutes, 1440)
    return (f"{days}-" if days else "") + f"{rest // 60:02d}:{rest % 60:02d}:00"


class NodeConfig(Strict):
    """One compute node of the partition: the ceiling for every job's request."""

    gpus: int = Field(0, ge=0, description="GPUs per node (0: a CPU partition)")
    gpu_type: str | None = Field(None, description="GPU type for --gres (e.g. a100); none: any GPU")
    gpu_memory_gb: float | None = Field(None, gt=0, description="memory of one GPU")
    cpus: int = Field(ge=1, description="CPU cores per node")
    memory_gb: float = Field(gt=0, description="memory per node that jobs may use")

    @model_validator(mode="after")
    def _gpu_fields(self) -> NodeConfig:
        if self.gpus == 0 and (self.gpu_type or self.gpu_memory_gb):
            raise ValueError("gpu_type/gpu_memory_gb given but gpus is 0")
        return self


class JobResources(Strict):
    """What one job type asks for on one node. A time limit is required: no job runs unbounded."""

    time: str | int = Field(description="time limit: minutes, HH:MM:SS or D-HH:MM:SS")
    gpus: int = Field(0, ge=0, description="GPUs per node (train: per node of a multi-GPU run)")
    cpus: int = Field(1, ge=1, description="CPU cores per task")
    mem_gb: float = Field(4, gt=0, description="memory per node")

    @field_validator("time")
    @classmethod
    def _valid_time(cls, value: str | int) -> str | int:
        parse_time(value)
        return value

    @property
    def minutes(self) -> int:
        return parse_time(self.time)


class ContainerConfig(Strict):
    """How a job's command runs: in an Apptainer/Docker image, or directly (runtime none)."""

    runtime: Literal["apptainer", "docker", "none"] = "none"
    image: str | None = Field(None, description="a .sif file (apptainer) or an image tag (docker)")
    binds: list[str] = Field(
        default_factory=list,
        description="host paths visible inside the container at the same place (runs_root and "
        "cache_dir are added); 'src:dst' also works",
    )
    workdir: str = Field("/opt/kazhpc", description="where the image keeps kazhpc's jobs/ folder")
    options: list[str] = Field(default_factory=list, description="extra arguments for apptainer exec / docker run")

    @model_validator(mode="after")
    def _image_needed(self) -> ContainerConfig:
        if self.runtime != "none" and not self.image:
            raise ValueError(f"runtime {self.runtime} needs an image")
        if self.runtime == "none" and self.image:
            raise ValueError("image given but runtime is none; set runtime: apptainer or docker")
        for bind in self.binds:
            if not bind.split(":")[0].startswith("/"):
                raise ValueError(f"bind {bind!r}: host paths must be absolute")
        return self


class ClusterConfig(Strict):
    """A SLURM site: where jobs go, what a node has, what each job type asks for."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = Field(None, description="a --constraint feature expression, e.g. a100")
    max_time: str | int | None = Field(None, description="the partition's time limit (MaxTime)")
    node: NodeConfig
    modules: list[str] = Field(default_factory=list, description="`module load` these before each job")
    environment: dict[str, str] = Field(
        default_factory=dict, description="exported before each job ($VARS expand on the node)"
    )
    setup: list[str] = Field(default_factory=list, description="more shell lines run before each job")
    python: str | None = Field(
        None, description="Python that runs the jobs; default: 'python' in a container, else this interpreter"
    )
    container: ContainerConfig = Field(default_factory=ContainerConfig)
    jobs: dict[str, JobResources] = Field(description="resources per job type; a job without an entry cannot run")

    _source: str = PrivateAttr("cluster profile")
    _lines: dict[tuple[str, ...], Any] = PrivateAttr(default_factory=dict)

    @field_validator("max_time")
    @classmethod
    def _valid_max(cls, value: str | int | None) -> str | int | None:
        if value is not None:
            parse_time(value)
        return value

    @field_validator("environment")
    @classmethod
    def _safe_values(cls, env: dict[str, str]) -> dict[str, str]:
        for key, value in env.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
            if any(c in str(value) for c in '"`\\\n'):
                raise ValueError(f"{key}: quotes, backticks, backslashes and newlines are not allowed")
        return env

    @field_validator("jobs")
    @classmethod
    def _known_jobs(cls, jobs: dict[str, JobResources]) -> dict[str, JobResources]:
        for name in jobs:
            if name not in JOB_NAMES:
                raise ValueError(f"unknown job '{name}'{suggest(name, JOB_NAMES)}; known: {', '.join(JOB_NAMES)}")
        return jobs

    @model_validator(mode="after")
    def _fits_a_node(self) -> ClusterConfig:
        limit = parse_time(self.max_time) if self.max_time is not None else None
        for name, res in self.jobs.items():
            if res.gpus > self.node.gpus:
                raise ValueError(f"jobs.{name}.gpus: {res.gpus} GPUs per node asked, a node has {self.node.gpus}")
            if res.cpus > self.node.cpus:
                raise ValueError(f"jobs.{name}.cpus: {res.cpus} CPUs asked, a node has {self.node.cpus}")
            if res.mem_gb > self.node.memory_gb:
                raise ValueError(f"jobs.{name}.mem_gb: {res.mem_gb} GB asked, a node has {self.node.memory_gb}")
            if limit is not None and res.minutes > limit:
                raise ValueError(
                    f"jobs.{name}.time: {res.time} is above the partition's max_time {self.max_time}"
                )
        return self

    # -- where a setting came from, for errors raised after loading ---------------------------
    def where(self, *key: str) -> str:
        """'file:line' of a key (or of its closest parent that exists), for one-line errors."""
        for i in range(len(key), 0, -1):
            if key[:i] in self._lines:
                return str(self._lines[key[:i]])
        return self._source

    def resources(self, job: str) -> JobResources:
        if job not in self.jobs:
            raise ConfigError(
                f"{self.where('jobs')}: jobs.{job}: the pipeline runs '{job}' but this profile gives it no "
                f"resources (a time limit at least); known: {', '.join(self.jobs) or 'none'}"
            )
        return self.jobs[job]


def load_cluster(path: str | Path) -> ClusterConfig:
    """Load and validate a cluster profile (includes work as in pipeline configs)."""
    path = Path(path)
    if not path.is_file() and "/" not in str(path) and not str(path).endswith((".yaml", ".yml")):
        from kazhpc.config import find_configs_root

        root = find_configs_root()
        if root is not None and (root / "clusters" / f"{path}.yaml").is_file():
            path = root / "clusters" / f"{path}.yaml"  # a bare profile name: 'local', 'a100-example'
    if not path.is_file():
        from kazhpc.config import find_configs_root

        root = find_configs_root()
        known = sorted(p.stem for p in (root / "clusters").glob("*.yaml")) if root else []
        raise ConfigError(f"{path}: cluster profile not found; shipped profiles: {', '.join(known) or 'none'}")
    doc = load_yaml_file(path, (), ())
    try:
        cluster = ClusterConfig.model_validate(doc.data)
    except ValidationError as exc:
        raise ConfigError(_describe_cluster(exc, doc, path)) from None
    cluster._source = str(path.absolute())
    cluster._lines = dict(doc.origins)
    return cluster


def _describe_cluster(exc: ValidationError, doc: Any, path: Path) -> str:
    """As for pipeline configs, but messages raised in a model validator name their own key path."""
    first = exc.errors()[0]
    text = first["msg"].removeprefix("Value error, ")
    named = re.match(r"jobs\.([A-Za-z0-9_-]+)\.(\w+): ", text)
    if named and first["type"] == "value_error" and not first["loc"]:
        origin = doc.origins.get(("jobs", named.group(1), named.group(2))) or doc.origins.get(("jobs", named.group(1)))
        if origin is not None:
            return f"{origin}: {text}"
    return describe_validation_error(exc, doc, path, ClusterConfig)
