"""Train, validate and test any pythae autoencoder/VAE on 2D/3D images; write its latents.

python Executors/main_recon.py --pythae_model beta_vae [flags] [--model§pythae§models§beta_vae§beta 4]
With no arguments: a small VAE on the bundled demo cohort, on CPU.
"""

from Engineering.Engines import cli
from Engineering.errors import run_cli


def main(argv) -> dict:
    return cli.main(argv, task="recon")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
