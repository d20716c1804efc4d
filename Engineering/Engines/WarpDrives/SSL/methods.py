"""The SSL task's method table: ``--method NAME`` picks an engine, and a method's own keys and flags live with it.

SimCLR (Chen et al., ICML 2020) and MinCLR (Lin & Lu, MLCB 2022) are the contrastive engine of ``engine.py`` with
different views; IP-IRM (Wang et al., NeurIPS 2021) is ``ipirm.py``'s engine, with its ``model§IPIRM`` keys and its
flags. A new method is one entry here and its module; the task's keys, flags and engine factory come from the
table.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import create_model

from Engineering.config import Config
from Engineering.config.flags import Flag
from Engineering.config.schema import Keys

from .engine import SSL_FLAGS, AugmentKeys, SSLEngine, ssl_keys
from .ipirm import IPIRM_FLAGS, IPIRMEngine, IPIRMKeys


@dataclass(frozen=True)
class Method:
    engine: type[SSLEngine]
    key_help: str  # model§SSL§method's description of it
    flag_help: str  # --method's
    section: tuple[str, type[Keys]] | None = None  # its own model§<name> keys
    flags: tuple[Flag, ...] = ()


METHODS: dict[str, Method] = {
    "simclr": Method(SSLEngine, "positives are augmentations of the image", "positives: augmentations of the image"),
    "minclr": Method(SSLEngine, "different grid cells of it", "different cells of the same image"),
    "ipirm": Method(
        IPIRMEngine,
        "SimCLR's views with IP-IRM's partitions (model§IPIRM)",
        "SimCLR views, IRM inside discovered partitions",
        ("IPIRM", IPIRMKeys),
        IPIRM_FLAGS,
    ),
}

_names = list(METHODS)
METHOD_FLAG = Flag(
    "method",
    ("model", "SSL", "method"),
    "str",
    _names[0],
    ", ".join(f"{n} ({METHODS[n].flag_help})" for n in _names[:-1])
    + f" or {_names[-1]} ({METHODS[_names[-1]].flag_help}); --ssl_method is its former name.",
    "Model",
    tuple(_names),
    aliases=("ssl_method",),
)

SSLModelKeys = create_model(
    "SSLModelKeys",
    __base__=Keys,
    SSL=(ssl_keys(METHODS), ssl_keys(METHODS)()),
    augment=(AugmentKeys, AugmentKeys()),
    **{m.section[0]: (m.section[1], m.section[1]()) for m in METHODS.values() if m.section},
)
TASK_FLAGS = (METHOD_FLAG, *SSL_FLAGS, *(f for m in METHODS.values() for f in m.flags))


def ssl_engine(cfg: Config, in_channels: int) -> SSLEngine:
    """The engine of ``model§SSL§method``, from the table."""
    return METHODS[cfg.model.SSL.method].engine(cfg, in_channels)
