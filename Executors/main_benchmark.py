"""Compare representations: score several runs' latents on the same samples against labels.

    python Executors/main_benchmark.py --latents runA/Output/emb.parquet B=runB \\
        --labels phenotypes.tsv covariates.tsv --label_cols ef_class ejection_fraction \\
        --batch_col site --group_col patientID --pixels data.h5 --out bench/

Writes DIR/metrics.json (run -> metric -> value, ci_low, ci_high, direction, ...),
DIR/metrics.csv and a self-contained DIR/report.html. Metrics, their directions
and how CIs are computed are documented in Engineering/Eval/. All input checks
run before anything is written; a bad input is one ``error:`` line and exit 2.
"""
from __future__ import annotations

import argparse
import datetime as _dt
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import yaml

from Engineering.config.argtypes import bounded
from Engineering.errors import ArgParser, UserError, run_cli
from Engineering.Eval import baselines, efficiency, interpolation, invariance, latent_usage, nsc, rotation
from Engineering.data.labels import (CATEGORICAL, attach_labels, batch_target, group_codes_of, outlier_target,
                                     read_label_table, resolve_targets)
from Engineering.Eval.pixels import read_pixels
from Engineering.Eval.report import write_report
from Engineering.Eval.result import MetricResult
from Engineering.Eval.samples import AGGREGATIONS, aggregate_rows, align_runs
from Engineering.Eval.suite import METRICS, Settings, run_benchmark
from Engineering.Eval.tables import write_metrics_csv, write_metrics_json
from Engineering.io.latents import read_latents, resolve_latent_file


def build_parser() -> argparse.ArgumentParser:
    p = ArgParser(prog="main_benchmark.py",
                description="Benchmark latent representations (see Engineering/Eval for the metrics).")
    p.add_argument("--latents", nargs="+", required=True, metavar="[NAME=]PATH",
                   help="emb.h5 / emb.tsv / emb.parquet or a run folder; optionally named NAME=PATH")
    p.add_argument("--labels", nargs="+", default=[], metavar="FILE",
                   help="label tables keyed by patient (first column, or FID / f.eid / patientID)")
    p.add_argument("--label_cols", nargs="+", default=None, help="label columns (default: all label columns)")
    p.add_argument("--categorical_cols", nargs="+", default=None, help="force these columns to be classes")
    p.add_argument("--continuous_cols", nargs="+", default=None, help="force these columns to be regressed")
    p.add_argument("--batch_col", default=None, help="batch column (e.g. site): enables batch-effect metrics")
    p.add_argument("--group_col", default=None,
                   help="group column (e.g. patientID): CV folds, neighbours and bootstrap respect groups")
    p.add_argument("--aggregate", choices=AGGREGATIONS, default="none",
                   help="'patient': average latents per patient (runs of different granularity)")
    p.add_argument("--keys", nargs="+", default=None, help="only latents of these input keys")
    p.add_argument("--pixels", default=None, metavar="DATA_H5",
                   help="input data.h5 for the PCA-of-pixels baseline")
    p.add_argument("--pixels_axes", default=None, metavar="CHANNEL_DIM,SLICE_DIM",
                   help="json§DS_channel_dim,DS_slice_dim of the latents' runs (e.g. 0,1 for time as slices); "
                        "default: read from the runs' resolved_config.yaml, else 0,2")
    p.add_argument("--run", nargs="+", default=None, metavar="[NAME=]RUN_DIR",
                   help="model run folders (or checkpoints) of --latents runs, matched by name, for the "
                        "model-dependent metrics: rotation/flip sensitivity and reconstruction error")
    p.add_argument("--run_max_samples", type=bounded(int, ge=1), default=32,
                   help="samples (seeded subset of the common ones) for the model-dependent metrics")
    p.add_argument("--nsc_label", default=None, metavar="COL",
                   help="NSC/NSCB: the label matched between treatment profiles (e.g. mechanism of action); "
                        "needs --compound_col and --batch_col")
    p.add_argument("--compound_col", default=None, help="NSC: the compound of each sample")
    p.add_argument("--dose_col", default=None, help="NSC: a treatment is a compound at a dose")
    p.add_argument("--well_col", default=None, help="NSC: samples of one well are averaged first (default: each "
                                                    "sample is its own well)")
    p.add_argument("--plate_col", default=None,
                   help="NSC: the plate of each sample: part of a well's identity and the unit of --nsc_tvn "
                        "(default: --batch_col); --batch_col is the batch NSCB keeps apart (BBBC021: the week)")
    p.add_argument("--nsc_center", action="store_true", help="NSC: subtract the mean profile (not in the reference)")
    p.add_argument("--nsc_controls", default=None, metavar="COMPOUND",
                   help="NSC: the control compound (e.g. DMSO): never a query or a neighbour, as in the reference")
    p.add_argument("--nsc_tvn", action="store_true",
                   help="NSC: whiten on the control samples, then TVN per plate (--plate_col, default --batch_col), "
                        "as in the reference; needs --nsc_controls")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n_boot", type=bounded(int, ge=0), default=1000, help="bootstrap resamples for the 95%% CIs")
    p.add_argument("--n_perm", type=bounded(int, ge=0), default=200, help="permutations for the retrieval p-value")
    p.add_argument("--n_splits", type=bounded(int, ge=2), default=5, help="cross-validation folds")
    p.add_argument("--n_repeats", type=bounded(int, ge=1), default=3, help="repeats of the linear-probe cross-validation")
    p.add_argument("--co2_country", default=None, metavar="ISO3",
                   help="--run efficiency: CO2 of the measured energy (codecarbon, offline) on this country's grid, "
                        "e.g. GBR")
    p.add_argument("--outlier_col", default=None, metavar="COL",
                   help="label column marking known outliers (1/0): the AUROC of intrinsic-dimension outlier scores")
    p.add_argument("--archetypes", type=bounded(int, ge=0), default=0, metavar="K",
                   help="also fit K archetypes to each run's latents and report the variance they explain (0 = off)")
    p.add_argument("--seed", type=bounded(int, ge=0, le=2**32 - 1), default=0)
    p.add_argument("--blas_threads", type=bounded(int, ge=0), default=1,
                   help="BLAS threads while scoring (0 = library default); 1 is fastest for the many small fits")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return p


