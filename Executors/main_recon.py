"""Train, validate and test any pythae autoencoder/VAE on 2D/3D images; write its latents.

python Executors/main_recon.py --pythae_model beta_vae [flags] [--model§pythae§models§beta_vae§beta 4]
With no arguments: a small VAE on the bundled demo cohort, on CPU.
"""
from pathlib import Path

from Engineering.Engines.MainEngine import run
from Engineering.Engines.tasks import recon_task
from Engineering.errors import run_cli

CONFIGS = Path(__file__).resolve().parents[1] / "Configs"


def main(argv) -> None:
    run(argv, recon_task(CONFIGS))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
