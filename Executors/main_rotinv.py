"""Train a rotation-invariant autoencoder (seed 003): an invariant code, an equivariant pose, on 2D images (C4) or
3D volumes (--is3D, the octahedral group).

python Executors/main_rotinv.py [flags] [--model§RotInv§width 4]
With no arguments: the bundled synthetic 3D cell cohort (@cells), on CPU.
"""

from Engineering.Engines import cli
from Engineering.errors import run_cli


def main(argv) -> dict:
    return cli.main(argv, task="rotinv")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
