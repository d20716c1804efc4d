"""Latents of image files with a trained or published model: no dataNpath JSON, no fold file.

python Executors/embed.py --model ID_OR_PATH --input FILES_OR_DIRS_OR_GLOBS... --out latents.tsv|.parquet|emb.h5

--model: a training run folder, a checkpoint, an export folder (Executors/export_hf.py) or a Hugging Face id
(offline: the local cache). --input: HDF5 files in the data contract (their own patient/field/instance/key
IDs), NIfTI files (.nii, .nii.gz; IDs from the file name, see --ids), folders (searched recursively for both;
a folder with neither is one DICOM series, stacked as preprocess/dicom_to_h5.py does, patient ID from --ids on
the folder name, else the DICOM PatientID, else the folder name) and quoted globs; @demo/data.h5 is the bundled demo
cohort. The preprocessing is the model's own (Engineering/api.py). The table has the columns of
emb.tsv (patientID, fieldID, instanceID, key, c, t, s, Z0..); emb.h5 has the layout of a run's emb.h5.

Resume: finished input files are kept in OUT.partial/ (same model and inputs); a killed run, started again
with the same arguments, embeds only the rest. --shard i/n embeds every n-th input file from the i-th.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import shlex
import shutil
import sys
from pathlib import Path

import pandas as pd

from Engineering import api
from Engineering.data.layout import SAMPLE_COLUMNS, SampleInfo
from Engineering.errors import ArgParser, UserError, run_cli
from Engineering.io.atomic import atomic_path, check_replaceable, write_text
from Engineering.io.outputs import write_emb_h5
from Engineering.io.shards import parse_shard

OUT_SUFFIXES = (".tsv", ".parquet", ".h5")
INPUT_SUFFIXES = api.H5_SUFFIXES + api.NIFTI_SUFFIXES


def _is_input(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(INPUT_SUFFIXES)


def expand(inputs: list[str]) -> list[Path]:
    """Files as given, folders searched recursively, globs expanded; sorted, each once. A folder without HDF5 or
    NIfTI files is returned itself: a DICOM series."""
    found: list[Path] = []
    for raw in inputs:
        path = api.input_path(raw)
        if path.is_dir():
            hits = sorted(p for p in path.rglob("*") if _is_input(p)) or [path]
        elif path.is_file():
            if not _is_input(path):
                raise UserError(f"--input {raw}: not an HDF5 or NIfTI file ({', '.join(INPUT_SUFFIXES)})")
            hits = [path]
        else:
            hits = sorted(p for p in map(Path, glob.glob(str(path), recursive=True)) if _is_input(p))
            if not hits:
                raise UserError(f"--input {raw} matches no file (HDF5 or NIfTI: {', '.join(INPUT_SUFFIXES)})")
        found.extend(hits)
    return list(dict.fromkeys(p.resolve() for p in found))


def as_infos(table: pd.DataFrame) -> list[SampleInfo]:
    """emb.tsv rows -> the SampleInfos of emb.h5: an axis's size is its largest index + 1 per dataset."""
    sizes = table.groupby(list(SAMPLE_COLUMNS[:4]))[["c", "t", "s"]].max() + 1
    out = []
    for row in table[list(SAMPLE_COLUMNS)].itertuples(index=False, name=None):
        n_c, n_t, n_s = sizes.loc[row[:4]].tolist()
        out.append(SampleInfo(*row[:4], int(row[4]), int(row[5]), int(row[6]), int(n_c), int(n_t), int(n_s)))
    return out


def write(out: Path, table: pd.DataFrame, attrs: dict) -> None:
    if out.suffix == ".h5":
        z = table[[c for c in table.columns if c.startswith("Z")]].to_numpy("float32")
        write_emb_h5(out, as_infos(table), z, attrs)
        return
    with atomic_path(out) as tmp:
        if out.suffix == ".tsv":
            table.to_csv(tmp, sep="\t", index=False)
        else:
            table.to_parquet(tmp, index=False)


