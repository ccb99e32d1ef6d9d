"""The ``kazhpc`` command line.

Input errors (a bad config, a missing file) print one line and exit with status 2, without a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console

from kazhpc.console import err, labelled, out, report_errors, setup_logging
from kazhpc.errors import KazhpcError

app = typer.Typer(name="kazhpc", help="Adapt open language models to Kazakh on SLURM clusters: run, validate, track.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
OverridesArg = typer.Argument(None, help="overrides, key.path=value", show_default=False)


@app.callback()
def _options(verbose: bool = typer.Option(False, "-v", "--verbose", help="show third-party warnings and log lines too")) -> None:
    """Adapt open language models to Kazakh on SLURM clusters: run, validate, track."""
    if verbose:
        os.environ["KAZHPC_VERBOSE"] = "1"  # read by setup_logging; job steps it starts inherit it


@app.command()
def validate(
    config: Path = typer.Argument(..., help="pipeline config YAML"),
    overrides: Optional[List[str]] = OverridesArg,
) -> None:
    """Print the resolved config and run every check that needs no GPU."""
    from kazhpc.config import dump_yaml, load_config
    from kazhpc.runner import preflight

    with report_errors():
        cfg = load_config(config, overrides or [])
        out.print(dump_yaml(cfg), highlight=False, markup=False, end="")
        warnings = preflight(cfg)
    for warning in warnings:
        err.print(labelled("warning:", "yellow", warning), highlight=False)
    out.print(labelled("ok:", "green", f"{config} (config hash {cfg.config_hash()})"), highlight=False)


def print_uncut(table: Any) -> None:
    """Print a rich table at its natural width, wider than the terminal or a pipe's 80 columns if
    need be: a number or a name cut to 'ge…' is worse than a line that runs on."""
    from rich.measure import Measurement

    needed = Measurement.get(out, out.options.update(width=10_000), table).maximum
    Console(width=max(out.width, needed), soft_wrap=True).print(table)


@app.command()
def plan(
    config: Path = typer.Argument(..., help="pipeline config YAML"),
    overrides: Optional[List[str]] = OverridesArg,
    json_out: bool = typer.Option(False, "--json", help="print the estimates as JSON"),
) -> None:
    """Estimate per-GPU training memory for the config and for Gemma-3 4B/12B/27B (an estimate)."""
    import json

    from rich.table import Table

    from kazhpc.train.planner import COLUMNS, plans_for_sizes, table_rows

    with report_errors():
        plans = plans_for_sizes(config, overrides or [])
    if json_out:
        print(json.dumps([p.as_dict() for p in plans], indent=2))
        return
    table = Table(title=f"QLoRA memory per GPU (GiB, estimate): {config}")
    for name, _ in COLUMNS:
        table.add_column(name, justify="left" if name in ("model", "ZeRO") else "right")
    for row in table_rows(plans):
        table.add_row(*row)
    print_uncut(table)
    out.print("first row: this config; the others: each size's configs/models/ layout with this config's own train keys. "
              "Parameters from config.json when local, else kazhpc.train.planner.GEMMA3.", highlight=False)


@app.command()
def run(
    config: Optional[Path] = typer.Argument(None, help="pipeline config YAML (omit with --run-dir)"),
    overrides: Optional[List[str]] = OverridesArg,
    only: Optional[List[str]] = typer.Option(None, "--only", help="run only this stage (repeatable)"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="join (resume) an existing run directory"),
    force: bool = typer.Option(False, "--force", help="redo the selected stages from scratch, parts included"),
) -> None:
    """Run the pipeline's stages in order on this machine (with --run-dir: resume that run; stages
    that completed from unchanged inputs are reused)."""
    from kazhpc.config import load_config
    from kazhpc.runner import open_run_dir, run_pipeline
    from kazhpc.summary import print_summary

    setup_logging()
    with report_errors():
        if config is not None and run_dir is not None and "=" in str(config) and not config.exists():
            config, overrides = None, [str(config), *(overrides or [])]  # `run --run-dir R key=value`
        if config is None and run_dir is None:
            raise KazhpcError("give a pipeline CONFIG, or --run-dir RUN to resume a run with its own config")
        if config is None and overrides:
            raise KazhpcError("--run-dir without CONFIG uses the run's own config.yaml; overrides are not allowed")
        cfg = open_run_dir(run_dir) if config is None else load_config(config, overrides or [])
        path = run_pipeline(cfg, run_dir=run_dir, only=only, force=force)
    out.print(f"run directory: {path}", highlight=False)
    print_summary(path, cfg)
    if config is None:
        out.print(f"browse it: kazhpc ui {path / 'config.yaml'}", highlight=False)
        return
    store_overrides = [o for o in overrides or [] if o.startswith(("runs_root=", "tracking."))]
    out.print("browse it: kazhpc ui " + " ".join([str(config), *store_overrides]), highlight=False)



@app.command()
def init(
    config: Path = typer.Argument(..., help="pipeline config YAML"),
    overrides: Optional[List[str]] = OverridesArg,
) -> None:
    """Create a run directory (resolved config inside) and print its path, for sbatch scripts."""
    from kazhpc.config import load_config
    from kazhpc.runner import new_run_dir, preflight

    with report_errors():
        cfg = load_config(config, overrides or [])
        preflight(cfg)
        print(new_run_dir(cfg))


@app.command()
def sweep(
    config: Path = typer.Argument(..., help="a pipeline config, or a sweep file (configs/sweeps/)"),
    axes: Optional[List[str]] = typer.Argument(None, help="key=v1,v2 (a grid over every axis) or key=value (for every variant)",
                                               show_default=False),
    metric: Optional[List[str]] = typer.Option(None, "--metric", help="STAGE.path.in.manifest to compare (repeatable)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="validate and preflight every variant, list them; run nothing"),
    cluster: Optional[Path] = typer.Option(None, "--cluster", help="submit the variants to SLURM with this profile "
                                           "(one array per step when they share their steps) instead of running them here"),
) -> None:
    """Run variants of one config as sibling MLflow runs under one parent: here, one after another,
    then write the comparison table and plot (kazhpc compare); or, with --cluster, submitted to SLURM,
    with a last job that runs kazhpc compare once every variant has ended."""
    from kazhpc.sweep import SweepSpec, compare, grid, load_variants, read_sweep_file, run_sweep, split_values

    setup_logging()
    with report_errors():
        items = list(axes or [])
        if config.suffix in (".yaml", ".yml") and config.is_file() and _is_sweep_file(config):
            spec = read_sweep_file(config)
            spec.overrides += items
        else:
            varying = [a for a in items if len(split_values(a.partition("=")[2] or "x")) > 1]
            if not varying:
                raise KazhpcError("sweep: give at least one axis key=v1,v2 (or a sweep file)")
            fixed = [a for a in items if a not in varying]
            spec = SweepSpec(config.stem, config.resolve(), fixed, grid(varying))
        spec.metrics = list(metric or []) or spec.metrics
        variants = load_variants(spec)
        for variant in variants:
            out.print(f"variant {variant.name}: {' '.join(variant.overrides) or '(the config as it is)'}", highlight=False)
        if dry_run:
            from kazhpc.sweep import preflight_variants

            for warning in preflight_variants(variants):
                err.print(labelled("warning:", "yellow", warning), highlight=False)
            return
        if cluster is not None:
            from kazhpc.launch.cluster import load_cluster
            from kazhpc.launch.sweep import submit_sweep

            folder = submit_sweep(spec, load_cluster(cluster), cluster)
            record = json.loads((folder / "sweep.json").read_text(encoding="utf-8"))
            how = "one SLURM array per step" if record["submission"]["arrays"] else "each variant its own jobs"
            out.print(f"sweep folder: {folder} ({how})", highlight=False, soft_wrap=True)
            for variant in record["variants"]:
                out.print(f"  {variant['name']}: kazhpc status {variant['run_dir']}", highlight=False, markup=False, soft_wrap=True)
            last = record["submission"]["compare"].get("slurm_id")
            out.print(f"once they end, SLURM job {last} writes {folder / 'compare.md'}" if last else
                      f"when they are done: kazhpc compare {folder}", highlight=False, markup=False, soft_wrap=True)
            return
        folder = run_sweep(spec)
        out.print(f"sweep folder: {folder}", highlight=False)
        if spec.metrics:
            out.print((compare(folder, spec.metrics)).read_text(encoding="utf-8"), highlight=False)


def _is_sweep_file(path: Path) -> bool:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "config" in data and ("variants" in data or "grid" in data)


@app.command(name="compare")
def compare_command(
    sweep_dir: Path = typer.Argument(..., help="a sweep folder (kazhpc sweep prints it)"),
    metric: Optional[List[str]] = typer.Option(None, "--metric", help="STAGE.path.in.manifest (repeatable; default: the sweep's)"),
) -> None:
    """Compare a sweep's variants: compare.md / .csv / .png in its folder, and the winner by its rule."""
    from kazhpc.sweep import compare

    with report_errors():
        out.print(compare(sweep_dir, list(metric or [])).read_text(encoding="utf-8"), highlight=False)


