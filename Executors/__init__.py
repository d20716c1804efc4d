"""The command-line tools, also installed as console commands (docs/install.md, "Commands").

Each ``Executors/<tool>.py`` runs as ``python Executors/<tool>.py ...`` from a checkout. Installed (pip, Poetry, the
container), the same tools answer from any folder as

    imlatent <command> [flags]        e.g.  imlatent diffae --help,  imlatent embed --model ... --input ...
    imlatent-embed [flags]            the same as ``imlatent embed``
    imlatent-app [flags]              the same as ``imlatent app``

``imlatent`` alone (or ``imlatent --help``) lists the commands. This module imports nothing heavy: a command's own
module is imported only when it runs.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# command -> module of Executors/ (each has main(argv) and ends in ``raise SystemExit(run_cli(main))``)
COMMANDS: dict[str, tuple[str, str]] = {
    "embed": ("embed", "latents of image files (NIfTI, DICOM folders, HDF5) with a trained or published model"),
    "app": ("app", "the local web page: drop an image, see its latents and reconstruction"),
    "train": ("main", "any registered task: --task NAME (plug-ins with --plugins)"),
    "diffae": ("main_diffAE", "train/test a 2D/3D diffusion autoencoder; write its latents"),
    "recon": ("main_recon", "train/test any pythae autoencoder/VAE; write its latents"),
    "ssl": ("main_ssl", "self-supervised representations (SimCLR, MinCLR, IP-IRM)"),
    "latentcls": ("main_latentcls", "predict phenotypes from a run's latents (linear and MLP heads)"),
    "restyle": ("main_restyle", "a ReStyle encoder against a frozen main_stylegan generator"),
    "stylegan": ("main_stylegan", "train a StyleGAN2 generator and discriminator on 2D images"),
    "rotinv": ("main_rotinv", "a rotation-invariant autoencoder"),
    "pointcloud": ("main_pointcloud", "a point-cloud autoencoder (DGCNN or SO(3)-invariant)"),
    "erm": ("main_erm", "supervised ResNet classifier (ERM) of a phenotype; latents + OOD report"),
    "iid": ("main_iid", "the IID predictor, evaluated out of distribution"),
    "benchmark": ("main_benchmark", "compare representations: score several runs' latents against labels"),
    "export-hf": ("export_hf", "export a training run as a Hugging Face model repository"),
    "export-gwas": ("export_gwas", "GWAS-ready phenotypes from latents"),
    "merge-shards": ("merge_shards", "merge a sharded inference (--shard i/n) into one Output folder"),
}


def run(module: str, argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run ``Executors/<module>.py`` as its ``__main__`` block does: ``run_cli(main)``; returns the exit code."""
    from Engineering.errors import run_cli

    tool = importlib.import_module(f"{__name__}.{module}")
    if prog:
        sys.argv[0] = prog  # argparse's usage line names the command that was typed
    return run_cli(tool.main, argv)


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: imlatent COMMAND [flags]   (imlatent COMMAND --help for its flags)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}   [Executors/{module}.py]" for name, (module, text) in COMMANDS.items()]
    return "\n".join(lines)


def cli(argv: Sequence[str] | None = None) -> int:
    """``imlatent COMMAND [flags]``: the console command with one subcommand per tool."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    return run(COMMANDS[name][0], rest, prog=f"imlatent {name}")


def cli_embed() -> int:
    """``imlatent-embed``: ``python Executors/embed.py`` from any folder."""
    return run("embed", prog="imlatent-embed")


def cli_app() -> int:
    """``imlatent-app``: ``python Executors/app.py`` from any folder."""
    return run("app", prog="imlatent-app")