def main(argv: Sequence[str]) -> dict:
    args = build_parser().parse_args(list(argv))
    out = Path(args.out)
    for path in (out, *(out / name for name in ("metrics.json", "metrics.csv", "report.html"))):
        if path.exists() and path.is_dir() != (path == out):  # found now, not after the whole benchmark has run
            raise UserError(f"--out {args.out}: {path} is {'a folder' if path.is_dir() else 'a file'} where the "
                            f"benchmark writes {'its report file' if path != out else 'its folder'}")
    nsc_only = {"--compound_col": args.compound_col, "--dose_col": args.dose_col, "--well_col": args.well_col,
                "--plate_col": args.plate_col, "--nsc_center": args.nsc_center, "--nsc_controls": args.nsc_controls,
                "--nsc_tvn": args.nsc_tvn}
    if not args.nsc_label and any(nsc_only.values()):
        raise UserError(f"{', '.join(k for k, v in nsc_only.items() if v)} only act on NSC: add --nsc_label COL")
    if args.archetypes == 1 or args.archetypes < 0:
        raise UserError(f"--archetypes K needs K >= 2 (or 0: off), got {args.archetypes}")
    settings = Settings(n_boot=args.n_boot, seed=args.seed, n_splits=args.n_splits, n_repeats=args.n_repeats,
                        n_perm=args.n_perm, blas_threads=args.blas_threads or None, debug=args.debug,
                        n_archetypes=args.archetypes)

    # 1. Inputs, all checked before anything is written.
    paths = _named_paths(args.latents)
    runs = {name: read_latents(path) for name, path in paths.items()}
    samples = align_runs(runs, args.aggregate, args.keys)
    notes = list(samples.notes)
    tables = {_label_name(p, args.labels): read_label_table(p) for p in args.labels}
    table, label_notes = attach_labels(samples.ids, tables) if tables else (samples.ids.copy(), [])
    notes += label_notes
    reserved = [c for c in (args.batch_col, args.group_col, args.nsc_label, args.compound_col, args.dose_col,
                            args.well_col, args.plate_col, args.outlier_col) if c]
    targets, target_notes = resolve_targets(table, args.label_cols, args.categorical_cols, args.continuous_cols,
                                            reserved, min_class_size=args.n_splits, min_samples=2 * args.n_splits)
    notes += target_notes
    batch = batch_target(table, args.batch_col, args.n_splits) if args.batch_col else None
    outlier = outlier_target(table, args.outlier_col) if args.outlier_col else None
    groups = group_codes_of(table, args.group_col) if args.group_col else None
    if groups is None and table["patientID"].duplicated().any():
        notes.append("several samples per patient and no --group_col: CV folds and neighbours may pair samples "
                     "of one patient; consider --group_col patientID")
    pixels = _pixels(args.pixels, samples, _pixel_axes(args.pixels_axes, paths)) if args.pixels else None
    if pixels is None:
        notes.append("PCA-of-pixels baseline skipped: give --pixels <data.h5> to include it")
    models = _load_models(args.run, paths, samples, args) if args.run else {}
    nsc_meta = _nsc_meta(table, args) if args.nsc_label else None

    # 2. Scores.
    results = run_benchmark(samples.latents, targets, batch, groups, settings, pixels, log=print, outlier=outlier)
    if nsc_meta is not None:
        for name, Z in samples.latents.items():
            results[name].update(nsc.nsc_scores(Z, nsc_meta, args.n_boot, args.seed, "well" if args.well_col
                                                else None, args.nsc_center, args.nsc_controls, args.nsc_tvn))
        notes.append(_nsc_note(args))
    if args.run:
        _model_dependent(results, models, args, notes, samples.latents)

    # 3. Outputs (each written atomically).
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_metrics_json(out / "metrics.json", results)
    write_metrics_csv(out / "metrics.csv", results)
    summary = _summary(paths, runs, samples, targets, args)
    write_report(out / "report.html", results, {**METRICS, **MODEL_METRICS, **nsc.METRICS}, summary, notes,
                 baselines.NAMES)
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {out / 'metrics.json'}, {out / 'metrics.csv'}, {out / 'report.html'}")
    return results


