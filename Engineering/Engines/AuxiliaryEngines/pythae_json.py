"""--pythae_config: the JSON file of pythae model parameters, merged into the resolved config."""
from __future__ import annotations

from Engineering.config.loader import read_mapping


def merge_pythae_json(cfg: dict) -> None:
    """--pythae_config FILE ranks as the explicit flag it is: its parameters are merged into
    model§pythae§models§<model> above the YAML's and below path overrides (called by the config loader)."""
    pcfg = cfg.get("model", {}).get("pythae") or {}
    if not pcfg.get("config_json"):
        return
    params = read_mapping(pcfg["config_json"], "--pythae_config file")
    models = pcfg.setdefault("models", {}) or {}
    pcfg["models"] = models
    name = pcfg.get("model", "vae")
    models[name] = {**(models.get(name) or {}), **params}
