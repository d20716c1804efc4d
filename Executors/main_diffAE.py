"""Train, validate and test a 2D/3D Diffusion Autoencoder; write its latents.

python Executors/main_diffAE.py [flags] [--section§key VALUE ...] [--json§key VALUE ...]
With no arguments: a small 2D DiffAE on the bundled demo cohort, on CPU.
"""
from pathlib import Path

from Engineering.Engines.MainEngine import run
from Engineering.Engines.tasks import diffae_task
from Engineering.errors import run_cli

CONFIGS = Path(__file__).resolve().parents[1] / "Configs"


def main(argv) -> None:
    run(argv, diffae_task(CONFIGS))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