def _nsc_meta(table, args):
    """compound / treatment / batch / label (/ well) per sample, from the label tables."""
    need = {"--nsc_label": args.nsc_label, "--compound_col": args.compound_col, "--batch_col": args.batch_col}
    if not all(need.values()):
        raise UserError("--nsc_label needs " + " and ".join(k for k, v in need.items() if not v))
    if args.nsc_tvn and not args.nsc_controls:
        raise UserError("--nsc_tvn needs --nsc_controls COMPOUND (the control wells it is fitted on)")
    cols = [c for c in (args.nsc_label, args.compound_col, args.batch_col, args.dose_col, args.well_col,
                        args.plate_col) if c]
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise UserError(f"NSC column(s) {', '.join(missing)} not in the label tables")
    if table[cols].isna().any().any():
        raise UserError(f"NSC columns {', '.join(cols)} have missing values for some samples")
    meta = pd.DataFrame({"compound": table[args.compound_col].astype(str), "batch": table[args.batch_col].astype(str),
                         "label": table[args.nsc_label].astype(str)})
    meta["treatment"] = meta["compound"] + ("@" + table[args.dose_col].astype(str) if args.dose_col else "")
    if args.well_col:
        meta["well"] = table[args.well_col].astype(str)
    if args.plate_col:
        meta["plate"] = table[args.plate_col].astype(str)
    if args.nsc_controls and not (meta["compound"] == str(args.nsc_controls)).any():
        raise UserError(f"--nsc_controls {args.nsc_controls}: no sample has that compound in {args.compound_col}")
    return meta.reset_index(drop=True)


def _nsc_note(args) -> str:
    """What the NSC numbers are: the reference's profiles, which controls were dropped, whether TVN ran."""
    text = (f"NSC/NSCB as in Lin & Lu's BBBC021 notebook: one profile per treatment over all batches (the batch "
            f"column {args.batch_col} only acts on NSCB)")
    if not args.nsc_controls:
        return text + "; no --nsc_controls: every compound is a query (the reference drops its DMSO controls)"
    text += f"; control {args.nsc_controls} dropped from the profiles"
    if args.nsc_tvn:
        return text + f"; whitened on the controls and TVN per {args.plate_col or args.batch_col}"
    return text + "; no TVN (add --nsc_tvn)"


def _named_paths(items: list[str]) -> dict[str, Path]:
    """Run name -> path from ``PATH`` or ``NAME=PATH`` (default name: the run folder's name)."""
    named: dict[str, Path] = {}
    for item in items:
        name, sep, rest = item.partition("=")
        if sep and name and "/" not in name and not Path(item).exists():
            if name in named:
                raise UserError(f"run name '{name}' given twice")
            named[name] = Path(rest)
            continue
        base = _default_name(Path(item))
        name, i = base, 2
        while name in named:
            name, i = f"{base}_{i}", i + 1
        named[name] = Path(item)
    return named


def _default_name(path: Path) -> str:
    path = path.resolve()
    folder = path.parent if path.suffix else path
    if folder.name.startswith("Output"):
        folder = folder.parent
    return folder.name or path.stem


