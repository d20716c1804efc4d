"""Merging the outputs of a sharded inference (``--run_mode 2 --shard i/n``) into one Output folder.

Shard i of n holds every n-th patient of the test split (sorted IDs) starting at the i-th, so shards are
disjoint by patient: their emb.h5 and recon.h5 groups are copied as they are, the tables concatenated in sample
order, ``n_samples`` summed. Every shard must be there and complete; the merged folder is swapped in atomically.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import h5py
import pandas as pd

from Engineering.data.layout import SAMPLE_COLUMNS
from Engineering.errors import UserError
from Engineering.io.atomic import remove_stale, replace_dir, staging_dir
from Engineering.io.runlock import RunLock

SHARD = re.compile(r"^(\d+)/(\d+)$")


def parse_shard(text: str) -> tuple[int, int] | None:
    """``"i/n"`` -> (i, n) with 0 <= i < n; "" -> None."""
    if not text:
        return None
    m = SHARD.match(str(text).strip())
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise UserError(f"--shard {text!r}: give i/n with 0 <= i < n (e.g. 0/4 for the first of four shards)")
    return int(m.group(1)), int(m.group(2))


def shard_folder(out_dir: Path, shard: tuple[int, int]) -> Path:
    return out_dir.with_name(f"{out_dir.name}_shard{shard[0]}of{shard[1]}")


def merge_shards(out_dir: Path) -> dict:
    """Merge ``<out_dir>_shard{i}of{n}`` (every i) into ``out_dir``; returns a summary."""
    found: dict[int, dict[int, Path]] = {}  # shard count -> shard index -> folder
    for p in out_dir.parent.glob(f"{out_dir.name}_shard*of*"):
        m = re.fullmatch(re.escape(out_dir.name) + r"_shard(\d+)of(\d+)", p.name)
        if m and p.is_dir():
            found.setdefault(int(m.group(2)), {})[int(m.group(1))] = p
    if not found:
        raise UserError(f"no shard folders {out_dir.name}_shard<i>of<n> in {out_dir.parent}")
    if len(found) > 1:
        raise UserError(f"shard folders of several splits in {out_dir.parent} (of {sorted(found)}): keep one")
    n, shards = next(iter(found.items()))
    missing = [i for i in range(n) if i not in shards or not (shards[i] / "emb.h5").is_file()]
    if missing:
        raise UserError(
            f"shards {missing} of {n} are missing or unfinished in {out_dir.parent} "
            f"(run --run_mode 2 --shard i/{n} for them)"
        )
    folders = [shards[i] for i in range(n)]
    with RunLock(out_dir.parent):  # no shard may still be writing, and one merge at a time
        for stale in remove_stale(out_dir.parent, out_dir.name):  # a killed earlier merge's staging folder
            print(f"removed {stale.name}, left by an interrupted earlier merge")
        tables = _same_model(folders)
        return _merge(out_dir, folders, tables, n)


SAME_ATTRS = ("model", "checkpoint", "load_hf_revision", "ema", "norm_type", "input_shape", "is3D")


def _same_model(folders: list[Path]) -> list[pd.DataFrame]:
    """Every shard's table, after checking that the shards are one test: readable files, the same weights and
    input contract (emb.h5 attributes) and the same latent columns. Shards of different runs are refused."""
    first, tables = None, []
    for folder in folders:
        try:
            with h5py.File(folder / "emb.h5", "r") as h5:
                attrs = {k: str(h5.attrs.get(k, "")) for k in SAME_ATTRS}
            table = pd.read_parquet(folder / "emb.parquet")
        except (OSError, ValueError) as exc:  # h5py/pyarrow: damaged, truncated or missing files
            raise UserError(
                f"shard {folder.name} is damaged or incomplete ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); run that shard again"
            ) from None
        z_cols = [c for c in table.columns if c not in SAMPLE_COLUMNS]
        if first is None:
            first = (folder, attrs, z_cols)
        else:
            changed = [k for k in SAME_ATTRS if attrs[k] != first[1][k]]
            if changed:
                k = changed[0]
                raise UserError(
                    f"shards {first[0].name} and {folder.name} are not one test: {k} "
                    f"{first[1][k]!r} vs {attrs[k]!r}; run every shard with the same weights"
                )
            if z_cols != first[2]:
                raise UserError(
                    f"shards {first[0].name} and {folder.name} hold latents of different sizes "
                    f"({len(first[2])} vs {len(z_cols)} columns): not one test"
                )
        tables.append(table)
    return tables


def _merge(out_dir: Path, folders: list[Path], tables: list[pd.DataFrame], n: int) -> dict:
    stage = staging_dir(out_dir)
    try:
        n_samples = _merge_h5([f / "emb.h5" for f in folders], stage / "emb.h5", n)
        recon = [f / "recon.h5" for f in folders if (f / "recon.h5").is_file()]
        if recon:
            _merge_h5(recon, stage / "recon.h5", n)
        table = pd.concat(tables, ignore_index=True)
        table = table.sort_values(list(SAMPLE_COLUMNS), na_position="first", kind="stable")
        table.to_parquet(stage / "emb.parquet", index=False)
        table.to_csv(stage / "emb.tsv", sep="\t", index=False)
        metrics = [
            pd.read_csv(f / "metrics.csv", dtype={c: str for c in SAMPLE_COLUMNS[:4]})
            for f in folders
            if (f / "metrics.csv").is_file()
        ]
        if metrics:
            pd.concat(metrics, ignore_index=True).to_csv(stage / "metrics.csv", index=False)
        if len(table) != n_samples:
            raise UserError(f"the shards' tables hold {len(table)} samples but their emb.h5 {n_samples}")
        replace_dir(stage, out_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return {"out_dir": str(out_dir), "shards": n, "n_samples": n_samples}


def _merge_h5(paths: list[Path], out: Path, n: int) -> int:
    total = 0
    with h5py.File(out, "w") as dst:
        for path in paths:
            try:
                src_file = h5py.File(path, "r")
            except OSError as exc:
                raise UserError(
                    f"shard file {path} is damaged ({str(exc).splitlines()[0]}); run that shard again"
                ) from None
            with src_file as src:
                for k, v in src.attrs.items():
                    dst.attrs[k] = v
                total += int(src.attrs.get("n_samples", 0))
                for name in src:
                    if name in dst:
                        raise UserError(f"{path}: patient {name} is in two shards")
                    src.copy(src[name], dst, name=name)
        dst.attrs["n_samples"] = total
        dst.attrs["shards"] = n
    return total
