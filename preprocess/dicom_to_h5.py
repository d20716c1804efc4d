"""Convert DICOM series (files, folders, UK Biobank zips) into the 5D HDF5 data contract.

Each series becomes one dataset ``<patientID>/<fieldID>/<instanceID>/<key>`` of shape
C x T x S x X x Y (see ``Engineering.data.dicom_series`` for the ordering rules), with the
contract's group and dataset attributes. A study that fails is reported and its
datasets removed; the batch goes on and ends with a summary.
"""

from __future__ import annotations

import argparse
import logging
import re
import zipfile
from collections import defaultdict
from pathlib import Path

import h5py
import numpy as np

from Engineering.data.dicom_series import (
    FileInfo,
    Series,
    SeriesError,
    assemble,
    file_info,
    group_series,
    header_json,
    phase_to_radians,
)
from Engineering.data.layout import PLANES
from Engineering.errors import ArgParser, UserError, run_cli
from preprocess import series_spec
from preprocess.batch_report import BatchReport
from preprocess.cli import tool_main, tool_parser
from preprocess.dicom_sources import Source, SourceReader, find_sources
from preprocess.h5_writer import atomic_h5, prune_empty, remove_and_prune, write_image
from preprocess.progress_bar import track
from preprocess.series_spec import FieldSpec, assign_keys, load_spec, matches_description

log = logging.getLogger("preprocess")

ID_RULES = """\
IDs of each study (patient/field/instance groups):
  a zip named <eid>_<field>_<instance>_<array>.zip (UK Biobank) gives all three
  (its whole content is one group);
  otherwise patient = the DICOM PatientID (else the input's file/folder name),
  field = --field, else the StudyDescription, else "0";
  instance = --instance, else 0, 1, ... : the first index whose group is free or
  already holds the same study (StudyInstanceUID), studies taken in date order.
Characters other than letters, digits, '.', '-' and '_' become '-'.
A group that already existed in the --append file is replaced by the new study.

Without --spec every series is stored as "primary" (plus _<plane> when known),
numbered _0, _1, ... when several share a key. Exit code 2 when nothing converted."""


def build_parser() -> ArgParser:
    p = tool_parser(
        "dicom_to_h5.py",
        __doc__,
        epilog=ID_RULES + "\n\nSpec: " + series_spec.__doc__.split("\n", 1)[1],
        out="output HDF5 file, written atomically",
        compression=True,
        debug="show tracebacks and stop at the first failing study",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="a DICOM file, a folder (searched recursively; zips inside are separate inputs) or a zip",
    )
    p.add_argument(
        "--spec", help="YAML/JSON spec per field mapping series descriptions to keys (see preprocess/series_spec.py)"
    )
    p.add_argument(
        "--default-plane",
        choices=PLANES,
        help="plane whose _<plane> suffix is left out, for fields whose spec sets none (default: none, always suffix)",
    )
    p.add_argument(
        "--repeat-acq",
        action="store_true",
        help="number repeats of a key _0, _1, ... (default: keep the first, report the rest), for fields whose spec "
        "sets none",
    )
    p.add_argument(
        "--field", help="field ID for inputs not named like UK Biobank zips (default: StudyDescription, else 0)"
    )
    p.add_argument(
        "--instance", help="instance ID for inputs not named like UK Biobank zips (default: 0, 1, ... per study)"
    )
    p.add_argument(
        "--frames-as",
        choices=("time", "slice"),
        default="time",
        help="what the frames of a multi-frame file without per-frame positions are (default: time)",
    )
    p.add_argument("--append", action="store_true", help="add to an existing --out file instead of replacing it")
    return p


def clean_id(text: str) -> str:
    return re.sub(r"[^\w.\-]+", "-", text.strip()).strip("-")