# -- one command per job type, derived from kazhpc.registry ------------------------------------


def _run_job_command(job: str, config: Optional[Path], overrides: Optional[List[str]], run_dir: Optional[Path],
                     shard: Optional[str], stage: Optional[str]) -> None:
    """One stage of this job type (or one part of it, an array task); print what the job says it
    printed (a table, a results file), the run directory and the stage's states."""
    from kazhpc.registry import job_type
    from kazhpc.runner import read_state, run_single

    spec = job_type(job)
    setup_logging()
    with report_errors():
        if config is not None and config.is_dir() and spec.appendable:  # kazhpc export RUN [export.key=value ...]
            from kazhpc.runner import append_stage, run_pipeline
            cfg, name = append_stage(config, job, overrides or [])
            path = run_pipeline(cfg, run_dir=config, only=[name])
        else:
            path, name = run_single(job, config, overrides or [], run_dir, shard, stage)
    states = read_state(path).get("jobs", {})
    if shard is None and spec.table and (path / name / spec.table).is_file():
        sys.stdout.write((path / name / spec.table).read_text(encoding="utf-8"))  # unwrapped
    if shard is None and spec.result and (path / name / spec.result).is_file():
        out.print(f"results: {path / name / spec.result}", highlight=False)
    out.print(f"run directory: {path}", highlight=False)
    for key, state in states.items():
        if key == name or key.startswith(f"{name}["):
            out.print(f"  {key}: {state.get('status')}", highlight=False)


