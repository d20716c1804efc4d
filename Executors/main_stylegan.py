"""Train a StyleGAN2 generator and discriminator on 2D HDF5 images of any channel count (stage 1 of seed 000's
IID pipeline); ``main_restyle --generator RUN`` inverts it.

python Executors/main_stylegan.py [flags] [--model§StyleGAN2§r1_gamma 5]
With no arguments: a small generator on the bundled demo cohort, on CPU.
"""

from Engineering.Engines import cli
from Engineering.errors import run_cli


def main(argv) -> dict:
    return cli.main(argv, task="stylegan")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
