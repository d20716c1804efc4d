"""The contract between the engine (which reads the tables) and the custom models (which read the batch).

Batch entries (all optional; a model reads those named in its ``ModelSpec.aux_inputs``), one row per sample:

- ``phenotypes``: float (B, P), the continuous columns of ``json§DS_phenotypes``, standardised with the mean and
  standard deviation of the training split; NaN where a value is missing.
- ``phenotype_classes``: long (B, Q), the categorical phenotype columns as class indices (classes seen in the
  training split, sorted); -1 where missing or unseen.
- ``confounders_continuous``: float (B, Cc), ``json§DS_confounders§cols``, standardised as above; NaN if missing.
- ``confounders_binary``: float (B, Cb), ``bincat_cols`` as 0/1 (the first of the two sorted training values is
  0); NaN where missing.
- ``confounders_multicat``: long (B, Cm), ``mulcat_cols`` as class indices; -1 where missing or unseen.
- ``aux_u``: float (B, U), the auxiliary variable of the identifiable VAEs: the confounders concatenated
  (continuous, binary, one-hot of each multicat column), missing values as 0.

Config fields the engine sets from the data (``ModelSpec.data_params`` lists those a model has):
``n_phenotypes`` (P), ``phenotype_n_classes`` (Q class counts), ``n_confounders_cont`` (Cc),
``n_confounders_bincat`` (Cb), ``confounder_n_classes`` (Cm class counts), ``n_aux`` (U).
"""

from __future__ import annotations

PHENOTYPES = "phenotypes"
PHENOTYPE_CLASSES = "phenotype_classes"
CONF_CONT = "confounders_continuous"
CONF_BIN = "confounders_binary"
CONF_MULTI = "confounders_multicat"
AUX_U = "aux_u"

ALL_KEYS = (PHENOTYPES, PHENOTYPE_CLASSES, CONF_CONT, CONF_BIN, CONF_MULTI, AUX_U)
DATA_PARAMS = (
    "n_phenotypes",
    "phenotype_n_classes",
    "n_confounders_cont",
    "n_confounders_bincat",
    "confounder_n_classes",
    "n_aux",
)
# what the phenotype/confounder heads (heads.py) read: the tables column by column, not the iVAEs' u
HEAD_KEYS = tuple(k for k in ALL_KEYS if k != AUX_U)
HEAD_PARAMS = tuple(p for p in DATA_PARAMS if p != "n_aux")


def tables_needed(spec, params: dict) -> tuple[bool, bool]:
    """(phenotypes, confounders): which tables a model reads, from its resolved parameters (``params`` over
    the config class's defaults)."""
    if not spec.data_params:
        return False, False
    defaults = {name: f.default for name, f in getattr(spec.config_cls, "__dataclass_fields__", {}).items()}
    merged = {**defaults, **params}
    phenotypes = bool(merged.get("learn_phenotypes", False))
    confounders = int(merged.get("anti_confounders_strategy", 0) or 0) != 0 or AUX_U in spec.aux_inputs
    return phenotypes, confounders