def _job_command(job: str, splits: bool):
    """The `kazhpc <job>` command: CONFIG [key=value ...] or --run-dir, --stage where several
    stages run this job type, plus --shard if it splits."""
    from kazhpc.registry import job_type
    config_arg = typer.Argument(None, help="pipeline config YAML (omit with --run-dir)"
                                + ("; or a finished run's directory: adds this stage to it" if job_type(job).appendable else ""))
    run_dir_opt = typer.Option(None, "--run-dir", help="join an existing run directory")
    stage_opt = typer.Option(None, "--stage", help=f"the {job} stage to run (default: the one {job} stage)")
    if splits:
        def command(config: Optional[Path] = config_arg, overrides: Optional[List[str]] = OverridesArg,
                    run_dir: Optional[Path] = run_dir_opt, stage: Optional[str] = stage_opt,
                    shard: Optional[str] = typer.Option(None, "--shard", help="i/n: only part i of n (an array task; with --run-dir)")) -> None:
            _run_job_command(job, config, overrides, run_dir, shard, stage)
    else:
        def command(config: Optional[Path] = config_arg, overrides: Optional[List[str]] = OverridesArg,
                    run_dir: Optional[Path] = run_dir_opt, stage: Optional[str] = stage_opt) -> None:
            _run_job_command(job, config, overrides, run_dir, None, stage)
    return command