def main(argv) -> dict:
    p = ArgParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="run folder, checkpoint, export folder or Hugging Face ORG/NAME")
    p.add_argument("--input", required=True, nargs="+", help="HDF5/NIfTI files, folders or quoted globs")
    p.add_argument("--out", required=True, help="latents.tsv, latents.parquet or emb.h5 (written atomically)")
    p.add_argument(
        "--ids",
        default=None,
        metavar="REGEX",
        help="IDs of NIfTI files from their names: a regular expression with the named groups "
        '(?P<patient>..) and optionally (?P<field>..), (?P<instance>..) (else "0"); default: '
        "<patient>_<field>_<instance>[_...], else the whole name is the patient ID",
    )
    p.add_argument(
        "--flags",
        default="",
        metavar='"--FLAG VALUE ..."',
        help="training-command flags for exported/published weights, applied as --load_hf applies them "
        '(e.g. "--input_shape 50,128,128" where the files do not say it); refused for run folders',
    )
    p.add_argument(
        "--in_channels",
        type=int,
        default=None,
        help="input channels of published-layout weights (they do not record it; 1 for the cardiac models)",
    )
    p.add_argument(
        "--precision",
        choices=("32", "bf16"),
        default=None,
        help="a DiffAE's --embed_precision (bf16: its bfloat16 encoder copy); default: the model's own",
    )
    p.add_argument("--batch_size", type=int, default=8, help="samples per forward pass")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--shard", default="", metavar="i/n", help="embed every n-th input file from the i-th")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=sys.stderr.isatty(),
        help="a progress bar (default: on a terminal)",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    a = p.parse_args(argv)
    out = Path(a.out).expanduser()
    if out.suffix not in OUT_SUFFIXES:
        raise UserError(f"--out {a.out}: give a .tsv, .parquet or .h5 file")
    files = expand(a.input)
    shard = parse_shard(a.shard)
    if shard is not None:
        files = files[shard[0] :: shard[1]]
        if not files:
            raise UserError(f"--shard {a.shard}: no input file falls in this shard ({len(expand(a.input))} files)")
    if a.ids is not None and not any(f.is_dir() or f.name.lower().endswith(api.NIFTI_SUFFIXES) for f in files):
        raise UserError(
            "--ids names NIfTI files and DICOM folders; HDF5 inputs carry their own IDs (none of "
            "those among the inputs)"
        )
    try:
        options = shlex.split(a.flags)
    except ValueError as exc:
        raise UserError(f"--flags {a.flags!r}: {exc}") from None
    model = api.load(a.model, options=options, in_channels=a.in_channels, device=a.device, precision=a.precision)

    # finished files survive a kill in OUT.partial/, valid only for the same model, inputs and IDs
    part = out.with_name(out.name + ".partial")
    fingerprint = {
        "model": str(Path(a.model).expanduser().resolve()) if Path(a.model).expanduser().exists() else a.model,
        "files": [str(f) for f in files],
        "ids": a.ids,
        "shard": a.shard,
        "flags": options,
        "in_channels": a.in_channels,
        "precision": a.precision,
    }
    if part.exists() and not _same(part, fingerprint):
        # another run's finished files: dropped, but only if the folder is one this tool wrote
        check_replaceable(part, PARTIAL_FILES, lambda d: (d / "fingerprint.json").is_file(), flag="--out's")
        shutil.rmtree(part)
    part.mkdir(parents=True, exist_ok=True)
    write_text(part / "fingerprint.json", json.dumps(fingerprint, sort_keys=True))
    tables, done = [], 0
    for i, f in enumerate(files):
        chunk = part / f"{i:06d}_{hashlib.sha1(str(f).encode()).hexdigest()[:10]}.parquet"
        if chunk.is_file():
            tables.append(pd.read_parquet(chunk))
            done += 1
            continue
        table = model.embed_many([f], batch_size=a.batch_size, progress=a.progress, ids=a.ids)
        with atomic_path(chunk) as tmp:
            table.to_parquet(tmp, index=False)
        tables.append(table)
    if done:
        print(f"resumed: {done} of {len(files)} input files were embedded before the interruption")
    table = api.join_tables(tables)
    write(out, table, {"model": model.cfg.model.drive, "source": a.model, "n_samples": len(table)})
    shutil.rmtree(part, ignore_errors=True)
    print(f"{len(table)} latents of {len(files)} file(s) written to {out}")
    return {"out": str(out), "n": len(table)}


# OUT.partial/: the run's fingerprint, a chunk per finished input file, atomic_path's temporary files
PARTIAL_FILES = ("fingerprint.json", "[0-9][0-9][0-9][0-9][0-9][0-9]_*.parquet", ".*.tmp")


def _same(part: Path, fingerprint: dict) -> bool:
    try:
        return json.loads((part / "fingerprint.json").read_text()) == fingerprint
    except (OSError, ValueError):
        return False


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
