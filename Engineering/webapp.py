"""The local web page of a model (``Executors/app.py``): the ancestor's Hugging Face Space, on your machine.

Drop a NIfTI file, a zipped DICOM series or an HDF5 file in the data contract; the page shows the model's
preprocessed input (as the network sees it), the latents (a table and a TSV download), the reconstruction where
the family has a decoder and, for a DiffAE given a direction from a ``main_latentcls`` run, a slider that moves the
semantic code along it (Preechakul et al., Diffusion Autoencoders, CVPR 2022). Everything goes through the public
API (:mod:`Engineering.api`); the page functions below take plain paths and return plain values, so they are tested
without a browser, and Gradio only wires them to components.

Nothing is fetched from outside: analytics off, system fonts only, no share link, bound to 127.0.0.1 by default.
"""

from __future__ import annotations

import os
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from Engineering import api
from Engineering.errors import USER_FACING, UserError, one_line

# the uploads the page reads; a .zip holds one DICOM series
UPLOAD_SUFFIXES = api.NIFTI_SUFFIXES + api.H5_SUFFIXES + (".zip",)
MAX_IMAGES = 16  # images per gallery: enough to see the input, bounded for a 50-frame cine or a deep volume
MAX_UNZIPPED = 2 * 1024**3  # bytes a zipped DICOM series may expand to (a zip bomb stops here)


@dataclass
class Upload:
    """An uploaded file as the API reads it: ``source`` is a NIfTI or HDF5 path, or the folder of an unzipped DICOM
    series (kept in ``workdir`` until the next upload)."""

    name: str
    kind: str  # "nifti", "hdf5" or "dicom"
    source: Path
    workdir: Path = field(repr=False)


@dataclass
class Result:
    """What the page shows after an upload; ``status`` is one line (``error: ...`` as the CLI prints it)."""

    status: str
    upload: Upload | None = None
    table: pd.DataFrame | None = None
    tsv: Path | None = None
    images: list = field(default_factory=list)


def error_line(exc: BaseException) -> str:
    """The line the command line prints for a user error (``Engineering.errors.run_cli``)."""
    return f"error: {one_line(exc)}"


def read_upload(path: str | Path, workdir: str | Path) -> Upload:
    """Check an uploaded file's kind by its name; a .zip is unpacked into ``workdir`` as one DICOM series."""
    path = Path(path)
    low = path.name.lower()
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    workdir = Path(workdir)
    if low.endswith(api.NIFTI_SUFFIXES):
        return Upload(path.name, "nifti", path, workdir)
    if low.endswith(api.H5_SUFFIXES):
        return Upload(path.name, "hdf5", path, workdir)
    if low.endswith(".zip"):
        return Upload(path.name, "dicom", _unzip(path, workdir / "dicom"), workdir)
    raise UserError(
        f"{path.name}: the page reads NIfTI ({', '.join(api.NIFTI_SUFFIXES)}), HDF5 "
        f"({', '.join(api.H5_SUFFIXES)}) and zipped DICOM series (.zip)"
    )


def _unzip(path: Path, folder: Path) -> Path:
    try:
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            if sum(m.file_size for m in members) > MAX_UNZIPPED:
                raise UserError(
                    f"{path.name}: unpacks to more than {MAX_UNZIPPED // 1024**3} GB; convert the study "
                    "with preprocess/dicom_to_h5.py and upload the HDF5 file"
                )
            folder.mkdir(parents=True, exist_ok=True)
            left = MAX_UNZIPPED  # the sizes a zip declares may lie: count what is written
            for i, m in enumerate(members):
                # numbered flat names: a member's own path ('../x', '/etc/x') never decides where it is written
                with zf.open(m) as src, open(folder / f"{i:06d}_{Path(m.filename).name}", "wb") as dst:
                    while chunk := src.read(1 << 20):
                        left -= len(chunk)
                        if left < 0:
                            raise UserError(f"{path.name}: unpacks to more than {MAX_UNZIPPED // 1024**3} GB")
                        dst.write(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError) as exc:
        raise UserError(f"{path.name}: not a readable zip file ({exc})") from None
    if not members:
        raise UserError(f"{path.name}: the zip file is empty")
    return folder