def _label_name(path: str, all_paths: list[str]) -> str:
    """Short name of a label file for messages (the full path when base names clash)."""
    base = Path(path).name
    return base if sum(Path(p).name == base for p in all_paths) == 1 else str(path)


def _pixel_axes(option: str | None, paths: dict[str, Path]) -> tuple[int, int]:
    """The axis swaps the latents were computed with: --pixels_axes, else the runs' resolved configs (which
    must agree), else the contract's order."""
    if option:
        try:
            channel, slice_ = (int(v) for v in option.split(","))
        except ValueError:
            raise UserError(f"--pixels_axes must be CHANNEL_DIM,SLICE_DIM such as 0,1; got {option!r}") from None
        return channel, slice_
    found = {}
    for name, path in paths.items():
        latent = resolve_latent_file(path)
        for folder in (latent.parent, latent.parent.parent):
            if (folder / "resolved_config.yaml").is_file():
                js = (yaml.safe_load((folder / "resolved_config.yaml").read_text()) or {}).get("json") or {}
                found[name] = (int(js.get("DS_channel_dim", 0)), int(js.get("DS_slice_dim", 2)))
                break
    if len(set(found.values())) > 1:
        raise UserError(f"the runs were computed with different axis swaps {found}; benchmark them separately "
                        "or pass --pixels_axes")
    return next(iter(found.values()), (0, 2))


def _pixels(path: str, samples, axes: tuple[int, int]) -> np.ndarray:
    """Pixel vectors per benchmark sample, averaged like the latents when aggregated."""
    raw = read_pixels(path, samples.source_rows, *axes)
    index = samples.source_rows[["sample_index"]]
    keys, mean = aggregate_rows(index, raw, ["sample_index"])
    if len(keys) != len(samples.ids):
        raise UserError(f"pixels cover {len(keys)} of {len(samples.ids)} samples")
    return mean


def _load_models(items: list[str], paths: dict[str, Path], samples, args) -> dict:
    """--run latents-name -> (the run's rebuilt model, its input images); a run folder is matched to --latents
    by its name.

    Images are the benchmark's common samples as each model's own data pipeline prepares them (normalised,
    cropped) from --pixels if given, else from the data file of the run's config; a seeded subset of
    --run_max_samples.
    """
    from Engineering.Engines.saved_runs import load_run, sample_images  # torch and Lightning only with --run

    models = {}
    for item in items:
        name, sep, rest = item.partition("=")
        if sep and name and "/" not in name and not Path(item).exists():
            path = Path(rest)
        else:
            path = Path(item)
            in_checkpoints = path.is_file() and path.parent.name == "Checkpoints"
            name = path.parent.parent.name if in_checkpoints else _default_name(path)
        if name not in paths:
            raise UserError(f"--run {item}: no --latents run is named '{name}' (runs: {', '.join(paths)}); "
                            "use --run NAME=RUN_DIR")
        model = load_run(path)
        datafile = args.pixels if model.engine.input_kind == "image" else None  # clouds: the run's own file
        models[name] = (model, sample_images(model, samples.source_rows, datafile, args.run_max_samples, args.seed))
    return models


MODEL_METRICS = {**invariance.METRICS, **rotation.METRICS, **interpolation.METRICS, **latent_usage.METRICS,
                 **efficiency.METRICS}


class _NotApplicable(Exception):
    """A model-dependent metric that does not apply to this model: recorded as a skip with the reason."""