def _add_job_commands() -> None:
    from kazhpc.registry import JOB_TYPES

    for spec in JOB_TYPES:
        app.command(spec.name, help=spec.summary)(_job_command(spec.name, spec.splits))


_add_job_commands()


@app.command()
def ui(
    config: Optional[Path] = typer.Argument(None, help="pipeline config (its tracking store); default runs/"),
    overrides: Optional[List[str]] = OverridesArg,
    host: str = typer.Option("127.0.0.1", help="interface to listen on"),
    port: int = typer.Option(5000, help="port to listen on"),
) -> None:
    """Start the MLflow UI on the configured tracking store."""
    from kazhpc.config import load_config
    from kazhpc.tracking import default_tracking_uri, runs_view

    experiment = None
    with report_errors():
        if config is not None:
            cfg = load_config(config, overrides or [])
            uri, experiment = cfg.tracking.uri or default_tracking_uri(cfg.runs_root), cfg.tracking.experiment
        else:
            uri = default_tracking_uri(Path("runs").absolute())
    if uri.startswith(("http://", "https://")):
        out.print(f"the tracking store is a server: open {uri}")  # not asked: a server that is down would keep it retrying
        return
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
               "--host", host, "--port", str(port), "--workers", "1"]
    page = runs_view(f"http://{host}:{port}", uri, experiment) if experiment else f"http://{host}:{port}"
    out.print(f"MLflow UI on {page} (store {uri}); Ctrl-C stops it", highlight=False, soft_wrap=True)
    sys.stdout.flush()
    os.execv(sys.executable, command)  # the server replaces this process: signals reach it directly


@app.command()
def sync(
    run_dir: Path = typer.Argument(..., help="run directory whose tracking journal to upload"),
    uri: Optional[str] = typer.Option(None, help="target tracking URI; default: the run's configured store"),
) -> None:
    """Upload what a tracking store lacks of a run's journal (safe to repeat: nothing is copied twice)."""
    from kazhpc.runner import open_run_dir
    from kazhpc.tracking import PARENT_KEY, default_tracking_uri, sync as sync_journal

    setup_logging()
    with report_errors():
        cfg = open_run_dir(run_dir)
        target = uri or cfg.tracking.uri or default_tracking_uri(cfg.runs_root)
        result = sync_journal(run_dir, target, cfg.tracking.experiment, timeout_s=cfg.tracking.timeout_s)
    parent = result.runs.get(PARENT_KEY)
    if result.sent or result.created:
        message = (f"synced {run_dir} to {result.uri}: {result.sent} journal events sent, "
                   f"{result.created} runs created; parent run {parent}")
    else:
        message = f"{result.uri} already has everything in {run_dir}'s journal; parent run {parent}"
    out.print(message, markup=False, highlight=False, soft_wrap=True)


# -- cluster: submit, render, status, cancel (kazhpc.launch) ----------------------------------


@app.command()
def submit(
    config: Optional[Path] = typer.Argument(None, help="pipeline config YAML (omit with --resume)"),
    overrides: Optional[List[str]] = OverridesArg,
    cluster: Optional[Path] = typer.Option(None, "--cluster", help="cluster profile (configs/clusters/*.yaml)"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="resubmit this run from its first unfinished job"),
) -> None:
    """Submit the pipeline to SLURM: one job per step (arrays for parts), chained with afterok."""
    from kazhpc.config import load_config
    from kazhpc.launch.cluster import load_cluster
    from kazhpc.launch.records import read_submission
    from kazhpc.launch.submit import submit as submit_pipeline
    from kazhpc.runner import open_run_dir

    setup_logging()
    with report_errors():
        if resume is not None:
            if config is not None or overrides:
                raise KazhpcError("--resume uses the run's own config.yaml; give no CONFIG or overrides")
            cfg = open_run_dir(resume)
            cluster = cluster or Path(read_submission(resume)["cluster_file"])
        elif config is None:
            raise KazhpcError("give a pipeline CONFIG (or --resume RUN_DIR)")
        else:
            cfg = load_config(config, overrides or [])
        if cluster is None:
            raise KazhpcError("--cluster PROFILE is required (e.g. configs/clusters/local.yaml)")
        profile = load_cluster(cluster)
        run_dir, steps = submit_pipeline(cfg, profile, cluster, resume)
    out.print(f"run directory: {run_dir}", highlight=False, soft_wrap=True)
    for step in steps:
        after = f"  after {', '.join(step['after'])}" if step["after"] else ""
        tasks = f" ({step['array']} array tasks)" if step["array"] else ""
        out.print(f"  {step['name']}: SLURM {step['slurm_id']}{tasks}{after}", highlight=False, soft_wrap=True)
    out.print(f"follow it: kazhpc status {run_dir} --wait", highlight=False, markup=False, soft_wrap=True)