def embed_upload(model: api.ImLatentModel, path: str | Path | None, workdir: str | Path) -> Result:
    """Latents (emb.tsv's columns), their TSV and the preprocessed input of an uploaded file; a user error is the
    result's one-line status instead of an exception."""
    if not path:
        return Result("Drop a NIfTI file, a zipped DICOM series or an HDF5 file.")
    workdir = Path(workdir)
    try:
        up = read_upload(path, workdir)
        # the upload's own name gives the IDs (preprocess/'s <patient>_<field>_<instance>), as embed.py does
        table = model.embed_many([up.source])
        x, keys = model.preprocessed(up.source, limit=MAX_IMAGES)
    except tuple(USER_FACING) as exc:
        return Result(error_line(exc))
    workdir.mkdir(parents=True, exist_ok=True)
    tsv = workdir / (_stem(up.name) + "_latents.tsv")
    table.to_csv(tsv, sep="\t", index=False)
    datasets = table[list(api.SAMPLE_COLUMNS[:4])].drop_duplicates()
    more = f" and {len(datasets) - 1} more dataset(s)" if len(datasets) > 1 else ""
    status = (
        f"{len(table)} latent vector(s) of {model.latent_dim} from {up.name} ({up.kind}); IDs "
        f"{'/'.join(map(str, datasets.iloc[0]))}{more}"
    )
    return Result(status, up, table, tsv, images(x, keys))


def reconstruct_upload(model: api.ImLatentModel, up: Upload | None) -> tuple[str, list]:
    """The reconstruction of an upload's samples (the API reads NIfTI files and arrays; a DICOM series is read as
    embed reads it), on the input's grey scale."""
    if up is None:
        return "Upload a file first.", []
    try:
        x = api.read_dicom_series(up.source)[0] if up.kind == "dicom" else up.source
        rec = model.reconstruct(x)
        shown, keys = model.preprocessed(up.source, limit=MAX_IMAGES, normalised=False)
    except tuple(USER_FACING) as exc:
        return error_line(exc), []
    rec = rec[None] if rec.ndim == shown.ndim - 1 else rec
    return f"reconstruction of {len(rec)} sample(s) of {up.name}", images(rec[:MAX_IMAGES], keys, _window(shown))


def manipulate_upload(
    model: api.ImLatentModel, up: Upload | None, direction: api.LatentDirection | None, scale: float
) -> tuple[str, list]:
    """The upload's samples rendered with z_sem moved by ``scale`` along ``direction`` (:meth:`api.ImLatentModel.
    manipulate`: one DDIM inversion and one rendering per sample); the first MAX_IMAGES are shown, on the input's
    grey scale (so brightness changes show)."""
    if up is None:
        return "Upload a file first.", []
    if direction is None:
        return "error: no direction: start the page with --direction RUN --target NAME[:CLASS]", []
    try:
        renders = model.manipulate(up.source, direction, float(scale))
        shown, keys = model.preprocessed(up.source, limit=MAX_IMAGES, normalised=False)
    except tuple(USER_FACING) as exc:
        return error_line(exc), []
    renders = renders[None] if renders.ndim == shown.ndim - 1 else renders
    return f"{direction.label}: scale {float(scale):+g}", images(renders[:MAX_IMAGES], keys, _window(shown))


def _window(x: np.ndarray) -> tuple[float, float]:
    """The grey scale of what images() shows of x: renders are drawn on their input's, as main_latentcls's strips."""
    shown = x[:, 0] if x.ndim == 4 else x[:1, 0]
    return float(shown.min()), float(shown.max())


def images(
    x: np.ndarray, keys: pd.DataFrame, window: tuple[float, float] | None = None
) -> list[tuple[np.ndarray, str]]:
    """Grey uint8 images with captions: channel 0 of each 2D sample, or the slices of the first 3D sample; one grey
    scale for all (so frames compare): ``window`` (low, high), else their own range; values outside are clipped."""
    if len(x) == 0:
        return []
    planes, captions = [], []
    if x.ndim == 4:  # N x C x X x Y
        for img, (_, k) in zip(x, keys.iterrows()):
            planes.append(img[0])
            captions.append(_caption(k))
    else:  # N x C x S x X x Y: one volume's slices
        vol = x[0, 0]
        step = max(1, int(np.ceil(len(vol) / MAX_IMAGES)))
        for s in range(0, len(vol), step):
            planes.append(vol[s])
            captions.append(f"{_caption(keys.iloc[0])} slice {s}")
    stack = np.stack(planes[:MAX_IMAGES]).astype(np.float64)
    lo, hi = window or (float(stack.min()), float(stack.max()))
    grey = np.zeros_like(stack) if hi <= lo else np.clip((stack - lo) / (hi - lo), 0, 1)
    return [(np.round(g * 255).astype(np.uint8), c) for g, c in zip(grey, captions)]