def _model_dependent(results: dict, models: dict, args, notes: list[str], latents: dict | None = None) -> None:
    """The --run metrics of each model: rotation/flip sensitivity, the reference's rotation invariance error and
    reconstruction errors (MSE; the reference's Chamfer for point clouds) (Eval/invariance.py), rotation
    invariance at arbitrary angles and pose equivariance (random rotations, SO(3) in 3D; Eval/rotation.py), the
    reference's evolution energy and embedding distance and our decoded path ratio and interpolation distance
    (Eval/interpolation.py), latent usage (Eval/latent_usage.py) and efficiency (parameters, time and peak memory
    of encoding on this CPU; Eval/efficiency.py). Errors are in the model's normalised input units (point clouds:
    their coordinates)."""
    for name, per in results.items():
        if name in baselines.NAMES:
            continue
        if name not in models:
            for family, (direction, _) in MODEL_METRICS.items():
                per[family] = MetricResult.skip(direction, "no --run model folder for this run")
            continue
        model, images = models[name]
        compute = _model_metrics(model, images, args, None if latents is None else latents.get(name))
        for family, (direction, _) in MODEL_METRICS.items():
            if not len(images):
                per[family] = MetricResult.skip(direction, "none of the benchmark samples is in the model's data file")
                continue
            print(f"{family} of {name}: {len(images)} samples ({model.checkpoint})")
            try:
                per[family] = compute[family]()
            except _NotApplicable as why:
                per[family] = MetricResult.skip(direction, str(why))
            except Exception as exc:  # noqa: BLE001 - reported as a skip, like every metric (see suite.py)
                if args.debug:
                    raise
                per[family] = MetricResult.skip(direction, f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
            if family == "latent_usage_swap" and (per[family].note or "").startswith("the decoder ignores"):
                notes.append(f"{name}: {per[family].note}")
        notes.append(f"model-dependent metrics of {name}: {model.checkpoint}, {len(images)} samples, "
                     f"{'EMA' if model.use_ema else 'raw'} weights; errors in the model's normalised input units")


def _model_metrics(model, images, args, all_latents=None) -> dict:
    """family -> a function computing it for one model (raising _NotApplicable where it does not apply);
    ``all_latents``: the run's latents of every benchmark sample (the embedding distance's pool)."""
    import torch

    from Engineering.Engines.saved_runs import batched
    from Engineering.Science.chamfer import chamfer_distance

    bs = int(model.cfg.training.batch_size)
    kind = model.engine.input_kind
    points = kind == "points"
    dim = 3 if points or model.cfg.model.is3D else 2
    spatial = images.shape[-dim:] if len(images) and not points else ()
    encode = lambda x: batched(model.encode, x, bs)  # noqa: E731
    cache: dict = {}

    def latents():
        if "Z" not in cache:
            cache["Z"] = encode(images)
        return cache["Z"]

    def needs(ok: bool, reason: str) -> None:
        if not ok:
            raise _NotApplicable(reason)

    def rotatable():
        needs(points or len(set(spatial)) == 1,
              f"rotations need a square / cubic input, got {'x'.join(map(str, spatial))}")
        needs(len(images) > 1, "needs 2 or more samples (the between-sample spread)")

    def sensitivity():
        needs(not points, "90° image rotations and flips; for point clouds see rotation_invariance(_error)")
        needs(images.shape[-1] == images.shape[-2],
              f"90° rotations need square in-plane inputs, got {images.shape[-2]}x{images.shape[-1]}")
        return invariance.rotation_sensitivity(encode, images, args.n_boot, args.seed)

    def invariance_():
        rotatable()
        return rotation.rotation_invariance(encode, images, dim, args.n_boot, args.seed, kind=kind)

    def pose():
        rotatable()
        with torch.no_grad():
            needs(model.pose(torch.from_numpy(images[:1]).float()) is not None, "the model has no pose output")
        return rotation.pose_equivariance_error(lambda x: batched(model.pose, x, bs), images, dim, args.n_boot,
                                                args.seed, kind=kind)

    def recon_mse():
        needs(not points, "point clouds: see reconstruction_chamfer (the reference's Chamfer loss)")
        return invariance.reconstruction_mse(lambda x: batched(model.reconstruct, x, bs), images, args.n_boot,
                                             args.seed)

    def own_reconstruction(x):  # a cloud's own code, decoded in its own frame: the model's reconstruction
        if "recon" not in cache:
            cache["recon"] = render(images, [latents()])[0]
        return cache["recon"]

    def recon_chamfer():
        needs(points, "images: see reconstruction_mse")
        return invariance.reconstruction_chamfer(own_reconstruction, images, args.n_boot, args.seed)

    def recon_sinkhorn():
        needs(points, "images: see reconstruction_mse")
        return invariance.reconstruction_sinkhorn(own_reconstruction, images, args.n_boot, args.seed)

    def reference_rotation():
        needs(points or images.shape[-1] == images.shape[-2],
              f"90° rotations need square in-plane inputs, got {images.shape[-2]}x{images.shape[-1]}")
        return invariance.rotation_invariance_error(encode, images, bs, args.n_boot, args.seed, kind=kind)

    def decoded(z):
        with torch.no_grad():
            return model.decode(torch.from_numpy(np.asarray(z, np.float32)))

    def has_decoder():
        needs(len(images) > 1, "needs 2 or more samples")
        needs(decoded(latents()[:1]) is not None,
              "the model has no decoder of a latent alone (DiffAE also needs x_T; encoders have none)")

    def evolve():  # the reference's: decoded interpolants against the real ends (in each end's own pose)
        has_decoder()
        target = images[:, :3].transpose(0, 2, 1) if points else images
        return interpolation.evolution_energy(lambda x, z: render(x, [z])[0], images, latents(), target,
                                              invariance.chamfer_sum if points else latent_usage.mse, args.n_boot,
                                              args.seed)

    def embedding_distance():
        needs(len(images) > 1, "needs 2 or more samples")
        same = all_latents is not None and np.shape(all_latents)[1:] == latents().shape[1:]
        pool = np.concatenate([latents(), all_latents]) if same else latents()
        return interpolation.embedding_distance(latents(), args.n_boot, args.seed, pool=pool)

    def interpolate(family):  # decoded latent segments; "real" = the decoded latents of the real samples
        if "paths" not in cache:
            has_decoder()
            Z = latents()
            cache["paths"] = interpolation.interpolation_metrics(lambda z: batched(model.decode, z, bs), Z,
                                                                 batched(model.decode, Z, bs), args.n_boot, args.seed)
        return cache["paths"][family]

    def render(x, codes):
        outs = [[] for _ in codes]
        for i in range(0, len(x), bs):
            with torch.no_grad():
                got = model.render(torch.from_numpy(np.ascontiguousarray(x[i:i + bs], np.float32)),
                                   [torch.from_numpy(np.asarray(c[i:i + bs], np.float32)) for c in codes])
            needs(got is not None, "the model has no decoder conditioned on a latent")
            for out, r in zip(outs, got):
                out.append(r.float().numpy())
        return [np.concatenate(o) for o in outs]

    def chamfer(a, b):
        return chamfer_distance(torch.from_numpy(np.asarray(a, np.float32)),
                                torch.from_numpy(np.asarray(b, np.float32))).double().numpy()

    def usage(family):
        if "usage" not in cache:
            needs(len(images) > 1, "needs 2 or more samples")
            target = images[:, :3].transpose(0, 2, 1) if points else images
            cache["usage"] = latent_usage.latent_usage(render, images, latents(), target, args.n_boot, args.seed,
                                                       chamfer if points else latent_usage.mse)
        return cache["usage"][family]

    def measure(family):  # the efficiency family is measured once, on one batch of the model's inputs
        if "efficiency" not in cache:
            cache["efficiency"] = efficiency.efficiency(model.engine, model.encode,
                                                        efficiency.as_tensor(images[:bs], "cpu"),
                                                        co2_country=args.co2_country)
        return cache["efficiency"][family]

    compute = {"rotation_sensitivity": sensitivity, "rotation_invariance": invariance_,
               "rotation_invariance_error": reference_rotation, "pose_equivariance_error": pose,
               "reconstruction_mse": recon_mse, "reconstruction_chamfer": recon_chamfer,
               "reconstruction_sinkhorn": recon_sinkhorn,
               "evolution_energy": evolve, "embedding_distance": embedding_distance}
    compute.update({f: (lambda f=f: interpolate(f)) for f in ("decoded_path_ratio", "interpolation_distance")})
    compute.update({f: (lambda f=f: usage(f)) for f in latent_usage.METRICS})
    compute.update({f: (lambda f=f: measure(f)) for f in efficiency.METRICS})
    return compute


def _summary(paths, runs, samples, targets, args) -> dict[str, str]:
    runs_text = "; ".join(f"{n}: {resolve_latent_file(p)} ({len(runs[n])} rows, {samples.latents[n].shape[1]} dims)"
                          for n, p in paths.items())
    target_text = ", ".join(f"{t.name} ({'classes' if t.kind == CATEGORICAL else 'continuous'}, n={int(t.mask.sum())})"
                            for t in targets) or "none"
    return {
        "generated": _dt.datetime.now().isoformat(timespec="seconds"),
        "runs": runs_text,
        "baselines": ", ".join(baselines.NAMES[:1] + ((baselines.PCA_PIXELS,) if args.pixels else ())),
        "samples": f"{len(samples.ids)} common samples (aggregate: {args.aggregate})",
        "labels": ", ".join(args.labels) or "none",
        "targets": target_text,
        "batch column": args.batch_col or "none",
        "group column": args.group_col or "none",
        "settings": f"{args.n_splits}-fold CV x {args.n_repeats} repeats, {args.n_boot} bootstrap resamples "
                    f"(percentile 95% CI{', resampling whole groups' if args.group_col else ''}), "
                    f"{args.n_perm} permutations, seed {args.seed}",
    }


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
