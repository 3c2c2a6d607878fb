"""The ``qaprune`` command line (typer). Errors of qaprune print as one line, exit code 2."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Quantization-aware pruning and model compression for PyTorch.")


@app.command()
def run(recipe: Path = typer.Argument(..., help="Recipe file (YAML or JSON)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default runs/<name>)."),
        data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Folder with datasets."),
        set_: list[str] = typer.Option([], "--set", help="Override a recipe field: key.path=value."),
        resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress output.")) -> None:
    """Run a recipe: train, prune, quantize, measure; write a run directory."""
    from qaprune.runner import run as run_recipe

    log = (lambda *_: None) if quiet else (lambda msg: typer.echo(msg, err=True))
    result = run_recipe(recipe, out=out, data_dir=data_dir, overrides=set_, resume=resume,
                        progress=not quiet, log=log)
    m = result.metrics
    typer.echo(f"{result.run_dir}: accuracy {m['accuracy']:.4f}, BOPs {m['bops']:.4g} "
               f"({m['bops_reduction']:.1f}x fewer than 32-bit dense), sparsity {m['sparsity']:.3f}, "
               f"{m['size_bytes']} bytes")


@app.command()
def demo(out: Path = typer.Option(Path("demo-out"), "--out", help="Output directory."),
         quick: bool = typer.Option(False, "--quick", help="Fewer epochs (a smoke test).")) -> None:
    """The Ps-and-Qs study on bundled digits: fp32, QAT, pruning, QAP; Pareto plot and headline."""
    from qaprune.demo import run_demo

    run_demo(out, quick=quick, log=lambda msg: typer.echo(msg))


@app.command()
def search(recipe: Path = typer.Argument(..., help="Recipe with a search: section (YAML or JSON)."),
           trials: int = typer.Option(..., "--trials", help="Finished trials the study should hold in all "
                                      "(a rerun resumes up to this number)."),
           workers: int = typer.Option(1, "--workers", help="Worker processes on this machine."),
           storage: Optional[str] = typer.Option(None, "--storage", help="Optuna RDB URL (default "
                                                 "sqlite:///OUT/study.db); PostgreSQL for workers on many machines."),
           out: Optional[Path] = typer.Option(None, "--out", help="Search directory (default runs/<name>-search)."),
           data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Folder with datasets."),
           set_: list[str] = typer.Option([], "--set", help="Override a recipe field: key.path=value."),
           export_best: Optional[Path] = typer.Option(None, "--export-best", help="Write the Pareto-optimal "
                                                      "trials' recipes (trial_<n>.yaml) into this folder."),
           study_name: Optional[str] = typer.Option(None, "--study-name", help="Study name (default: recipe name)."),
           heartbeat: int = typer.Option(20, "--heartbeat", help="Seconds between a trial's heartbeats; "
                                         "a trial silent for three times as long is failed and retried."),
           quiet: bool = typer.Option(False, "--quiet", help="No progress output.")) -> None:
    """Search the recipe's space with Optuna (TPE, GP, NSGA-II); write the Pareto report."""
    from qaprune.autosearch.api import search as run_search

    log = None if quiet else (lambda msg: typer.echo(msg, err=True))
    result = run_search(recipe, trials=trials, workers=workers, storage=storage, out=out, data_dir=data_dir,
                        overrides=set_, export_best=export_best, study_name=study_name, heartbeat=heartbeat,
                        log=log)
    for row in result.pareto:
        names = ", ".join(f"{k} {row['metrics'][k]:.6g}" for k in ("accuracy", "bops", "size_bytes", "latency_ms")
                          if k in row["metrics"])
        typer.echo(f"trial {row['number']}: {names}; {row['params']}")
    typer.echo(f"{len(result.pareto)} Pareto-optimal of {len(result.trials)} trials; report {result.report}"
               + (f"; recipes in {export_best}" if export_best is not None else ""))


@app.command()
def measure(target: Path = typer.Argument(..., help="A run directory or its model .safetensors."),
            data_dir: Optional[str] = typer.Option(None, "--data-dir")) -> None:
    """Re-measure a saved model on its recipe's test split; prints the metrics as JSON."""
    from qaprune.runner import measure_saved

    typer.echo(json.dumps(measure_saved(target, data_dir=data_dir), indent=2))


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A run directory with results.json.")) -> None:
    """Write report.html and the plots of a run directory."""
    from qaprune.report import write_report

    typer.echo(str(write_report(run_dir)))


@app.command("shrink")
def shrink_cmd(run_dir: Path = typer.Argument(..., help="A run directory."),
               out: Optional[Path] = typer.Option(None, "--out", help="ONNX file (default RUN_DIR/model.shrunk.onnx)."),
               data_dir: Optional[str] = typer.Option(None, "--data-dir"),
               latency: bool = typer.Option(True, "--latency/--no-latency", help="Time dense vs shrunk.")) -> None:
    """Remove pruned channels physically, check the outputs, export ONNX, time it; writes shrink.json."""
    from qaprune.export.run_shrink import shrink_run

    s = shrink_run(run_dir, data_dir=data_dir, out=out, latency=latency)
    typer.echo(f"removed {sum(s['removed'].values())} channels in {len(s['removed'])} layers; "
               f"MACs {s['macs_before']:,} -> {s['macs_after']:,} (x{s['flops_ratio']:.2f}); "
               f"max |diff| {s['max_abs_diff']:.1e}, top-1 agreement {s['top1_agreement']:.4f}")
    for r in s.get("latency", []):
        typer.echo(f"  {r['backend']:<5} batch {r['batch']:>3} threads {r['threads']}: {r['dense_ms']:.3f} ms -> "
                   f"{r['shrunk_ms']:.3f} ms (x{r['speedup']:.2f})")
    for name, why in s["not_shrunk"].items():
        typer.echo(f"  not shrunk: {name}: {why}")


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
