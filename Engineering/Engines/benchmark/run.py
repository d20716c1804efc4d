"""The benchmark of main_benchmark.py: inputs checked, scores, outputs (the executor parses the flags)."""

from __future__ import annotations

from pathlib import Path

from Engineering.data.labels import (
    attach_labels,
    batch_target,
    group_codes_of,
    outlier_target,
    read_label_table,
    resolve_targets,
)
from Engineering.Engines.benchmark import inputs
from Engineering.Engines.benchmark.model_metrics import MODEL_METRICS, load_models, score_models
from Engineering.Eval import baselines, nsc
from Engineering.Eval.report import write_report
from Engineering.Eval.samples import align_runs
from Engineering.Eval.suite import METRICS, Settings, run_benchmark
from Engineering.Eval.tables import write_metrics_csv, write_metrics_json
from Engineering.io.latents import read_latents


def benchmark(args) -> dict:
    """Score the --latents runs (main_benchmark.py's parsed flags) and write DIR/metrics.json, metrics.csv and
    report.html; returns run -> metric -> MetricResult. All input checks run before anything is written."""
    inputs.check_out(args.out)
    inputs.check_options(args)
    settings = Settings(
        n_boot=args.n_boot,
        seed=args.seed,
        n_splits=args.n_splits,
        n_repeats=args.n_repeats,
        n_perm=args.n_perm,
        blas_threads=args.blas_threads or None,
        debug=args.debug,
        n_archetypes=args.archetypes,
    )

    # 1. Inputs, all checked before anything is written.
    paths = inputs.named_paths(args.latents)
    runs = {name: read_latents(path) for name, path in paths.items()}
    samples = align_runs(runs, args.aggregate, args.keys)
    notes = list(samples.notes)
    tables = {inputs.label_name(p, args.labels): read_label_table(p) for p in args.labels}
    table, label_notes = attach_labels(samples.ids, tables) if tables else (samples.ids.copy(), [])
    notes += label_notes
    reserved = [
        c
        for c in (
            args.batch_col,
            args.group_col,
            args.nsc_label,
            args.compound_col,
            args.dose_col,
            args.well_col,
            args.plate_col,
            args.outlier_col,
        )
        if c
    ]
    targets, target_notes = resolve_targets(
        table,
        args.label_cols,
        args.categorical_cols,
        args.continuous_cols,
        reserved,
        min_class_size=args.n_splits,
        min_samples=2 * args.n_splits,
    )
    notes += target_notes
    batch = batch_target(table, args.batch_col, args.n_splits) if args.batch_col else None
    outlier = outlier_target(table, args.outlier_col) if args.outlier_col else None
    groups = group_codes_of(table, args.group_col) if args.group_col else None
    if groups is None and table["patientID"].duplicated().any():
        notes.append(
            "several samples per patient and no --group_col: CV folds and neighbours may pair samples "
            "of one patient; consider --group_col patientID"
        )
    pixels = inputs.pixels(args.pixels, samples, inputs.pixel_axes(args.pixels_axes, paths)) if args.pixels else None
    if pixels is None:
        notes.append("PCA-of-pixels baseline skipped: give --pixels <data.h5> to include it")
    models = load_models(args.run, paths, samples, args) if args.run else {}
    nsc_meta = inputs.nsc_meta(table, args) if args.nsc_label else None

    # 2. Scores.
    results = run_benchmark(samples.latents, targets, batch, groups, settings, pixels, log=print, outlier=outlier)
    if nsc_meta is not None:
        for name, Z in samples.latents.items():
            results[name].update(
                nsc.nsc_scores(
                    Z,
                    nsc_meta,
                    args.n_boot,
                    args.seed,
                    "well" if args.well_col else None,
                    args.nsc_center,
                    args.nsc_controls,
                    args.nsc_tvn,
                )
            )
        notes.append(inputs.nsc_note(args))
    if args.run:
        score_models(results, models, args, notes, samples.latents)

    # 3. Outputs (each written atomically).
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_metrics_json(out / "metrics.json", results)
    write_metrics_csv(out / "metrics.csv", results)
    summary = inputs.summary(paths, runs, samples, targets, args)
    write_report(
        out / "report.html", results, {**METRICS, **MODEL_METRICS, **nsc.METRICS}, summary, notes, baselines.NAMES
    )
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {out / 'metrics.json'}, {out / 'metrics.csv'}, {out / 'report.html'}")
    return results
