"""Run any registered task: train, validate, test, write latents.

python Executors/main.py --task NAME [--plugins MOD[,MOD]] [flags] [--section§key VALUE ...] [--json§key VALUE ...]
Built-in tasks: diffAE, recon, latentcls (main_<task>.py are aliases). Plug-in modules register their own
tasks (see docs/how-to/plugins.md); $IMLATENT_PLUGINS lists modules to import as well.
"""

from Engineering.Engines.cli import main
from Engineering.errors import run_cli

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
