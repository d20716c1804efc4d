"""Supervised ResNet classifier (ERM) of a phenotype with Batch Effects Normalization; latents + OOD report.

python Executors/main_erm.py [--erm_label ef_class] [--batch_groups site --bn_eval_mode batch] [flags]
With no arguments: a small ResNet-18 classifying ef_class on the bundled demo cohort, on CPU.
"""

from Engineering.Engines import cli
from Engineering.errors import run_cli


def main(argv) -> dict:
    return cli.main(argv, task="erm")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