class Converter:
    """Writes the studies of each source into an open HDF5 file."""

    def __init__(self, h5: h5py.File, spec: dict[str, FieldSpec] | None, args: argparse.Namespace, report: BatchReport):
        self.h5, self.spec, self.args, self.report = h5, spec, args, report
        self.created: set[str] = set()  # groups made in this run (others get replaced)

    def convert_source(self, source: Source) -> None:
        try:
            with SourceReader(source) as reader:
                infos = self._scan(source, reader)
                if not infos:
                    self.report.fail(source.name, "no DICOM images found")
                    return
                # A UK Biobank zip is one group whatever it holds; elsewhere each study is.
                studies: dict[tuple, list[FileInfo]] = defaultdict(list)
                for info in infos:
                    studies[() if source.ids else (info.patient_id, info.study_uid)].append(info)
                ordered = sorted(studies.values(), key=lambda fs: (fs[0].study["date"], fs[0].study["time"]))
                for files in ordered:
                    label = source.name if len(ordered) == 1 else f"{source.name} [study {files[0].study_uid}]"
                    self._convert_study(source, reader, files, label)
        except (zipfile.BadZipFile, OSError) as exc:
            if self.args.debug:
                raise
            self.report.fail(source.name, f"cannot read ({exc})")

    def _scan(self, source: Source, reader: SourceReader) -> list[FileInfo]:
        infos = []
        for member in source.members():
            try:
                ds = reader.read(member, pixels=False)
            except Exception as exc:  # a damaged header: skip this file, keep the rest
                log.warning("%s: %s: unreadable header (%s)", source.name, member, exc)
                self.report.note("files with unreadable headers skipped")
                continue
            if ds is None:
                self.report.note("non-image files ignored")
                continue
            infos.append(file_info(member, ds))
        return infos

    def _ids(self, source: Source, info: FileInfo) -> tuple[str, str, str]:
        if source.ids:
            return source.ids
        patient = clean_id(info.patient_id) or clean_id(source.path.stem) or "unknown"
        fid = clean_id(self.args.field or "") or clean_id(info.study["studyDesc"]) or "0"
        if self.args.instance:
            return patient, fid, clean_id(self.args.instance)
        n = 0
        while (
            f"{patient}/{fid}/{n}" in self.h5
            and self.h5[f"{patient}/{fid}/{n}"].attrs.get("studyDICOMID") != info.study_uid
        ):
            n += 1
        return patient, fid, str(n)

    def _field_spec(self, fid: str) -> FieldSpec:
        if self.spec is None:
            return FieldSpec(store_all=True)
        entry = self.spec.get(fid) or self.spec.get("*")
        if entry is None:
            raise SeriesError(f"field {fid} has no entry in the spec (and no '*' entry)")
        return entry

    def _convert_study(self, source: Source, reader: SourceReader, files: list[FileInfo], label: str) -> None:
        written: list[str] = []  # the group path, then each dataset written
        try:
            self._write_study(source, reader, files, written)
            self.report.ok(label)
        except Exception as exc:
            if self.args.debug:
                raise
            remove_and_prune(self.h5, written[1:])
            if written:
                prune_empty(self.h5, written[0])
            self.report.fail(label, str(exc) or type(exc).__name__)

    def _write_study(self, source: Source, reader: SourceReader, files: list[FileInfo], written: list[str]) -> None:
        path = "/".join(self._ids(source, files[0]))
        fspec = self._field_spec(path.split("/")[1])
        default_plane = fspec.default_plane or self.args.default_plane
        repeat = self.args.repeat_acq if fspec.repeat_acq is None else fspec.repeat_acq
        series = group_series(files)
        phases = [s for s in series if fspec.is_phase(s.description)]
        chosen = []
        for s in series:
            rule = None if s in phases else fspec.rule_for(s.description)
            if rule is None and s not in phases:
                log.info("%s: series %r not in the spec, ignored", source.name, s.description)
                self.report.note("series not in the spec ignored")
            if rule is not None:
                chosen.append((s, rule))
        if not chosen:
            found = sorted({s.description for s in series})
            raise SeriesError(f"no series matches the spec (series found: {found})")
        if path in self.h5 and path not in self.created:
            log.info("replacing existing group %s", path)
            del self.h5[path]
        group = self.h5.require_group(path)
        self.created.add(path)
        written.append(path)
        bases = [(rule.base, s.plane) for s, rule in chosen]
        keys = assign_keys(bases, default_plane, repeat, number_when_several=fspec.store_all, taken=set(group))
        study = files[0].study
        for name in ("patientDICOMID", "studyDICOMID", "studyDesc", "aet", "host", "date"):
            group.attrs[name] = study[name]
        group.attrs["n_series"] = len({f.series_uid for f in files})
        read = lambda member: reader.read(member, pixels=True)  # noqa: E731
        used_phases: set[int] = set()
        for (s, rule), key in zip(chosen, keys):
            if key is None:
                log.error("%s: repeated acquisition of %r ignored (set repeat_acq to keep it)", source.name, rule.base)
                self.report.note("repeated acquisitions ignored")
                continue
            array, header = assemble(s, read, self.args.frames_as)
            attrs = {"seriesID": s.uid, "seriesDesc": s.description, "DICOMHeader": header_json(header)}
            if rule.phase is not None:
                array, attrs["phaseSeriesID"] = self._complex(
                    s, rule.phase, array, phases, used_phases, read, self.args.frames_as
                )
            write_image(group, key, array, attrs, self.args.compression)
            written.append(f"{path}/{key}")
        if len(written) == 1:
            raise SeriesError(f"every series repeats a key already in {path}")

    @staticmethod
    def _complex(
        mag: Series, pattern: str, magnitude: np.ndarray, phases: list[Series], used: set[int], read, frames_as: str
    ):
        """magnitude * exp(i * phase) with the first unused phase series of the same plane."""
        for i, ph in enumerate(phases):
            if i in used or ph.plane != mag.plane or not matches_description(pattern, ph.description):
                continue
            used.add(i)
            phase, header = assemble(ph, read, frames_as)
            if phase.shape != magnitude.shape:
                raise SeriesError(
                    f"phase series {ph.description!r} has shape {phase.shape}, "
                    f"magnitude {mag.description!r} {magnitude.shape}"
                )
            radians = phase_to_radians(phase, header)
            return (magnitude.astype(np.float32) * np.exp(1j * radians)).astype(np.complex64), ph.uid
        raise SeriesError(f"no phase series matching {pattern!r} for {mag.description!r}")


@tool_main(build_parser)
def main(args: argparse.Namespace) -> None:
    spec = load_spec(args.spec) if args.spec else None
    sources = find_sources(args.inputs)
    if not sources:
        raise UserError(f"no files found in: {' '.join(args.inputs)}")
    out = Path(args.out)
    with (
        atomic_h5(out, append=args.append) as h5,
        BatchReport(f"no input could be converted; {out} left unchanged") as report,
    ):
        converter = Converter(h5, spec, args, report)
        for source in track(sources, "DICOM -> HDF5", total=len(sources)):
            converter.convert_source(source)
    log.info("wrote %s", out)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
