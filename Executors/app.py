"""A local web page for a model: drop a NIfTI file, a zipped DICOM series or an HDF5 file, see the preprocessed
input, the latents (table and TSV), the reconstruction and, for a DiffAE with a direction, a manipulation slider.

python Executors/app.py [--model ID_OR_PATH] [--direction LATENTCLS_RUN --target NAME[:CLASS]] [--port 7860]

--model: a training run folder, a checkpoint, an export folder or a Hugging Face id (offline: the local cache), as
Executors/embed.py takes it; without it, the shipped demo model examples/demo_model (a small 2D DiffAE of the
synthetic demo cohort, to try the page in seconds). --direction: a main_latentcls run trained with the linear head on
this DiffAE's latents;
--target: one of its targets (NAME:CLASS for a class of a categorical one). The page is served on 127.0.0.1 (this
machine only) unless --host says otherwise; nothing is fetched from outside (no analytics, no web fonts, no share
link). The page logic is Engineering/webapp.py.
"""

from __future__ import annotations

import argparse
import shlex
import tempfile

from Engineering.errors import ArgParser, UserError, run_cli


def main(argv) -> dict:
    p = ArgParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model",
        default=None,
        help="run folder, checkpoint, export folder or Hugging Face ORG/NAME (default: examples/demo_model)",
    )
    p.add_argument(
        "--direction",
        default=None,
        metavar="LATENTCLS_RUN",
        help="a main_latentcls run (linear head) on this DiffAE's latents: adds the manipulation slider",
    )
    p.add_argument("--target", default=None, metavar="NAME[:CLASS]", help="the --direction run's target to move along")
    p.add_argument(
        "--flags",
        default="",
        metavar='"--FLAG VALUE ..."',
        help="training-command flags for exported/published weights (as Executors/embed.py --flags)",
    )
    p.add_argument(
        "--in_channels",
        type=int,
        default=None,
        help="input channels of published-layout weights (1 for the cardiac models)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port to serve on")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    a = p.parse_args(argv)
    if (a.direction is None) != (a.target is None):
        raise UserError("--direction and --target go together: the latent predictor run and the target to move along")
    try:
        options = shlex.split(a.flags)
    except ValueError as exc:
        raise UserError(f"--flags {a.flags!r}: {exc}") from None

    from Engineering import api, webapp
    from Engineering.Engines.registry import REPO

    if a.model is None:
        a.model = str(REPO / "examples" / "demo_model")
        if not (REPO / "examples" / "demo_model" / "config.json").is_file():
            raise UserError(
                "no --model given, and the shipped demo model (examples/demo_model) is only in a "
                "checkout of the repository: give --model ID_OR_PATH"
            )
    model = api.load(a.model, options=options, in_channels=a.in_channels, device=a.device)
    direction = None
    if a.direction is not None:
        if model.cfg.model.drive != "DiffAE":
            raise UserError(
                f"--direction: the manipulation slider renders with a DiffAE; {a.model} is a "
                f"{model.cfg.model.drive} model"
            )
        direction = api.load_direction(a.direction, a.target)
        if direction.vector.size != model.latent_dim:  # found now, not at the first move of the slider
            raise UserError(
                f"--direction {a.direction}: its predictor takes {direction.vector.size} latent "
                f"dimensions, the model has latent_dim {model.latent_dim} (not this model's latents?)"
            )
    url = f"http://{a.host}:{a.port}/"
    with tempfile.TemporaryDirectory(prefix="imlatent_app_") as workroot:  # uploads' unzipped series and TSVs
        page = webapp.build(model, direction, workroot)
        webapp.serve(page, a.host, a.port, on_ready=lambda: print(f"serving {model!r} at {url}", flush=True))
    return {"url": url}


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
