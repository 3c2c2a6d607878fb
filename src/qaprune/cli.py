"""The ``qaprune`` command line (typer). Errors of qaprune print as one line, exit code 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Quantization-aware pruning and model compression for PyTorch.",
)


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="Recipe file (YAML or JSON)."),
    out: Path | None = typer.Option(None, "--out", help="Run directory (default runs/<name>)."),
    data_dir: str | None = typer.Option(None, "--data-dir", help="Folder with datasets."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe field: key.path=value."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
) -> None:
    """Run a recipe: train, prune, quantize, measure; write a run directory."""
    from qaprune.runner import run as run_recipe

    log = (lambda *_: None) if quiet else (lambda msg: typer.echo(msg, err=True))
    result = run_recipe(recipe, out=out, data_dir=data_dir, overrides=set_, resume=resume, progress=not quiet, log=log)
    m, sel = result.metrics, result.results.get("selected") or {}
    ref = sel.get("reference_accuracy")
    against = f" vs {ref:.4f} dense" if ref is not None else ""
    verdict = "" if sel.get("within_tolerance", True) else f", NOT within {sel.get('max_drop')} points"
    typer.echo(
        f"{result.run_dir}: step {sel.get('step')}, accuracy {m['accuracy']:.4f}{against}{verdict}, "
        f"BOPs {m['bops']:.4g} ({m['bops_reduction']:.1f}x fewer than 32-bit dense), sparsity {m['sparsity']:.3f}, "
        f"{m['size_bytes']} bytes"
    )


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Output directory."),
    quick: bool = typer.Option(False, "--quick", help="Fewer epochs (a smoke test)."),
) -> None:
    """The Ps-and-Qs study on bundled digits: fp32, QAT, pruning, QAP; Pareto plot and headline."""
    from qaprune.demo import run_demo

    run_demo(out, quick=quick, log=lambda msg: typer.echo(msg))


@app.command()
def search(
    recipe: Path = typer.Argument(..., help="Recipe with a search: section (YAML or JSON)."),
    trials: int = typer.Option(
        ..., "--trials", help="Finished trials the study should hold in all (a rerun resumes up to this number)."
    ),
    workers: int = typer.Option(1, "--workers", help="Worker processes on this machine."),
    storage: str | None = typer.Option(
        None,
        "--storage",
        help="Optuna RDB URL (default sqlite:///OUT/study.db); PostgreSQL for workers on many machines.",
    ),
    out: Path | None = typer.Option(None, "--out", help="Search directory (default runs/<name>-search)."),
    data_dir: str | None = typer.Option(None, "--data-dir", help="Folder with datasets."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe field: key.path=value."),
    export_best: Path | None = typer.Option(
        None, "--export-best", help="Write the Pareto-optimal trials' recipes (trial_<n>.yaml) into this folder."
    ),
    study_name: str | None = typer.Option(None, "--study-name", help="Study name (default: recipe name)."),
    heartbeat: int = typer.Option(
        20,
        "--heartbeat",
        help="Seconds between a trial's heartbeats; a trial silent for three times as long is failed and retried.",
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
) -> None:
    """Search the recipe's space with Optuna (TPE, GP, NSGA-II); write the Pareto report."""
    from qaprune.autosearch.api import search as run_search

    log = None if quiet else (lambda msg: typer.echo(msg, err=True))
    result = run_search(
        recipe,
        trials=trials,
        workers=workers,
        storage=storage,
        out=out,
        data_dir=data_dir,
        overrides=set_,
        export_best=export_best,
        study_name=study_name,
        heartbeat=heartbeat,
        log=log,
    )
    for row in result.pareto:
        names = ", ".join(
            f"{k} {row['metrics'][k]:.6g}"
            for k in ("accuracy", "bops", "size_bytes", "latency_ms")
            if k in row["metrics"]
        )
        typer.echo(f"trial {row['number']}: {names}; {row['params']}")
    typer.echo(
        f"{len(result.pareto)} Pareto-optimal of {len(result.trials)} trials; report {result.report}"
        + (f"; recipes in {export_best}" if export_best is not None else "")
    )


@app.command()
def measure(
    target: Path = typer.Argument(..., help="A run directory or its model .safetensors."),
    data_dir: str | None = typer.Option(None, "--data-dir"),
    step: int | None = typer.Option(None, "--step", help="This step of the run instead of the delivered one."),
) -> None:
    """Re-measure a saved model (a run's delivered step, or --step N) on its recipe's test split;
    prints the metrics as JSON."""
    from qaprune.rundir import measure_saved

    typer.echo(json.dumps(measure_saved(target, data_dir=data_dir, step=step), indent=2))


@app.command()
def report(
    run_dir: Path = typer.Argument(
        ..., help="A run directory (results.json) or a search directory (study.db, or --storage)."
    ),
    storage: str | None = typer.Option(
        None, "--storage", help="A search's Optuna RDB URL (default: RUN_DIR/study.db)."
    ),
    study_name: str | None = typer.Option(None, "--study-name", help="The study, when the storage holds several."),
    export_best: Path | None = typer.Option(
        None, "--export-best", help="Also write the Pareto-optimal trials' recipes into this folder."
    ),
) -> None:
    """Write report.html and the plots of a run directory, or search.html (Pareto fronts,
    hypervolume, Pareto table) of a search directory from its study, even while it runs."""
    if (run_dir / "results.json").is_file() and storage is None:
        from qaprune.report import write_report

        typer.echo(str(write_report(run_dir)))
        return
    from qaprune.autosearch.api import report_search

    result = report_search(run_dir, storage=storage, study_name=study_name, export_best=export_best, log=None)
    typer.echo(f"{len(result.pareto)} Pareto-optimal of {len(result.trials)} trials; report {result.report}")


