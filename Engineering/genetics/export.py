"""export_gwas: latents of one or more runs -> plink2/regenie phenotype and covariate files, and a report.

Files written into ``--out`` (new, empty, or an earlier export_gwas output, swapped in whole):
``pheno.tsv`` (``FID IID <latents>``), ``covar.tsv`` (``FID IID <covariates, one-hot>``, with --covariates),
``report.json`` and ``report.md``. Tab-separated, missing values as ``NA`` (what plink2 ``--pheno``/``--covar``
and regenie ``--phenoFile``/``--covarFile`` read).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from Engineering.errors import UserError
from Engineering.genetics import phenotypes as ph
from Engineering.io.atomic import check_replaceable, replace_dir, staging_dir
from Engineering.io.latents import read_latents, resolve_latent_file

FORMAT = "imlatent-gwas"
OUT_FILES = ("pheno.tsv", "covar.tsv", "report.json", "report.md")


@dataclass
class GwasSettings:
    latents: list[str]
    out: str
    key: str = ""
    field: str = "first"
    instance: str = "first"
    channel: str = "mean"
    time: str = "mean"
    slice: str = "mean"
    id_map: str = ""
    id_map_cols: list[str] = dataclasses.field(default_factory=lambda: ["patientID", "IID"])  # image ID, IID[, FID]
    covariates: str = ""
    covar_id_col: str = "IID"
    covar_cols: list[str] = dataclasses.field(default_factory=list)  # empty: every column but the ID columns
    categorical: list[str] = dataclasses.field(default_factory=list)
    outlier_z: float = 0.0
    residualise: bool = False
    inverse_normal: bool = True
    merge: str = "concat"
    n_components: int = 0
    seed: int = 0


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_table(path: str, what: str, needed: list[str]) -> pd.DataFrame:
    """A TSV/CSV whose named columns must exist (IDs read as text)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} not found: {p}")
    sep = "," if p.suffix.lower() == ".csv" else "\t"
    try:
        header = pd.read_csv(p, sep=sep, nrows=0)
        df = pd.read_csv(p, sep=sep, dtype={c: str for c in needed if c in header.columns}, na_values=["NA", ""])
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise UserError(f"cannot read {what} {p}: {str(exc).splitlines()[0]}") from None
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise UserError(f"{what} {p} has no column {missing[0]!r} (columns: {', '.join(map(str, df.columns[:12]))})")
    for c in needed:
        if df[c].isna().any():
            raise UserError(f"{what} {p}: column {c} is empty in row {int(np.flatnonzero(df[c].isna())[0]) + 2}")
        df[c] = df[c].astype(str).str.strip()
    return df


def _id_map(s: GwasSettings) -> pd.DataFrame | None:
    if not s.id_map:
        return None
    if len(s.id_map_cols) not in (2, 3):
        raise UserError(f"--id_map_cols {','.join(s.id_map_cols)}: give IMAGE_ID,IID or IMAGE_ID,IID,FID")
    df = _read_table(s.id_map, "ID map", s.id_map_cols)
    names = ["patientID", "IID", "FID"][: len(s.id_map_cols)]
    return df[s.id_map_cols].set_axis(names, axis=1)


