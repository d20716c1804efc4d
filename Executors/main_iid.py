"""Train and evaluate the IID predictor (seed 000) out of distribution: a ResNet classifier of --targets that
reads a main_restyle encoder's noise maps (--noise) and style codes (--style), with held-out groups of
--ood_column for OOD validation and test.

python Executors/main_iid.py --encoder RESTYLE_RUN --targets LABEL_COL --ood_column site --ood_test_groups siteC
    [--ood_val_groups siteB] [--noise] [--style] [--loss_coef 0.5]
"""

from Engineering.Engines import cli
from Engineering.errors import run_cli


def main(argv) -> dict:
    return cli.main(argv, task="iid")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
