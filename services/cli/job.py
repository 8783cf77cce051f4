"""``lab job``: show what the lab would submit for a template's baseline run.

A user checks the Job manifest (or container spec) before pointing the lab at a
cluster: resources, GPU limits, deadlines and security fields come out exactly
as the executor would send them, because both use services.executors.render.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
import yaml

from agents.engineer.jobs import plan_job
from agents.templates import load
from bus.schema import BASELINE, JobSpec, NatsAccess
from bus.schema.formats import FormatError
from services.cli.errors import LabTyper, fail
from services.common.config import config_layers
from services.executors.render import render_job

app = LabTyper(help="Inspect experiment jobs.", no_args_is_help=True, add_completion=False, error_prefix="error: ")


def _options(config: Path | None, executor: str | None) -> tuple[str, dict[str, Any]]:
    """(executor kind, options) from a lab config (``executor: {KIND: options}``), a folder of its layers (as
    ``LAB_CONFIG`` may name: k8s/), or a bare options file."""
    if config is None:
        return executor or "kubernetes", {}
    try:
        data = config_layers(config) if config.is_dir() else yaml.safe_load(config.read_text()) or {}
    except (OSError, yaml.YAMLError, FormatError) as e:
        fail(f"{config}: {str(e).splitlines()[0]}")
    if not isinstance(data, dict):
        fail(f"{config}: expected a mapping")
    section = data.get("executor")
    if not isinstance(section, dict):
        return executor or "kubernetes", data
    kind = executor or (next(iter(section)) if len(section) == 1 else "kubernetes")
    options = section.get(kind) or {}
    if not isinstance(options, dict):
        fail(f"{config}: executor.{kind} must be a mapping of options")
    return kind, options


def example_job(template: str, nats_url: str, profile: str | None = None) -> JobSpec:
    """The baseline run of a template under a profile, as the engineer plans it, with the runner's bus access the executor adds."""
    _, spec = load(template)
    job = plan_job(
        spec, profile, job_id=f"{spec.name}-baseline", project="example", experiment_id=BASELINE,
        bundle_object=f"example/bundles/{spec.name}.tar.gz", seeds=list(range(spec.seeds)),
    )
    return job.model_copy(update={"nats": NatsAccess(url=nats_url, user="runner")})


@app.callback()
def _main() -> None:
    """Inspect experiment jobs."""


@app.command()
def render(
    template: str = typer.Option(..., "--template", "-t", help="template name or folder"),
    executor: str | None = typer.Option(None, "--executor", "-e", help="kubernetes or docker (default: the config's, else kubernetes)"),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML: a lab config (executor: {KIND: options}), a folder of its layers, or bare options"),
    nats: str = typer.Option("nats://nats:4222", "--nats", help="the NATS URL job pods use"),
    profile: str | None = typer.Option(None, "--profile", "-p", help="the template profile (e.g. fast, gpu); its resources size the Job"),
) -> None:
    """Print the Job manifest / container spec for the template's baseline run."""
    kind, options = _options(config, executor)
    # TemplateError, ExecutorError: LabErrors, printed as one line by LabTyper
    typer.echo(render_job(example_job(template, nats, profile), kind, options), nl=False)


if __name__ == "__main__":
    app()