def _covariates(s: GwasSettings, ids: pd.Index, drops: ph.Drops) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(raw covariates, design matrix) of the participants ``ids``; participants without a row are dropped."""
    df = _read_table(s.covariates, "covariates", [s.covar_id_col])
    twice = df[s.covar_id_col][df[s.covar_id_col].duplicated()]
    if len(twice):
        raise UserError(f"covariates {s.covariates}: participant {twice.iloc[0]!r} has two rows")
    df = df.set_index(s.covar_id_col)
    cols = s.covar_cols or [c for c in df.columns if c not in ("FID", "IID", "patientID")]
    unknown = [c for c in cols + s.categorical if c not in df.columns]
    if unknown:
        raise UserError(
            f"covariates {s.covariates} has no column {unknown[0]!r} (columns: {', '.join(map(str, df.columns[:12]))})"
        )
    drops.add("no covariates", [i for i in ids if i not in df.index])
    raw = df.loc[[i for i in ids if i in df.index], cols]
    return raw, ph.design_matrix(raw, s.categorical)


def build(s: GwasSettings) -> dict:
    """Every step in order; returns the tables and the report (nothing written)."""
    drops = ph.Drops()
    files = [resolve_latent_file(p) for p in s.latents]
    reduce = {"channel": s.channel, "time": s.time, "slice": s.slice}
    id_map = _id_map(s)
    blocks, n_in = [], []
    for f in files:
        per = ph.one_row_per_participant(read_latents(f), s.field, s.instance, s.key, reduce, drops)
        n_in.append(len(per))
        blocks.append(ph.map_ids(per, id_map, drops))
    # participants of every run (views or models of the same people)
    common = blocks[0].index
    for k, b in enumerate(blocks[1:], 1):
        drops.add(f"not in every run (run {k})", sorted(set(common) ^ set(b.index)))
        common = common.intersection(b.index)
    fid = blocks[0].loc[common, "FID"]
    z_blocks = [b.loc[common].drop(columns="FID") for b in blocks]
    joined = pd.concat([z.add_prefix(f"r{k}_") if len(files) > 1 else z for k, z in enumerate(z_blocks)], axis=1)
    joined = ph.drop_non_finite(joined, drops)
    joined = ph.drop_outliers(joined, s.outlier_z, drops)
    design = raw_cov = None
    if s.covariates:
        raw_cov, design = _covariates(s, joined.index, drops)
        joined = joined.loc[design.index]
    if len(joined) < 3:
        reasons = ", ".join(f"{k}: {v}" for k, v in drops.counts.items()) or "none dropped"
        raise UserError(f"{len(joined)} participants left after QC ({reasons}): nothing to export")
    widths = [z.shape[1] for z in z_blocks]
    parts = np.split(joined.to_numpy(), np.cumsum(widths)[:-1], axis=1)
    merged, prefix = ph.merge_runs(parts, s.merge, s.n_components, s.seed)
    names = list(joined.columns) if s.merge == "concat" else [f"{prefix}{j + 1}" for j in range(merged.shape[1])]
    before = ph.moments(merged, names)
    values = merged
    if s.residualise:
        if design is None:
            raise UserError("--residualise needs --covariates")
        values = ph.residualise(values, design.to_numpy())
    if s.inverse_normal:
        values = ph.inverse_normal(values)
    pheno = pd.DataFrame(values, index=joined.index, columns=names)
    pheno.insert(0, "FID", fid.loc[joined.index].to_numpy())
    covar = None
    if design is not None:
        covar = design.copy()
        covar.insert(0, "FID", fid.loc[design.index].to_numpy())
    report = {
        "format": FORMAT,
        "settings": asdict(s),
        "inputs": [{"file": str(f), "sha256": _digest(f), "participants": n} for f, n in zip(files, n_in)],
        **({"id_map_sha256": _digest(Path(s.id_map))} if s.id_map else {}),
        **({"covariates_sha256": _digest(Path(s.covariates))} if s.covariates else {}),
        "n_in": len(set().union(*[set(b.index) for b in blocks])),
        "n_out": len(pheno),
        "drops": drops.counts,
        "drop_examples": drops.examples,
        "steps": [f"merge: {s.merge}" + (f" to {s.n_components} components" if s.merge != "concat" else "")]
        + (["residualised on the covariates (OLS with intercept)"] if s.residualise else [])
        + (["rank-based inverse normal transform (Blom)"] if s.inverse_normal else []),
        "covariate_columns": list(design.columns) if design is not None else [],
        "before": before,
        "after": ph.moments(values, names),
    }
    return {"pheno": pheno, "covar": covar, "raw_covariates": raw_cov, "report": report}


def _tsv(df: pd.DataFrame, path: Path) -> None:
    table = df.rename_axis("IID").reset_index()
    table[["FID", "IID", *[c for c in df.columns if c != "FID"]]].to_csv(
        path, sep="\t", index=False, na_rep="NA", float_format="%.8g"
    )


def _markdown(r: dict) -> str:
    lines = [
        "# export_gwas report",
        "",
        f"- participants in: {r['n_in']}; out: {r['n_out']}",
        f"- steps: {'; '.join(r['steps'])}",
        "",
        "| dropped because | participants |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in r["drops"].items()] or ["| (none) | 0 |"]
    lines += [
        "",
        "| latent | mean before | SD before | skewness before | mean after | SD after | skewness after |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, b in r["before"].items():
        a = r["after"][n]
        lines.append(
            f"| {n} | {b['mean']:.4g} | {b['sd']:.4g} | {b['skewness']:.3f} | {a['mean']:.4g} | "
            f"{a['sd']:.4g} | {a['skewness']:.3f} |"
        )
    lines += ["", "Inputs:"] + [
        f"- {i['file']} (sha256 {i['sha256'][:16]}…, {i['participants']} participants)" for i in r["inputs"]
    ]
    return "\n".join(lines) + "\n"


def _is_ours(folder: Path) -> bool:
    try:
        return json.loads((folder / "report.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def export(s: GwasSettings) -> dict:
    """Build everything, then write it into ``s.out`` as one atomic swap (a failure leaves the previous output)."""
    out = Path(s.out)
    check_replaceable(out, OUT_FILES, _is_ours, protect=[resolve_latent_file(p).parent for p in s.latents])
    built = build(s)
    stage = staging_dir(out)
    try:
        _tsv(built["pheno"], stage / "pheno.tsv")
        if built["covar"] is not None:
            _tsv(built["covar"], stage / "covar.tsv")
        (stage / "report.json").write_text(json.dumps(built["report"], indent=2))
        (stage / "report.md").write_text(_markdown(built["report"]))
        replace_dir(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return built
