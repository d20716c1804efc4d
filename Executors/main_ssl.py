"""Self-supervised representations (SimCLR, MinCLR, IP-IRM) with Batch Effects Normalization; write their latents.

python Executors/main_ssl.py [--method simclr|minclr|ipirm] [--batch_groups site --bn_eval_mode batch] [flags]
With no arguments: a small SimCLR ResNet-18 on the bundled demo cohort, on CPU.
"""

from Engineering.Engines import cli
from Engineering.errors import run_cli


def main(argv) -> dict:
    return cli.main(argv, task="ssl")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
