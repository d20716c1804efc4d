"""--pythae_config: the JSON file of pythae model parameters, merged into the resolved config.

Where the file is found: the path as given (absolute, or relative to the working directory); else the
configurations shipped with the pythae drive (``WarpDrives/pythaeDrive/configs/``), so the ancestor's
``originals/celeba/<model>_config.json`` (pythae's published CelebA parameters) and its full form
``Engineering/Engines/WarpDrives/pythaeDrive/configs/originals/celeba/<model>_config.json`` work from anywhere.

What is merged: the file ranks as the explicit flag it is -- its parameters go to model§pythae§models§<model>,
above the YAML's and below path overrides. The drive owns three of pythae's fields, so they are taken out:

- ``input_dim`` always comes from the data (dropped);
- ``latent_dim`` is used when model§latent_dim is -1 or null (the ancestor's "take the config file's value");
  any other model§latent_dim wins. Without a file, -1/null means the task's default latent_dim;
- ``reconstruction_loss``: 'mse' is dropped (pythae writes its default into every config it saves, so it is no
  choice: the YAML's loss stays); another value sets model§pythae§reconstruction_loss, as the flag would.
"""

from __future__ import annotations

from pathlib import Path

from Engineering.config.loader import read_mapping
from Engineering.errors import UserError

SHIPPED = Path(__file__).resolve().parent / "configs"
_ANCESTOR_PREFIX = "Engineering/Engines/WarpDrives/pythaeDrive/configs/"


def resolve_pythae_json(name: str) -> Path:
    """The file that ``--pythae_config NAME`` means (see the module docstring); one line when there is none."""
    given = Path(name).expanduser()
    if given.is_file():
        return given
    rel = str(name).replace("\\", "/")
    rel = rel[len(_ANCESTOR_PREFIX) :] if rel.startswith(_ANCESTOR_PREFIX) else rel
    shipped = SHIPPED / rel
    if not given.is_absolute() and ".." not in Path(rel).parts and shipped.is_file():
        return shipped
    raise UserError(
        f"--pythae_config file not found: {name} (neither a file nor a shipped configuration such as "
        "originals/celeba/vae_config.json)"
    )


def _default_latent_dim() -> int:
    """main_recon's default latent_dim (this is its flag layer)."""
    from Engineering.config.flags import FLAGS
    from Engineering.Engines import registry

    default = next(f.default for f in FLAGS if f.name == "latent_dim")
    return int(registry.get("recon").defaults.get("latent_dim", default))


def merge_pythae_json(cfg: dict) -> None:
    """Merge --pythae_config FILE into ``cfg`` (called by the config loader after the explicit flags)."""
    model = cfg.setdefault("model", {})
    pcfg = model.get("pythae") or {}
    params = {}
    if pcfg.get("config_json"):
        params = dict(read_mapping(resolve_pythae_json(pcfg["config_json"]), "--pythae_config file"))
    params.pop("input_dim", None)
    latent = params.pop("latent_dim", None)
    recon = params.pop("reconstruction_loss", None)
    if model.get("latent_dim") in (-1, None):
        model["latent_dim"] = latent if latent not in (None, -1) else _default_latent_dim()
    if not pcfg.get("config_json"):
        return
    if recon not in (None, "mse"):
        pcfg["reconstruction_loss"] = recon
    models = pcfg.setdefault("models", {}) or {}
    pcfg["models"] = models
    name = pcfg.get("model", "vae")  # the key the engine reads (models§<--pythae_model as given>)
    models[name] = {**(models.get(name) or {}), **params}
