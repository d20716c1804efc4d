"""The public Python API: latents from a trained or published model in three lines.

    from Engineering import api as imlatent
    model = imlatent.load("runs/my_diffae")          # run folder, checkpoint, export folder or Hub id
    z = model.embed("sub-01_cine.nii.gz")             # NIfTI, HDF5 (our contract) or a numpy/torch array
    df = model.embed_many(paths, batch_size=8, progress=True)

The preprocessing is the model's own (the run's saved config, or the export's config.json: axes, resampling,
crop-or-pad with its padding guard, normalisation, complex mode): inputs go through the training dataset's
transform code (``Engineering.data.dataset.H5Samples``), never a re-typed copy. Nothing is written; results are
numpy arrays and pandas DataFrames keyed like ``emb.tsv``.

Input layouts:

- an HDF5 file in the data contract (``patient/field/instance/key``, 5D ``C x T x S x X x Y``): every selected
  dataset, as the run's ``--run_mode 2`` reads it; ``embed`` returns the ``emb.tsv`` table of those samples;
- a NIfTI file (``.nii``/``.nii.gz``), read as ``preprocess/nifti_to_h5.py`` lays it out: array axes
  ``(i, j, k[, t[, c]])`` become ``C x T x S x X x Y`` with S = k, X = i, Y = j;
- an array: one dataset in the 5D contract ``C x T x S x X x Y`` (the result has the shape of its ``emb.h5``
  entry, ``n_c x n_t x n_s x latent_dim``), or one sample in the model's own input layout ``C x X x Y`` (2D
  model) / ``C x S x X x Y`` (3D model), which gives one latent vector.

A misfit input (wrong number of axes, too small for the model's input shape, NaN/Inf values, a 2D image for a
3D model, another number of channels) is one :class:`~Engineering.errors.UserError` naming the fix.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from Engineering.data.datamodule import sample_spec
from Engineering.data.dataset import H5Samples, SampleRef, SampleSpec, enumerate_samples
from Engineering.data.demo import ensure_named_demo, split_demo_ref
from Engineering.data.index import DatasetRecord
from Engineering.data.layout import SAMPLE_COLUMNS, SampleInfo, SampleKey, check_id
from Engineering.data.transforms import invert_affine, normalise_batch
from Engineering.Engines import registry
from Engineering.Engines.capabilities import Reconstructs
from Engineering.Engines.MainEngine import _with_hub
from Engineering.Engines.registry import drive_errors
from Engineering.Engines.saved_runs import SavedRun, load_run, whole_file_data
from Engineering.errors import UserError
from Engineering.io import hub as hub_io
from Engineering.io.checkpoints import CHECKPOINT_DIR, fit_state
from Engineering.io.outputs import emb_table

__all__ = [
    "ImLatentModel",
    "load",
    "load_direction",
    "LatentDirection",
    "ids_from_name",
    "read_nifti",
    "read_dicom_series",
    "input_path",
    "H5_SUFFIXES",
    "NIFTI_SUFFIXES",
]

H5_SUFFIXES = (".h5", ".hdf5")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
# the file-name convention of preprocess/nifti_to_h5.py: <patient>_<field>_<instance>[_<anything>]
# (UK Biobank's 1000001_20252_2_0.nii.gz); a name that does not match is the patient ID, field and instance "0"
DEFAULT_IDS = r"^(?P<patient>[^_]+)_(?P<field>\d+)_(?P<instance>\d+)(?:_.*)?$"
ARRAY_KEY = SampleKey("array", "0", "0", "primary")  # the IDs of an array's rows


def load(
    model: str | Path,
    *,
    options: Sequence[str] = (),
    in_channels: int | None = None,
    device: str | torch.device = "cpu",
    precision: str | None = None,
) -> ImLatentModel:
    """Rebuild a model for inference.

    ``model`` is a training run folder or its Checkpoints/ (the best checkpoint, else the last), a checkpoint file,
    an export folder (``config.json`` + ``model.safetensors`` as ``Executors/export_hf.py`` writes it), a folder
    with the published DiffAE layout, or a Hugging Face id ``ORG/NAME[@revision]`` (read from the local cache when
    offline,
    ``HF_HUB_OFFLINE=1``). ``options`` are command-line flags applied as ``--load_hf`` applies them (e.g.
    ``["--input_shape", "50,128,128"]`` for a published model whose files do not say it); ``in_channels`` is needed
    only for the published layout, whose files do not record it. ``precision`` ("32" or "bf16") replaces the
    model's ``--embed_precision`` (the DiffAE's bfloat16 encoder copy; None keeps the saved one).
    """
    ref = str(model)
    path = Path(ref).expanduser()
    if path.is_file() or (path.is_dir() and ((path / CHECKPOINT_DIR).is_dir() or (path / "last.ckpt").is_file())):
        for name, given in (("options", bool(options)), ("in_channels", in_channels is not None)):
            if given:
                raise UserError(
                    f"load({ref!r}): {name} apply to exported or published weights; a training run "
                    "is rebuilt from the config its checkpoint saved"
                )
        run = load_run(path)
    elif path.is_dir() or (not path.exists() and hub_io._REPO_ID.match(ref.partition("@")[0])):
        run = _from_hub(ref, options, in_channels)
    else:
        raise UserError(
            f"load({ref!r}): not a run folder, checkpoint file, export folder or Hugging Face id ORG/NAME[@revision]"
        )
    if precision is not None:
        ev = run.cfg.eval
        if not hasattr(ev, "embed_precision"):
            raise UserError(
                f"load({ref!r}, precision={precision!r}): the {run.cfg.model.drive} model has no "
                "--embed_precision (the DiffAE has); it embeds in float32"
            )
        if precision not in ("32", "bf16"):
            raise UserError(f"load({ref!r}, precision={precision!r}): give '32' or 'bf16'")
        ev.embed_precision = precision  # the engine holds this config object and reads it at each embed
    return ImLatentModel(run, ref, torch.device(device))


def _hub_task(ref: str) -> tuple[registry.TaskSpec, dict]:
    """The task of Hub/export weights, from config.json alone (the weights are read once, by _with_hub)."""
    try:
        folder, _, _ = hub_io.fetch(ref)
    except UserError as exc:  # a mistyped local path looks like ORG/NAME too: say both
        if Path(ref).expanduser().exists():
            raise
        raise UserError(
            f"load({ref!r}): no such file or folder, and as a Hugging Face id: {str(exc).split(': ', 1)[-1]}"
        ) from None
    config = {}
    if (folder / "config.json").is_file():
        try:
            config = json.loads((folder / "config.json").read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{folder / 'config.json'} is not valid JSON: {exc}") from None
    config = config if isinstance(config, dict) else {}
    if config.get("format") == hub_io.FORMAT:
        return registry.for_drive(str(config.get("drive")), f"{folder / 'config.json'}"), config
    readers = [t for t in registry.tasks().values() if t.published is not None]
    if len(readers) != 1:
        raise UserError(
            f"{ref}: not our export format, and {len(readers)} tasks read published layouts "
            f"({', '.join(t.name for t in readers)}): run the task's executor with --load_hf"
        )
    return readers[0], config


def _from_hub(ref: str, options: Sequence[str], in_channels: int | None) -> SavedRun:
    task, config = _hub_task(ref)
    resolved, hub = _with_hub(["--load_hf", ref, *options], task)  # the same config layering as --load_hf
    cfg = resolved.cfg
    if hub.kind == "imlatent":
        saved = config.get("in_channels")
        if in_channels is not None and in_channels != saved:
            raise UserError(f"load({ref!r}, in_channels={in_channels}): its config.json says in_channels={saved}")
        in_channels = saved
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise UserError(
            f"load({ref!r}): the weights do not record the number of input channels; pass "
            "in_channels=N (1 for the published cardiac models)"
        )
    with drive_errors():
        engine = task.engine_class()(cfg, in_channels)
        engine.load_state_dict(fit_state(engine, hub.state, f"load({ref!r})"))
    engine.eval()
    return SavedRun(engine, cfg, Path(hub.source), bool(cfg.eval.test_ema) and hasattr(engine, "ema_net"))


def input_path(ref: str | Path) -> Path:
    """A path as given (``~`` expanded), or a file of a bundled demo cohort: ``@demo/data.h5`` (written on first
    use, as the training commands' ``--json§datadir @demo`` does)."""
    demo = split_demo_ref(str(ref))
    if demo and demo[1]:
        return ensure_named_demo(demo[0]) / demo[1]
    return Path(ref).expanduser()


def ids_from_name(path: str | Path, pattern: str | None = None, key: str = "primary") -> SampleKey:
    """patient/field/instance IDs of an image file from its name (without .nii/.nii.gz/.h5).

    ``pattern`` is a regular expression with the named groups ``patient`` (required), ``field`` and
    ``instance`` (``"0"`` when absent), searched in the file name; the default is preprocess/nifti_to_h5.py's
    ``<patient>_<field>_<instance>[_...]``, and a name that does not match it is the patient ID.
    """
    name = Path(path).name
    low = name.lower()
    stem = next((name[: -len(s)] for s in (*NIFTI_SUFFIXES[::-1], *H5_SUFFIXES) if low.endswith(s)), name)
    if pattern:
        try:
            rx = re.compile(pattern)
        except re.error as exc:
            raise UserError(f"--ids {pattern!r} is not a regular expression: {exc}") from None
        if "patient" not in rx.groupindex:
            raise UserError(f"--ids {pattern!r} has no named group (?P<patient>...)")
        m = rx.search(stem)
        if m is None:
            raise UserError(f"--ids {pattern!r} does not match the file name {stem!r} ({path})")
    else:
        m = re.match(DEFAULT_IDS, stem)
    groups = m.groupdict() if m else {"patient": stem}
    ids = [groups.get(g) or "0" for g in ("patient", "field", "instance")]
    for column, value in zip(("patientID", "fieldID", "instanceID"), ids):
        check_id(column, value, str(path))
    return SampleKey(*ids, key)


def read_nifti(path: str | Path) -> np.ndarray:
    """A NIfTI image as C x T x S x X x Y, laid out as preprocess/nifti_sources.load_5d does (the library may not
    import preprocess/): (i, j, k, t, c) -> (c, t, k, i, j)."""
    import nibabel as nib

    try:
        data = np.asanyarray(nib.load(str(path)).dataobj)
    except FileNotFoundError:
        raise UserError(f"file not found: {path}") from None
    except Exception as exc:  # nibabel raises several types for damaged files
        raise UserError(f"{path}: cannot read NIfTI ({str(exc).splitlines()[0]})") from None
    if data.ndim > 5 or data.ndim < 2:
        raise UserError(f"{path}: a {data.ndim}D NIfTI image; 2 to 5 axes (x, y, z, t, c) are read")
    data = data.reshape(data.shape + (1,) * (5 - data.ndim))
    out = np.ascontiguousarray(np.transpose(data, (4, 3, 2, 0, 1)))
    return out.astype(out.dtype.newbyteorder("="), copy=False)


def read_dicom_series(folder: str | Path) -> tuple[np.ndarray, str]:
    """The one DICOM series below ``folder`` as C x T x S x X x Y, stacked by ``Engineering.data.dicom_series``'s
    rules (the ones ``preprocess/dicom_to_h5.py`` uses), and its PatientID. Files that are not DICOM images (a
    README, a thumbnail) are skipped; a folder holding several series is refused (one folder per series)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    from Engineering.data.dicom_series import SeriesError, assemble, file_info, group_series

    folder = Path(folder)
    infos = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
        if "Rows" in ds and "Columns" in ds:
            infos.append(file_info(str(path), ds))
    if not infos:
        raise UserError(f"{folder}: no HDF5, NIfTI or DICOM image file in this folder")
    series = group_series(infos)
    if len(series) > 1:
        names = ", ".join(f"{s.number} {s.description!r}" for s in series[:5])
        raise UserError(
            f"{folder}: {len(series)} DICOM series ({names}); give one folder per series, or "
            "convert the study with preprocess/dicom_to_h5.py and embed the HDF5 file"
        )
    try:
        array, _ = assemble(series[0], lambda member: pydicom.dcmread(member))
    except SeriesError as exc:
        raise UserError(f"{folder}: {exc}") from None
    return array, infos[0].patient_id.strip()


class _ArraySamples(H5Samples):
    """In-memory datasets through the training dataset's own sample code: only the read differs."""

    def __init__(self, arrays: list[np.ndarray], keys: list[SampleKey], spec: SampleSpec, where: str):
        records = []
        for a, k in zip(arrays, keys):
            mag = np.abs(a) if np.iscomplexobj(a) else a
            # an array has no min_val/max_val attributes: its own range (what preprocess/ records for a dataset)
            records.append(
                DatasetRecord(
                    *k.ids,
                    shape=tuple(a.shape),
                    is_complex=bool(np.iscomplexobj(a)),
                    min_val=float(mag.min()),
                    max_val=float(mag.max()),
                )
            )
        super().__init__(where, records, enumerate_samples(records, spec), spec)
        self.arrays = arrays

    def read_raw(self, ref: SampleRef, path: str | None = None) -> np.ndarray:
        if path is not None:
            raise UserError("masks (data§data_mask_mode) are read from meta_mask.h5: embed the HDF5 file")
        sel = [slice(None)] * 5
        for logical, idx in enumerate((ref.c, ref.t, ref.s)):
            if idx is not None:
                sel[self.spec.perm[logical]] = slice(idx, idx + 1)
        return np.transpose(self.arrays[ref.record][tuple(sel)], self.spec.perm)


class ImLatentModel:
    """A model ready for inference (eval mode, EMA weights where the run's test uses them)."""

    def __init__(self, run: SavedRun, source: str, device: torch.device):
        self.run, self.source, self.device = run, source, device
        self.cfg = run.cfg
        mode = getattr(run.cfg.eval, "bn_eval_mode", "running")
        if mode != "running":  # eval-mode BatchNorm would give other latents than the run's test, without a word
            raise UserError(
                f"load({source!r}): the model normalises BatchNorm with each {mode}'s statistics at test "
                f"time (--bn_eval_mode {mode}), so a sample's latent depends on its batch; embed with the "
                "training command's --run_mode 2"
            )
        run.engine.to(device)
        self.spec = sample_spec(run.cfg)

    def __repr__(self) -> str:
        m = self.cfg.model
        return (
            f"ImLatentModel({self.source!r}: {m.drive}, {'3D' if m.is3D else '2D'}, input_shape "
            f"{list(m.input_shape)}, latent_dim {m.latent_dim}, in_channels {self.in_channels})"
        )

    @property
    def in_channels(self) -> int:
        return int(self.run.engine.in_channels)

    @property
    def latent_dim(self) -> int:
        return int(self.cfg.model.latent_dim)

    # --- public
    def embed(self, x, batch_size: int = 8, progress: bool = False):
        """Latents of ``x``: an HDF5 file in our contract (-> DataFrame keyed like emb.tsv); a NIfTI file, a DICOM
        series folder (:func:`read_dicom_series`) or an array in the 5D contract (-> ``n_c x n_t x n_s x
        latent_dim``, its emb.h5 entry); or an array in the model's input layout (-> one latent vector)."""
        if isinstance(x, (str, Path)) and input_path(x).name.lower().endswith(H5_SUFFIXES):
            return self._table(self._h5_samples(input_path(x)), batch_size, progress)
        ds, single = self._image_samples(x, "embed")
        z = self._encode(ds, batch_size, progress)
        return z[0] if single else self._grid(ds, z)

    def embed_array(
        self, x, ids: SampleKey | Sequence[str] = ARRAY_KEY, batch_size: int = 8, progress: bool = False
    ) -> pd.DataFrame:
        """An array's latents (either layout of :meth:`embed`) as emb.tsv rows under ``ids`` (a SampleKey or
        (patientID, fieldID, instanceID, key)); e.g. a DICOM series read by the caller."""
        key = ids if isinstance(ids, SampleKey) else SampleKey(*ids)
        ds, _ = self._samples([_as_array(x)], [key], "/".join(key.ids))
        return self._table(ds, batch_size, progress)

    def embed_many(
        self, paths: Iterable[str | Path], batch_size: int = 8, progress: bool = False, ids: str | None = None
    ) -> pd.DataFrame:
        """One DataFrame keyed like emb.tsv for HDF5 and NIfTI files and DICOM series folders; a NIfTI file's IDs
        come from its name (:func:`ids_from_name` with ``ids``), a DICOM series' patient ID from ``ids`` on the
        folder name, else its PatientID (field and instance ``0``). Files are read one at a time."""
        paths = [input_path(p) for p in paths]
        if not paths:
            raise UserError("embed_many: no input files")
        tables = []
        for path in _progress(paths, progress and len(paths) > 1, "files"):
            low = path.name.lower()
            if low.endswith(H5_SUFFIXES):
                ds = self._h5_samples(path)
            elif low.endswith(NIFTI_SUFFIXES):
                ds, _ = self._samples([read_nifti(path)], [ids_from_name(path, ids)], str(path))
            elif path.is_dir():
                array, patient = read_dicom_series(path)
                key = (
                    ids_from_name(path, ids)
                    if ids or not patient
                    else SampleKey(check_id("patientID", patient, f"{path} (its DICOM PatientID)"), "0", "0", "primary")
                )
                ds, _ = self._samples([array], [key], str(path))
            else:
                raise UserError(
                    f"{path}: not an HDF5 ({', '.join(H5_SUFFIXES)}) or NIfTI "
                    f"({', '.join(NIFTI_SUFFIXES)}) file or a DICOM series folder"
                )
            tables.append(self._table(ds, batch_size, progress and len(paths) == 1))
        return join_tables(tables)

    def reconstruct(self, x, batch_size: int = 8) -> np.ndarray:
        """Reconstructions of the samples of ``x`` (NIfTI file or array, as :meth:`embed`), ``N x C x ...`` in
        the model's input layout and the input's intensity units; only for families with a decoder."""
        if isinstance(x, (str, Path)):
            if not str(x).lower().endswith(NIFTI_SUFFIXES):
                raise UserError(f"{x}: reconstruct reads NIfTI files and arrays")
            ds, single = self._samples([read_nifti(input_path(x))], [ARRAY_KEY], str(x))
        else:
            ds, single = self._samples([_as_array(x)], [ARRAY_KEY], "the array")
        if not isinstance(self.run.engine, Reconstructs):
            raise UserError(
                f"the {self.cfg.model.drive} model ({type(self.run.engine).__name__}) has no "
                "decoder: reconstruct is not available (embed is)"
            )
        out = []
        with torch.no_grad():
            for batch, affine in self._batches(ds, batch_size, False):
                recon = self.run.reconstruct(batch)
                out.append(invert_affine(recon.cpu() if recon.is_complex() else recon.float().cpu(), affine).numpy())
        rec = np.concatenate(out)
        return rec[0] if single else rec

    # --- samples
    def _h5_samples(self, path: Path) -> H5Samples:
        if not path.is_file():
            raise UserError(f"file not found: {path}")
        cfg = self.cfg.model_copy(deep=True)
        cfg.data.batch_groups = ""  # group-pure batches are a training matter; their covariate table is not needed
        return whole_file_data(cfg, path, self.run.datamodule_class).dataset("test")

    def _samples(self, arrays: list[np.ndarray], keys: list[SampleKey], where: str) -> tuple[H5Samples, bool]:
        """The arrays as datasets of the run's pipeline; ``single``: one sample in the model's input layout."""
        spec, m = self.spec, self.cfg.model
        model_ndim = 4 if m.is3D else 3
        layout = "C x S x X x Y" if m.is3D else "C x X x Y"
        single = False
        for i, a in enumerate(arrays):
            if a.ndim == model_ndim:  # one sample as the model takes it: nothing to split or fold into channels
                single = True
                arrays[i] = a.reshape(a.shape[:1] + (1,) * (5 - model_ndim) + a.shape[1:])
                spec = dataclasses.replace(spec, perm=(0, 1, 2, 3, 4), split_c=False, split_t=True, split_s=not m.is3D)
            elif a.ndim != 5:
                raise UserError(
                    f"{where} has {a.ndim} axes {list(a.shape)}: give one dataset in the 5D contract "
                    f"C x T x S x X x Y or one sample in this {'3D' if m.is3D else '2D'} model's layout "
                    f"{layout} (e.g. x[None] for one channel)"
                )
        for a in arrays:
            if a.dtype.kind not in "uifc":
                raise UserError(f"{where} has dtype {a.dtype}: give numbers")
            if a.dtype.kind in "fc" and not np.isfinite(a).all():
                raise UserError(f"{where} contains NaN/Inf values ({int((~np.isfinite(a)).sum())} of {a.size})")
        ds = _ArraySamples(arrays, keys, spec, where)
        for rec in ds.records:
            have = spec.sample_spatial(rec)
            if m.is3D and have[0] == 1 and m.input_shape[0] > 1:
                raise UserError(
                    f"{where}: a 2D image (one slice, shape {list(rec.shape)}) for a 3D model of input "
                    f"shape {list(m.input_shape)}: give a volume (S > 1) or use a 2D model"
                )
            problem = spec.fit_problem(have, where)
            if problem:
                raise UserError(problem)
        return ds, single

    # --- inference
    def _batches(self, ds: H5Samples, batch_size: int, progress: bool):
        """(normalised batch on the device, its (B, C, 2) affine), as the test loader + on_after_batch_transfer."""
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        starts = range(0, len(ds), batch_size)
        for start in _progress(starts, progress, f"batches of {batch_size}"):
            items = [ds[i] for i in range(start, min(start + batch_size, len(ds)))]
            inp = torch.stack([it["inp"].to(torch.float32) for it in items])
            affine = torch.stack([it["affine"] for it in items])
            if inp.shape[1] != self.in_channels:
                raise UserError(
                    f"{ds.h5file}: its samples have {inp.shape[1]} channel(s), the model takes "
                    f"{self.in_channels} (check the channel axis of the 5D layout C x T x S x X x Y)"
                )
            yield normalise_batch(inp.to(self.device), affine.to(self.device)), affine

    @torch.no_grad()
    def _encode(self, ds: H5Samples, batch_size: int, progress: bool) -> np.ndarray:
        out = [self.run.encode(x).float().cpu().numpy() for x, _ in self._batches(ds, batch_size, progress)]
        z = np.concatenate(out).reshape(len(ds), -1)
        if not np.isfinite(z).all():  # as the writer: a non-finite latent never becomes a result
            raise UserError(f"{ds.h5file}: the model gives non-finite latents (diverged weights?)")
        return z

    def _infos(self, ds: H5Samples) -> list[SampleInfo]:
        return [ds.sample_info(i) for i in range(len(ds))]

    def _table(self, ds: H5Samples, batch_size: int, progress: bool) -> pd.DataFrame:
        return emb_table(self._infos(ds), self._encode(ds, batch_size, progress))

    def _grid(self, ds: H5Samples, z: np.ndarray) -> np.ndarray:
        """The emb.h5 array (n_c, n_t, n_s, latent_dim) of a single dataset."""
        infos = self._infos(ds)
        grid = np.full((infos[0].n_c, infos[0].n_t, infos[0].n_s, z.shape[1]), np.nan, np.float32)
        for info, vec in zip(infos, z):
            grid[info.index] = vec
        return grid

    # --- manipulation (DiffAE: Preechakul et al., Diffusion Autoencoders, CVPR 2022)
    def manipulate(self, x, direction, scale, batch_size: int = 8) -> np.ndarray:
        """``x`` rendered with its semantic code moved along ``direction`` by ``scale``: the DiffAE's attribute
        manipulation, as ``main_latentcls --manipulate`` renders it (``Engineering.Eval.manipulation``).

        ``x``: what :meth:`embed` takes except an HDF5 file's table (a NIfTI file, a DICOM series folder, an HDF5
        file, an array). ``direction``: a :class:`LatentDirection` (:func:`load_direction` reads one from a
        ``main_latentcls`` run's linear head; ``scale`` is then in standard deviations of the standardised latents)
        or a vector of ``latent_dim`` numbers (made unit length; ``scale`` in latent units). Each image keeps its own
        stochastic code x_T (DDIM inversion with its own z_sem), so scale 0 is :meth:`reconstruct`. Returns the
        renders in the input's intensity units, ``N x C x ...`` in the model's input layout for one ``scale`` and
        ``N x n_scales x C x ...`` for a sequence of scales (without ``N`` for one sample in the model's layout).
        """
        from Engineering.Eval import manipulation

        drive = self.cfg.model.drive
        if drive != "DiffAE":  # the renderer keeps x's own x_T: a DiffAE's; main_latentcls refuses the same way
            raise UserError(
                f"manipulate renders with a DiffAE (its own x_T, Preechakul et al. 2022); the "
                f"{drive} model ({type(self.run.engine).__name__}) has no such renderer (embed is "
                "available)"
            )
        d = direction if isinstance(direction, LatentDirection) else LatentDirection.from_vector(direction)
        if d.vector.shape != (self.latent_dim,):
            raise UserError(
                f"manipulate: the direction has {d.vector.size} dimensions, the model's latent_dim is "
                f"{self.latent_dim} (a direction from another model's latents?)"
            )
        many = np.ndim(scale) > 0
        scales = [float(s) for s in np.ravel(scale)]
        if not scales or not np.isfinite(scales).all():
            raise UserError(f"manipulate: scale must be a finite number or a non-empty sequence of them, got {scale!r}")
        ds, single = self._image_samples(x, "manipulate")
        engine = self.run.engine
        net = engine.ema_net if self.run.use_ema else engine.net
        out = []
        with torch.no_grad():
            for batch, affine in self._batches(ds, batch_size, False):
                z0 = net.encode(batch)  # float32 z_sem, as Engines/manipulate.py renders it
                codes = manipulation.shifted_codes(z0, d.mean, d.std, d.vector, scales)
                renders = manipulation.render(
                    engine.diffusion, net, batch, z0, codes, engine.T_inv, engine.T_step, engine.clip
                )
                out.append(invert_affine(renders.float().cpu(), affine[:, None]).numpy())  # (n, S, C, ...)
        rec = np.concatenate(out)
        rec = rec if many else rec[:, 0]
        return rec[0] if single else rec

    def preprocessed(self, x, limit: int | None = None, normalised: bool = True) -> tuple[np.ndarray, pd.DataFrame]:
        """The model's inputs for ``x`` (as :meth:`manipulate` takes it) after the run's crop or pad and resampling,
        ``N x C x ...`` float32 in the model's input layout (the first ``limit`` samples), normalised as the network
        sees them (``normalised=False``: in the input's intensity units, those of :meth:`reconstruct`), and their
        sample keys (the key columns of emb.tsv)."""
        ds, _ = self._image_samples(x, "preprocessed")
        n = len(ds) if limit is None else min(len(ds), max(int(limit), 0))
        items = [ds[i] for i in range(n)]
        keys = pd.DataFrame([ds.sample_info(i).row() for i in range(n)], columns=list(SAMPLE_COLUMNS))
        if not items:
            return np.zeros((0, self.in_channels, *self.cfg.model.input_shape), np.float32), keys
        inp = torch.stack([it["inp"].to(torch.float32) for it in items])
        if not normalised:
            return inp.numpy(), keys
        return normalise_batch(inp, torch.stack([it["affine"] for it in items])).numpy(), keys

    def _image_samples(self, x, what: str) -> tuple[H5Samples, bool]:
        """The samples of a NIfTI file, DICOM series folder, HDF5 file or array; ``single``: one sample given in
        the model's own layout."""
        if not isinstance(x, (str, Path)):
            return self._samples([_as_array(x)], [ARRAY_KEY], "the array")
        path = input_path(x)
        low = path.name.lower()
        if low.endswith(H5_SUFFIXES):
            return self._h5_samples(path), False
        if low.endswith(NIFTI_SUFFIXES):
            return self._samples([read_nifti(path)], [ARRAY_KEY], str(path))
        if path.is_dir():
            return self._samples([read_dicom_series(path)[0]], [ARRAY_KEY], str(path))
        raise UserError(
            f"{x}: {what} reads HDF5 ({', '.join(H5_SUFFIXES)}) and NIfTI ({', '.join(NIFTI_SUFFIXES)}) "
            "files, DICOM series folders and arrays"
        )


def join_tables(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """The latent tables of several inputs as one; two inputs giving the same sample is one clear error."""
    table = pd.concat(tables, ignore_index=True)
    dup = table.duplicated(list(SAMPLE_COLUMNS))
    if dup.any():
        row = table[dup].iloc[0]
        raise UserError(
            f"two inputs give the same sample {'/'.join(str(row[c]) for c in SAMPLE_COLUMNS[:4])} "
            f"(c={row['c']}, t={row['t']}, s={row['s']}): name the files apart or give --ids"
        )
    return table


def _as_array(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise UserError(f"embed takes a file path, a numpy array or a torch tensor, not a {type(x).__name__}")


def _progress(items, on: bool, unit: str):
    if not on:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, unit=unit.split()[0], desc="embedding", mininterval=5.0)


@dataclasses.dataclass(frozen=True)
class LatentDirection:
    """A unit direction in standardised latent space and the latents' mean and std (what un-standardises it):
    ``z' = mean + std * ((z - mean) / std + scale * vector)``, the DiffAE's manipulation rule."""

    vector: np.ndarray  # (latent_dim,), unit length
    mean: np.ndarray  # (latent_dim,)
    std: np.ndarray  # (latent_dim,)
    label: str = ""

    @classmethod
    def from_vector(cls, vector, label: str = "") -> LatentDirection:
        """A direction in the latents' own units (mean 0, std 1): ``scale`` moves z by that length."""
        v = np.asarray(_as_array(vector) if isinstance(vector, torch.Tensor) else vector, dtype=np.float64).ravel()
        norm = float(np.linalg.norm(v)) if v.size and np.isfinite(v).all() else 0.0
        if norm == 0.0:
            raise UserError("manipulate: the direction must be a non-zero vector of finite numbers")
        return cls(v / norm, np.zeros_like(v), np.ones_like(v), label)


def load_direction(run: str | Path, target: str) -> LatentDirection:
    """The direction of ``target`` (``NAME`` or ``NAME:CLASS``, as ``--manipulate``) from a ``main_latentcls``
    run folder or checkpoint: its linear head's weights made a unit vector (a class's logit against the mean of
    the others for a categorical target) with the training split's latent mean and std."""
    from Engineering.data.latent_tables import TargetSpec
    from Engineering.Engines.saved_runs import saved_config
    from Engineering.Eval import manipulation
    from Engineering.io.checkpoints import checkpoint_in, read_checkpoint

    path = checkpoint_in(Path(run).expanduser(), "best_or_last")
    ckpt = read_checkpoint(path)
    raw, scaler, saved = ckpt.get("imlatent_config"), ckpt.get("latentcls_scaler"), ckpt.get("latentcls_targets")
    if not isinstance(raw, dict) or not isinstance(scaler, dict) or not isinstance(saved, list):
        raise UserError(
            f"{path}: not a main_latentcls checkpoint (no latent predictor targets); give the run folder "
            "of a latent predictor trained with --heads linear"
        )
    cfg, task = saved_config(raw, f"checkpoint {path}")
    targets = [TargetSpec.from_dict(t) for t in saved]
    with drive_errors():
        engine = task.engine_class()(cfg, int(ckpt["in_channels"]), targets, scaler["mean"], scaler["std"])
    engine.load_state_dict(fit_state(engine, ckpt["state_dict"], str(path)))
    name, _, wanted = target.partition(":")
    spec = next((t for t in targets if t.name == name), None)
    if spec is None:
        raise UserError(f"direction {target!r}: not a target of {path} (targets: {', '.join(t.name for t in targets)})")
    vector, label = manipulation.unit_direction(engine.linear_weights(name), spec.classes, wanted or None)
    return LatentDirection(
        vector, np.asarray(scaler["mean"], np.float64), np.asarray(scaler["std"], np.float64), f"{name} ({label})"
    )
