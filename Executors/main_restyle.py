"""Train a ReStyle encoder (with the noise head of seed 000) against a frozen main_stylegan generator; the test
writes the W+ style codes as latents (and their mean over layers) and the reconstructions.

python Executors/main_restyle.py --generator RUN_DIR_OR_CKPT [flags]
"""

from Engineering.Engines import cli
from Engineering.errors import run_cli


def main(argv) -> dict:
    return cli.main(argv, task="restyle")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