@app.command()
def render(
    config: Path = typer.Argument(..., help="pipeline config YAML"),
    overrides: Optional[List[str]] = OverridesArg,
    cluster: Path = typer.Option(..., "--cluster", help="cluster profile (configs/clusters/*.yaml)"),
    output: Path = typer.Option(..., "-o", "--output", help="folder for the sbatch scripts and submit.sh"),
) -> None:
    """Write the sbatch scripts `kazhpc submit` would submit, plus submit.sh that chains them."""
    from kazhpc.config import load_config
    from kazhpc.launch.cluster import load_cluster
    from kazhpc.launch.steps import render as render_steps, slurm_steps, step_warnings
    from kazhpc.runner import preflight

    with report_errors():
        cfg = load_config(config, overrides or [])
        warnings = preflight(cfg)
        steps = slurm_steps(cfg, load_cluster(cluster))
        written = render_steps(steps, output, config, overrides or [])
    for warning in [*warnings, *step_warnings(steps)]:
        err.print(labelled("warning:", "yellow", warning), highlight=False)
    for path in written:
        out.print(str(path), highlight=False)
    out.print(f"submit them with: bash {output / 'submit.sh'}", highlight=False)


@app.command()
def status(
    run_dir: Path = typer.Argument(..., help="a run directory (made by kazhpc run or kazhpc submit)"),
    wait: bool = typer.Option(False, "--wait", help="poll until no job is queued or running"),
    timeout: float = typer.Option(3600, help="with --wait: give up after this many seconds"),
) -> None:
    """Each job's state and log (SLURM's and run.json's; for a run made by `kazhpc run`, run.json's);
    which job failed and where its log is. Exit 1 if one failed (3 if --wait gave up while jobs
    were still queued or running)."""
    import time

    from kazhpc.launch.status import describe, describe_local, is_submitted, local_states, step_states

    with report_errors():
        if not (run_dir / "config.yaml").is_file():
            raise KazhpcError(f"{run_dir}: not a kazhpc run directory (no config.yaml)")
        states, show = (step_states, describe) if is_submitted(run_dir) else (local_states, describe_local)
        deadline = time.time() + timeout
        steps = states(run_dir)
        while wait and any(s.active for s in steps) and time.time() < deadline:
            time.sleep(5)
            steps = states(run_dir)
        lines, done = show(run_dir, steps)
    for line in lines:
        out.print(line, highlight=False, markup=False, soft_wrap=True)
    if wait and not any(s.active for s in steps):
        from kazhpc.runner import open_run_dir
        from kazhpc.summary import print_summary

        print_summary(run_dir, open_run_dir(run_dir))
    if any(s.failed for s in steps):
        raise SystemExit(1)
    if wait and any(s.active for s in steps):
        out.print(f"still queued or running after {timeout:.0f} s", highlight=False)
        raise SystemExit(3)


@app.command()
def cancel(run_dir: Path = typer.Argument(..., help="a run directory made by kazhpc submit")) -> None:
    """Cancel the run's queued and running SLURM jobs."""
    from kazhpc.launch.status import cancel as cancel_run

    with report_errors():
        cancelled = cancel_run(run_dir)
    out.print(f"cancelled: {', '.join(cancelled)}" if cancelled else "nothing queued or running", highlight=False)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
