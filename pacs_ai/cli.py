"""The ``pacs-ai`` command line.

Each command imports only what it runs: ``serve`` never imports torch; ``worker`` imports
it in its pool process only.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from core.errors import ConfigError, PacsAiError
from core.settings import Settings, load_settings
from pacs_ai.compare.command import compare
from pacs_ai.database import db, require_current_ledger
from pacs_ai.operations import resend, routes
from pacs_ai.pull import backfill, run
from pacs_ai.review import discard, release
from pacs_ai.users import users

CONFIG_HELP = "Configuration file (YAML). Environment: PACS_AI_CONFIG."


def _load(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _setup_logging(settings: Settings, level: str | None = None) -> None:
    import logging  # noqa: PLC0415

    from core.logs import configure_logging  # noqa: PLC0415

    # Python warnings (pydicom reports lenient-reading problems as warnings) are logged
    # too, without their text above DEBUG (core.library_logs).
    configure_logging(level or settings.logging.level, settings.logging.format)
    # PACS_AI_CONFIG is the CLI's own (the file to read), not a setting: no warning.
    for name in (n for n in settings.ignored_environment if n != "PACS_AI_CONFIG"):
        logging.getLogger("pacs_ai").warning(
            "ignoring environment variable %s: it names no setting", name
        )


F = TypeVar("F", bound=Callable[..., Any])


def _config_option(func: F) -> F:
    return click.option(
        "--config",
        "config",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        envvar="PACS_AI_CONFIG",
        help=CONFIG_HELP,
    )(func)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pacs-ai", prog_name="pacs-ai")
def main() -> None:
    """pacs-ai: DICOM node + AI workers that return SEG and SR results to your PACS.

    Start with `pacs-ai demo --out results` (no services needed), then run
    `pacs-ai serve` and `pacs-ai worker` with a configuration file.
    """


@main.command()
@_config_option
def serve(config: Path | None) -> None:
    """Run the DICOM node: receive, store, detect completion, route and queue jobs."""
    from dicom_node.node import check_routes_against_models  # noqa: PLC0415
    from models.registry import ModelRegistry  # noqa: PLC0415
    from pacs_ai.service import Service  # noqa: PLC0415

    settings = _load(config)
    _setup_logging(settings)
    try:
        registry = ModelRegistry.discover(settings.model_dirs)
        check_routes_against_models(settings, registry.ids)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    # A new ledger is created here; one of another release is refused (`pacs-ai db upgrade`).
    require_current_ledger(settings, config)
    stop = _stop_on_signals()
    try:
        with Service(settings) as service:
            assert service.node is not None
            click.echo(
                f"pacs-ai node {settings.node.ae_title} on {settings.node.host}:"
                f"{service.node.port}; data in {settings.data_dir}. Ctrl-C stops.",
                err=True,
            )
            stop.wait()
    except PacsAiError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@_config_option
@click.option(
    "--models", "models", help="Comma-separated model ids to serve (default: all installed)."
)
@click.option(
    "--gpu", type=click.IntRange(min=0), help="Use only this GPU (sets CUDA_VISIBLE_DEVICES)."
)
@click.option(
    "--pool",
    type=click.Choice(["prefork", "solo"]),
    default="prefork",
    show_default=True,
    help="prefork runs jobs in a child process (CUDA initialised after the fork).",
)
def worker(config: Path | None, models: str | None, gpu: int | None, pool: str) -> None:
    """Run a Celery worker that runs model jobs (one per GPU, models kept warm)."""
    from workers.app import run_worker  # noqa: PLC0415

    settings = _load(config)
    _setup_logging(settings)
    require_current_ledger(settings, config)
    requested = [m.strip() for m in models.split(",") if m.strip()] if models else None
    try:
        run_worker(settings, models=requested, gpu=gpu, pool=pool, log_level=settings.logging.level)
    except PacsAiError as exc:
        raise click.ClickException(str(exc)) from None


@main.group(name="config")
def config_group() -> None:
    """Check configuration files."""


@config_group.command(name="check")
@click.argument(
    "file",
    required=False,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="PACS_AI_CONFIG",
)
def config_check(file: Path | None) -> None:
    """Validate FILE (default: $PACS_AI_CONFIG) and its model packages, and report
    every problem at once, one line each, naming the key.

    Also lists what each route's models accept (from their manifests), with warnings
    for routes that would send series their model refuses (recorded NOT_APPLICABLE) or
    that no called AE title the node accepts can reach. Exits 1 when there are problems.
    """
    from pacs_ai.config_check import check_config  # noqa: PLC0415

    if file is None:
        raise click.UsageError("give the configuration FILE, or set PACS_AI_CONFIG")
    report = check_config(file)
    for warning in report.warnings:
        click.echo(f"  warning: {warning}")
    if not report.ok:
        count = len(report.problems)
        lines = "\n".join(f"  - {problem}" for problem in report.problems)
        raise click.ClickException(f"{file}: {count} problem{'s' if count != 1 else ''}:\n{lines}")
    settings, registry = report.settings, report.registry
    assert settings is not None and registry is not None
    broker = settings.broker_url or f"embedded Redis under {settings.data_dir}"
    if settings.broker_sentinel is not None:
        broker += f" (Redis Sentinel, master {settings.broker_sentinel.master_name})"
    aliases = ", ".join(settings.node.ae_title_aliases)
    click.echo(f"{file}: OK")
    click.echo(
        f"  node        {settings.node.ae_title} on {settings.node.host}:{settings.node.port}"
        + (f" (also answers to {aliases})" if aliases else "")
    )
    click.echo(f"  data_dir    {settings.data_dir}")
    click.echo(f"  broker      {broker}")
    click.echo(f"  ledger      {settings.resolved_ledger_url}")
    click.echo(f"  models      {', '.join(registry.ids) or 'none'}")
    click.echo(
        f"  routes      {', '.join(r.name for r in settings.routes) or 'none (receive only)'}"
    )
    click.echo(f"  destinations {', '.join(settings.destinations) or 'none'}")
    for line in report.accepted:
        click.echo(f"  {line}")


@main.command()
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--limit", default=20, show_default=True, help="How many recent jobs to show.")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(
        ["RECEIVING", "READY", "QUEUED", "RUNNING", "DELIVERING", "DONE", "FAILED", "RETRYING",
         "NEEDS_REVIEW", "NOT_APPLICABLE", "DISCARDED"]
    ),
    help="Only jobs in this state (repeatable).",
)  # fmt: skip
def status(config: Path | None, as_json: bool, limit: int, states: tuple[str, ...]) -> None:
    """Show what the dashboard shows: whether the node is up (its heartbeat), readiness,
    jobs by state, queues, workers, destinations (misconfigured ones marked) and recent
    jobs with their stage times, then what was set aside: series no route matched (each
    rule's reason), NOT_APPLICABLE jobs, instances refused at the door, quarantined ones.

    --json prints each job's id, state, route, model, stage timestamps (epoch seconds),
    durations and turnaround, as the dashboard's /api/jobs does. Exits 1 when not ready
    (the node not running, no live worker for a routed model, broker or ledger away).
    """
    from monitor.terminal import render_text, status_data  # noqa: PLC0415

    settings = _load(config)
    require_current_ledger(settings, config)
    try:
        data = status_data(settings, limit=limit, states=list(states) or None)
    except PacsAiError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(data, indent=2) if as_json else render_text(data))
    if not data["ready"]:
        sys.exit(1)


@main.group()
def models() -> None:
    """Inspect model packages."""


@models.command(name="list")
@_config_option
def models_list(config: Path | None) -> None:
    """List installed model packages."""
    from models.registry import ModelRegistry  # noqa: PLC0415

    settings = _load(config)
    try:
        registry = ModelRegistry.discover(settings.model_dirs)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    for package in registry:
        manifest = package.manifest
        backends = ", ".join(f"{b.name}/{b.precision}" for b in manifest.backends)
        click.echo(
            f"{manifest.id:16} {manifest.version:8} {manifest.task:13} {backends:24} "
            f"{manifest.name}"
        )


@models.command(name="verify")
@_config_option
@click.argument("model_ids", nargs=-1)
@click.option(
    "--package",
    "package_dirs",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A package folder to verify (repeatable), installed or not.",
)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
def models_verify(
    config: Path | None, model_ids: tuple[str, ...], package_dirs: tuple[Path, ...], device: str
) -> None:
    """Check schema, weights checksum and a dry run of packages (default: all installed).

    Exits 1 when any package fails, listing every problem.
    """
    from inference.verify import verify_package  # noqa: PLC0415
    from models.engine_cache import default_engine_dir  # noqa: PLC0415
    from models.registry import ModelRegistry  # noqa: PLC0415

    settings = _load(config)
    targets: list[Any] = list(package_dirs)
    if model_ids or not package_dirs:
        try:
            registry = ModelRegistry.discover(settings.model_dirs, check_weights=False)
            packages = [registry.get(m) for m in model_ids] if model_ids else list(registry)
        except PacsAiError as exc:
            raise click.ClickException(str(exc)) from None
        targets.extend(packages)
    failed = 0
    for target in targets:
        report = verify_package(target, device=device, engine_dir=default_engine_dir(settings))
        if report.ok:
            fallback = f" (skipped {'; '.join(report.fallbacks)})" if report.fallbacks else ""
            click.echo(
                f"{report.model_id:28} OK    {report.backend}/{report.precision} "
                f"dry run {report.seconds:.2f} s{fallback}"
            )
            continue
        failed += 1
        click.echo(f"{report.model_id:28} FAIL  {report.folder}")
        for problem in report.problems:
            click.echo(f"    - {problem}")
    if failed:
        raise click.ClickException(f"{failed} of {len(targets)} package(s) failed verification")


@models.command(name="import-bundle")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Package folder to write (model.yaml + model.ts).",
)
@click.option("--id", "model_id", help="Model id (default: from the bundle's name).")
def models_import_bundle(bundle: Path, out_dir: Path, model_id: str | None) -> None:
    """Turn a MONAI bundle (configs + models/model.ts) into a pacs-ai model package."""
    from models.bundle import import_bundle  # noqa: PLC0415

    try:
        imported = import_bundle(bundle, out_dir, model_id=model_id)
    except PacsAiError as exc:
        raise click.ClickException(str(exc)) from None
    manifest = imported.manifest
    click.echo(f"wrote {imported.package_dir / 'model.yaml'}: {manifest.id} {manifest.version}")
    for warning in imported.warnings:
        click.echo(f"  note: {warning}")
    click.echo(f"check it with: pacs-ai models verify --package {imported.package_dir}")


@models.command(name="build-engine")
@_config_option
@click.argument("model_ids", nargs=-1)
@click.option("--gpu", type=click.IntRange(min=0), default=0, show_default=True)
def models_build_engine(config: Path | None, model_ids: tuple[str, ...], gpu: int) -> None:
    """Build the TensorRT engines of packages into the engine cache (under a file lock).

    Workers then load them at start instead of building. Needs an NVIDIA GPU and the
    `tensorrt` extra.
    """
    from inference.engines import build_engines  # noqa: PLC0415
    from models.registry import ModelRegistry  # noqa: PLC0415

    settings = _load(config)
    try:
        registry = ModelRegistry.discover(settings.model_dirs)
        packages = [registry.get(m) for m in model_ids] if model_ids else list(registry)
        built = build_engines(packages, settings=settings, device=f"cuda:{gpu}")
    except PacsAiError as exc:
        raise click.ClickException(str(exc)) from None
    for line in built:
        click.echo(line)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--to", "to", required=True, help="Destination as AET@HOST:PORT.")
@click.option("--calling-ae", default="PACSAI", show_default=True, help="Our AE title.")
def send(paths: tuple[Path, ...], to: str, calling_ae: str) -> None:
    """Send DICOM files (or folders of them) to AET@HOST:PORT with C-STORE."""
    from dicom_node.scu import AssociationError, send_files  # noqa: PLC0415

    try:
        called_ae, address = to.split("@", 1)
        host, port_text = address.rsplit(":", 1)
        port = int(port_text)
    except ValueError:
        raise click.BadParameter(
            "expected AET@HOST:PORT, for example ORTHANC@127.0.0.1:4242", param_hint="--to"
        ) from None
    files = sorted(
        p for path in paths for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file()
    )
    try:
        report = send_files(files, host=host, port=port, called_ae=called_ae, calling_ae=calling_ae)
    except AssociationError as exc:
        raise click.ClickException(str(exc)) from None
    stored = sum(1 for r in report.results if r.ok)
    click.echo(f"sent {stored}/{len(report.results)} files to {to} in {report.seconds:.2f} s")
    for failure in report.failed:
        click.echo(f"  failed: {failure.path}: {failure.reason}", err=True)
    if report.failed:
        sys.exit(1)


@main.command()
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the SEG and SR results (created).",
)
@click.option(
    "--input",
    "input_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A folder with one CT series to send instead of the synthetic chest CT.",
)
@click.option(
    "--timeout", default=600.0, show_default=True, help="Seconds to wait for the results."
)
@click.option(
    "--keep-data", is_flag=True, help="Keep the demo's data directory (spool, ledger, logs)."
)
def demo(out_dir: Path, input_dir: Path | None, timeout: float, keep_data: bool) -> None:
    """Run the whole pipeline on this machine, with nothing to install or configure.

    Starts an embedded Redis, the DICOM node, a worker and a stand-in PACS; sends a
    synthetic chest CT (or --input) over C-STORE; waits for the SEG and SR; writes them to
    --out and prints what happened with the time of each stage.
    """
    from core.library_logs import install_library_log_guard  # noqa: PLC0415
    from pacs_ai.demo import run_demo  # noqa: PLC0415

    # The node runs in this process: what libraries say is logged without its text.
    install_library_log_guard()
    try:
        run_demo(out_dir=out_dir, input_dir=input_dir, timeout=timeout, keep_data=keep_data)
    except PacsAiError as exc:
        raise click.ClickException(str(exc)) from None


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def _handler(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    return stop


main.add_command(routes)
main.add_command(run)
main.add_command(backfill)
main.add_command(compare)
main.add_command(resend)
main.add_command(release)
main.add_command(discard)
main.add_command(users)
main.add_command(db)