@app.command("shrink")
def shrink_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    out: Path | None = typer.Option(None, "--out", help="ONNX file (default RUN_DIR/model.shrunk.onnx)."),
    data_dir: str | None = typer.Option(None, "--data-dir"),
    latency: bool = typer.Option(True, "--latency/--no-latency", help="Time dense vs shrunk."),
    step: int | None = typer.Option(None, "--step", help="This step of the run instead of the delivered one."),
) -> None:
    """Remove pruned channels physically, check the outputs, export ONNX, time it; writes shrink.json."""
    from qaprune.export.run_shrink import shrink_run

    s = shrink_run(run_dir, data_dir=data_dir, out=out, latency=latency, step=step)
    typer.echo(
        f"removed {sum(s['removed'].values())} channels in {len(s['removed'])} layers; "
        f"MACs {s['macs_before']:,} -> {s['macs_after']:,} (x{s['flops_ratio']:.2f}); "
        f"max |diff| {s['max_abs_diff']:.1e}, top-1 agreement {s['top1_agreement']:.4f}"
    )
    for r in s.get("latency", []):
        typer.echo(
            f"  {r['backend']:<5} batch {r['batch']:>3} threads {r['threads']}: {r['dense_ms']:.3f} ms -> "
            f"{r['shrunk_ms']:.3f} ms (x{r['speedup']:.2f})"
        )
    for name, why in s["not_shrunk"].items():
        typer.echo(f"  not shrunk: {name}: {why}")


@app.command("export")
def export_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    format: str = typer.Option("onnx", "--format", help="A registered format: onnx | qdq | qonnx | qap."),
    out: Path | None = typer.Option(
        None, "--out", help="Output file (default RUN_DIR/model.onnx, .qdq.onnx, .qonnx.onnx, .qap)."
    ),
    data_dir: str | None = typer.Option(None, "--data-dir"),
    samples: int = typer.Option(1024, "--samples", help="Test samples the verification runs on."),
    shrink: bool = typer.Option(True, "--shrink/--no-shrink", help="Remove pruned channels first."),
    int4: bool = typer.Option(False, "--int4", help="qdq: weights of at most 4 bits as INT4 (opset 21)."),
    hls4ml: bool = typer.Option(False, "--hls4ml", help="qonnx: also compare hls4ml's C++ emulation."),
    step: int | None = typer.Option(None, "--step", help="This step of the run instead of the delivered one."),
) -> None:
    """Export the run's model and verify the file against the PyTorch model (fails beyond tolerance)."""
    from qaprune.export.api import export

    r = export(
        run_dir,
        format=format,
        out=out,
        data_dir=data_dir,
        samples=samples,
        shrink=shrink,
        int4=int4,
        hls4ml=hls4ml,
        step=step,
    )
    v = r.verification
    typer.echo(f"wrote {r.path} ({r.size_bytes:,} bytes, {r.how}); verification in {r.path.name}.verify.json")
    typer.echo(f"verified with {v.summary()}")
    if r.removed:
        typer.echo(f"  removed channels: {sum(r.removed.values())} in {len(r.removed)} layers")
    for name, how in r.layers.items():
        typer.echo(f"  {name}: {how}")
    if r.hls4ml is not None:
        h = r.hls4ml
        typer.echo(
            f"  hls4ml: {h['error']}"
            if "error" in h
            else f"  hls4ml {h['hls4ml']} C++ emulation ({h['precision']}): max |diff| {h['max_abs_diff']:.2e}, "
            f"top-1 agreement {h['top1_agreement']:.4f}" + "".join(f"; {w}" for w in h["warnings"])
        )
    integer = {k: n for k, n in v.kernels.items() if k.startswith(("QLinear", "QGemm", "MatMulInteger", "ConvInteger"))}
    if integer:
        typer.echo("  integer kernels in ONNX Runtime: " + ", ".join(f"{k} x{n}" for k, n in integer.items()))


@app.command("bench-latency")
def bench_latency_cmd(
    models: list[Path] = typer.Argument(..., help="Run directories or .onnx files."),
    batch: list[int] = typer.Option([1, 256], "--batch", help="Batch sizes."),
    threads: list[int] = typer.Option([1, 2], "--threads", help="Thread counts."),
    repeats: int = typer.Option(50, "--repeats"),
    warmup: int = typer.Option(10, "--warmup"),
    out: Path = typer.Option(Path("bench_latency.json"), "--out", help="JSON file of all rows."),
    data_dir: str | None = typer.Option(None, "--data-dir"),
) -> None:
    """Latency and throughput of dense, shrunk and exported models (PyTorch eager, ORT fp32, ORT int8)."""
    from qaprune.export.bench_latency import bench_latency, format_table

    result = bench_latency(
        models,
        batch_sizes=tuple(batch),
        threads=tuple(threads),
        repeats=repeats,
        warmup=warmup,
        data_dir=data_dir,
        out=out,
    )
    typer.echo(format_table(result["rows"]))
    typer.echo(f"wrote {out}")


@app.command()
def schema() -> None:
    """Print the JSON Schema of recipes."""
    from qaprune.recipe import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))


def main(argv: list[str] | None = None) -> None:
    """Entry point: qaprune's own errors (bad recipe, missing data, unknown names, corrupt
    checkpoints, diverged training) print as one line and exit with code 2."""
    from qaprune.errors import QapruneError
    from qaprune.registry import UnknownNameError

    try:
        app(args=argv)
    except (QapruneError, UnknownNameError) as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(2)


if __name__ == "__main__":
    main()
