"""Train, validate and test a 2D/3D Diffusion Autoencoder; write its latents.

python Executors/main_diffAE.py [flags] [--section§key VALUE ...] [--json§key VALUE ...]
With no arguments: a small 2D DiffAE on the bundled demo cohort, on CPU.
"""

from Engineering.Engines import cli
from Engineering.errors import run_cli


def main(argv) -> dict:
    return cli.main(argv, task="diffAE")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