def _caption(k) -> str:
    return f"c={k['c']} t={k['t']} s={k['s']}".replace("=None", "=-").replace("=nan", "=-")


def _stem(name: str) -> str:
    low = name.lower()
    return next((name[: -len(s)] for s in sorted(UPLOAD_SUFFIXES, key=len, reverse=True) if low.endswith(s)), name)


# --- Gradio wiring ------------------------------------------------------------------------------------------------


def offline_env() -> None:
    """Before gradio is imported: no usage analytics, no telemetry, no update check."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")


def theme():
    """Gradio's default look with the system's fonts: nothing is loaded from a font service."""
    import gradio as gr

    return gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "Consolas", "monospace"]
    )


def build(model: api.ImLatentModel, direction: api.LatentDirection | None = None, workroot: str | Path | None = None):
    """The page (a ``gradio.Blocks``) of one loaded model."""
    offline_env()
    import gradio as gr

    root = Path(workroot or tempfile.mkdtemp(prefix="imlatent_app_"))

    def on_upload(file):
        workdir = Path(tempfile.mkdtemp(dir=root))
        res = embed_upload(model, file, workdir)
        table = res.table if res.table is not None else pd.DataFrame()
        return (res.status, res.images, table, str(res.tsv) if res.tsv else None, res.upload, [], [])

    with gr.Blocks(title="imlatent", analytics_enabled=False) as page:
        gr.Markdown(f"## Latents of your images\n`{model!r}`")
        upload = gr.File(
            label="NIfTI (.nii, .nii.gz), zipped DICOM series (.zip) or HDF5 (.h5)",
            file_types=list(UPLOAD_SUFFIXES),
            elem_id="upload",
        )
        status = gr.Textbox(label="Status", interactive=False, elem_id="status")
        state = gr.State(None)
        shown = gr.Gallery(
            label="Preprocessed input (as the model sees it)", columns=8, height="auto", elem_id="inputs"
        )
        table = gr.Dataframe(label="Latents", interactive=False, elem_id="latents")
        tsv = gr.File(label="Latents as TSV (emb.tsv's columns)", interactive=False, elem_id="latents-tsv")
        with gr.Row():
            recon_button = gr.Button("Reconstruct", elem_id="reconstruct")
        recon = gr.Gallery(label="Reconstruction", columns=8, height="auto", elem_id="reconstruction")
        manip = gr.Gallery(visible=False)
        if direction is not None:
            slider = gr.Slider(
                -3,
                3,
                value=0,
                step=0.5,
                label=f"Manipulation along {direction.label} (standard deviations of the standardised latents)",
                elem_id="scale",
            )
            manip = gr.Gallery(label="Manipulated", columns=8, height="auto", elem_id="manipulated")
            slider.release(lambda up, s: manipulate_upload(model, up, direction, s), [state, slider], [status, manip])
        upload.change(on_upload, upload, [status, shown, table, tsv, state, recon, manip])
        recon_button.click(lambda up: reconstruct_upload(model, up), state, [status, recon])
    return page


def serve(page, host: str = "127.0.0.1", port: int = 7860, on_ready=None) -> None:
    """Serve until stopped (Ctrl+C or a stop signal, which ``run_cli`` turns into its exit code)."""
    try:
        page.launch(
            server_name=host,
            server_port=port,
            share=False,
            inbrowser=False,
            prevent_thread_lock=True,
            ssr_mode=False,
            show_error=False,
            quiet=True,
            theme=theme(),
            footer_links=[],
            mcp_server=False,
            pwa=False,
            enable_monitoring=False,
        )
    except OSError as exc:  # Gradio's "Cannot find empty port" names its own parameters, not our flags
        raise UserError(
            f"cannot serve on {host}:{port} ({str(exc).split('.')[0]}): choose another --port or --host"
        ) from None
    if on_ready is not None:
        on_ready()
    try:
        while True:
            time.sleep(0.5)
    finally:
        page.close()
