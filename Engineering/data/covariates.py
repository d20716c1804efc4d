"""Phenotype and confounder columns as model inputs (the ancestor's ``json§DS_phenotypes`` and ``json§DS_confounders``).

The models that learn phenotypes from the latent or keep confounders out of it (ultra_vae, ultra_factor_vae,
ultra_cevae, ivaes) read per-sample rows of these tables. The dataNpath keys, as the ancestor writes them:

- ``DS_phenotypes``: ``{"path": TABLE, "cols": [...]}`` (``columns`` is accepted too). Numeric columns are
  continuous; text columns and those listed in ``cat_cols`` are categorical (classes).
- ``DS_confounders``: ``{"path": TABLE, "cols": [...], "bincat_cols": [...], "mulcat_cols": [...]}``: continuous,
  binary and multi-class confounders.

Everything is fitted on the training split only (its patients by the fold file; all patients without one): the
mean and standard deviation of each continuous column, the two values of each binary column, the classes of each
categorical one. Values of other splits are transformed with those; a class never seen in training is "missing".
The batch entries and the model fields they give are specified in
``Engineering.Engines.WarpDrives.pythaeDrive.network.custom_models.aux`` (mirrored here by name, the data layer does not
import the engines).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from Engineering.config import Config
from Engineering.data.folds import is_whole_file, read_fold
from Engineering.data.labels import read_label_table
from Engineering.errors import UserError

# batch keys (custom_models/aux.py)
PHENOTYPES, PHENOTYPE_CLASSES = "phenotypes", "phenotype_classes"
CONF_CONT, CONF_BIN, CONF_MULTI, AUX_U = "confounders_continuous", "confounders_binary", "confounders_multicat", "aux_u"


def _cols(spec: dict, *names: str) -> list[str]:
    for name in names:
        if spec.get(name):
            value = spec[name]
            return [str(value)] if isinstance(value, str) else [str(c) for c in value]
    return []


def _spec(cfg: Config, key: str) -> dict | None:
    spec = getattr(cfg.paths, key, None)
    if not spec:
        return None
    spec = {"path": spec} if isinstance(spec, str) else dict(spec)
    if not spec.get("path"):
        raise UserError(f"json§{key} has no 'path'")
    return spec


def _same_cohort(cfg: Config, key: str, ref) -> None:
    """A bundled demo cohort's table (``@demo/phenotypes.tsv``, what the demo dataNpath JSONs name) read for other
    data would give other patients' values to the IDs both share, without a word: refused."""
    from Engineering.data.demo import split_demo_ref

    table, data = split_demo_ref(str(ref)), split_demo_ref(str(cfg.paths.datadir))
    if table and (data is None or data[0] != table[0]):
        raise UserError(
            f"json§{key}§path {ref} is the bundled {table[0]} cohort's table, but json§datadir is "
            f"{cfg.paths.datadir}: give the table of that cohort (--json§{key}§path PATH)"
        )


def train_patients(cfg: Config) -> set[str] | None:
    """The patients of the training split by the fold file (None: no fold file, every patient trains)."""
    from Engineering.data.datamodule import resolve_data_path

    ref = cfg.paths.foldCSV
    if is_whole_file(ref):
        return None
    return set(read_fold(resolve_data_path(cfg, ref), cfg.run.foldID).train or ())


@dataclass
class _Continuous:
    name: str
    mean: float
    std: float

    def encode(self, values: pd.Series) -> np.ndarray:
        return ((pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64) - self.mean) / self.std).astype(
            np.float32
        )

    def decode(self, z: np.ndarray) -> np.ndarray:
        return z * self.std + self.mean


@dataclass
class _Classes:
    name: str
    classes: list[str]

    def codes(self, values: pd.Series) -> np.ndarray:
        index = {c: k for k, c in enumerate(self.classes)}
        return np.array([index.get(v, -1) if isinstance(v, str) else -1 for v in values], dtype=np.int64)


def _as_text(values: pd.Series) -> pd.Series:
    """Category labels as strings; missing stays NaN (3 and 3.0 are the same class)."""

    def one(v):
        if pd.isna(v):
            return np.nan
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        return str(v).strip()

    return values.map(one)


@dataclass
class Covariates:
    """The fitted encoders of the phenotype and confounder columns (see the module docstring)."""

    pheno_cont: list[_Continuous] = field(default_factory=list)
    pheno_cat: list[_Classes] = field(default_factory=list)
    conf_cont: list[_Continuous] = field(default_factory=list)
    conf_bin: list[_Classes] = field(default_factory=list)
    conf_multi: list[_Classes] = field(default_factory=list)
    _rows: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)  # table name -> rows by patient

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, cfg, phenotypes: bool, confounders: bool, why: str) -> Covariates:
        """Read and fit the tables a model needs (``why`` names it in messages)."""
        from Engineering.data.datamodule import resolve_data_path

        out = cls()
        train = train_patients(cfg)
        if phenotypes:
            spec = _spec(cfg, "DS_phenotypes")
            cols = _cols(spec or {}, "cols", "columns")
            if not cols:
                raise UserError(
                    f'{why} learns phenotypes: set json§DS_phenotypes to {{"path": TABLE, "cols": [COLUMNS]}}'
                )
            _same_cohort(cfg, "DS_phenotypes", spec["path"])
            table = out._table("DS_phenotypes", resolve_data_path(cfg, spec["path"]), cols, train)
            forced = set(_cols(spec, "cat_cols"))
            unknown = forced - set(cols)
            if unknown:
                raise UserError(f"json§DS_phenotypes§cat_cols {sorted(unknown)} are not among its cols {cols}")
            for col in cols:
                numeric = pd.to_numeric(table[col].dropna(), errors="coerce").notna().all()
                if numeric and col not in forced:
                    out.pheno_cont.append(_fit_continuous(table, col, "json§DS_phenotypes"))
                else:
                    out.pheno_cat.append(_fit_classes(table, col, "json§DS_phenotypes", binary=False))
        if confounders:
            spec = _spec(cfg, "DS_confounders")
            cont, binary, multi = (
                _cols(spec or {}, "cols"),
                _cols(spec or {}, "bincat_cols"),
                _cols(spec or {}, "mulcat_cols"),
            )
            if not (cont or binary or multi):
                raise UserError(
                    f'{why} needs confounders: set json§DS_confounders to {{"path": TABLE, "cols": '
                    '[...], "bincat_cols": [...], "mulcat_cols": [...]}'
                )
            _same_cohort(cfg, "DS_confounders", spec["path"])
            table = out._table("DS_confounders", resolve_data_path(cfg, spec["path"]), cont + binary + multi, train)
            out.conf_cont = [_fit_continuous(table, c, "json§DS_confounders§cols") for c in cont]
            out.conf_bin = [_fit_classes(table, c, "json§DS_confounders§bincat_cols", binary=True) for c in binary]
            out.conf_multi = [_fit_classes(table, c, "json§DS_confounders§mulcat_cols", binary=False) for c in multi]
        return out

    # ------------------------------------------------------------------ the fitted state, kept with the model
    def to_dict(self) -> dict:
        """What was fitted (names, means, standard deviations, classes): recorded in the run's config, so that a
        checkpoint or an export decodes its predictions with its training split's statistics anywhere."""
        return {
            "pheno_cont": [[c.name, c.mean, c.std] for c in self.pheno_cont],
            "pheno_cat": [[c.name, c.classes] for c in self.pheno_cat],
            "conf_cont": [[c.name, c.mean, c.std] for c in self.conf_cont],
            "conf_bin": [[c.name, c.classes] for c in self.conf_bin],
            "conf_multi": [[c.name, c.classes] for c in self.conf_multi],
        }

    @classmethod
    def from_dict(cls, d: dict) -> Covariates:
        try:
            return cls(
                pheno_cont=[_Continuous(n, float(m), float(s)) for n, m, s in d.get("pheno_cont", [])],
                pheno_cat=[_Classes(n, list(c)) for n, c in d.get("pheno_cat", [])],
                conf_cont=[_Continuous(n, float(m), float(s)) for n, m, s in d.get("conf_cont", [])],
                conf_bin=[_Classes(n, list(c)) for n, c in d.get("conf_bin", [])],
                conf_multi=[_Classes(n, list(c)) for n, c in d.get("conf_multi", [])],
            )
        except (TypeError, ValueError) as exc:
            raise UserError(f"model§pythae§fitted_tables is damaged ({exc}); it is written by training") from None

    def load_rows(self, cfg) -> None:
        """Read the tables' rows (for the batches) without fitting anything again."""
        from Engineering.data.datamodule import resolve_data_path

        for key, cols in (
            ("DS_phenotypes", [c.name for c in self.pheno_cont + self.pheno_cat]),
            ("DS_confounders", [c.name for c in self.conf_cont + self.conf_bin + self.conf_multi]),
        ):
            if cols and key not in self._rows:
                spec = _spec(cfg, key)
                if spec is None:
                    raise UserError(f"json§{key} is not set, but this model was trained with its columns {cols}")
                _same_cohort(cfg, key, spec["path"])
                self._table(key, resolve_data_path(cfg, spec["path"]), cols, None)

    def _table(self, key: str, path: Path, cols: list[str], train: set[str] | None) -> pd.DataFrame:
        """The rows of the training patients (for fitting); keeps the whole table for encoding."""
        table = read_label_table(path)
        missing = [c for c in cols if c not in table.columns]
        if missing:
            raise UserError(
                f"json§{key}: column(s) {', '.join(missing)} not in {path} "
                f"(columns: {', '.join(c for c in table.columns if c != 'patientID')})"
            )
        rows = table.drop_duplicates("patientID").set_index("patientID")[cols]
        self._rows[key] = rows
        fit_rows = rows if train is None else rows[rows.index.isin(train)]
        if fit_rows.empty:
            raise UserError(f"json§{key}: no row of {path} belongs to a training patient")
        return fit_rows

    # ------------------------------------------------------------------ model fields
    def data_params(self) -> dict:
        """The model config fields the data fix (custom_models/aux.py)."""
        return {
            "n_phenotypes": len(self.pheno_cont),
            "phenotype_n_classes": [len(c.classes) for c in self.pheno_cat],
            "n_confounders_cont": len(self.conf_cont),
            "n_confounders_bincat": len(self.conf_bin),
            "confounder_n_classes": [len(c.classes) for c in self.conf_multi],
            "n_aux": self.n_aux,
        }

    @property
    def n_aux(self) -> int:
        return len(self.conf_cont) + len(self.conf_bin) + sum(len(c.classes) for c in self.conf_multi)

    # ------------------------------------------------------------------ encoding
    def encode(self, patients: list[str]) -> dict[str, np.ndarray]:
        """Per patient (one row each, in order), every batch entry the fitted columns give."""
        out: dict[str, np.ndarray] = {}
        n = len(patients)
        if self.pheno_cont or self.pheno_cat:
            rows = self._rows["DS_phenotypes"].reindex(patients)
            out[PHENOTYPES] = _stack([c.encode(rows[c.name]) for c in self.pheno_cont], n, np.float32)
            out[PHENOTYPE_CLASSES] = _stack([c.codes(_as_text(rows[c.name])) for c in self.pheno_cat], n, np.int64)
        if self.conf_cont or self.conf_bin or self.conf_multi:
            rows = self._rows["DS_confounders"].reindex(patients)
            cont = _stack([c.encode(rows[c.name]) for c in self.conf_cont], n, np.float32)
            binary = _stack([c.codes(_as_text(rows[c.name])).astype(np.float32) for c in self.conf_bin], n, np.float32)
            binary[binary < 0] = np.nan
            multi = _stack([c.codes(_as_text(rows[c.name])) for c in self.conf_multi], n, np.int64)
            out[CONF_CONT], out[CONF_BIN], out[CONF_MULTI] = cont, binary, multi
            onehots = [
                np.eye(len(c.classes), dtype=np.float32)[np.where(k < 0, 0, k)] * (k >= 0)[:, None]
                for c, k in zip(self.conf_multi, multi.T)
            ]
            out[AUX_U] = np.nan_to_num(np.concatenate([cont, binary, *onehots], axis=1))
        return out

    def prediction_columns(self) -> tuple[list[str], list[str]]:
        """Column names of pheno_pred.h5 and of conf_pred.h5 (what ``decode_*`` return, in order)."""
        pheno = [c.name for c in self.pheno_cont] + [c.name for c in self.pheno_cat]
        conf = [c.name for c in self.conf_cont] + [c.name for c in self.conf_bin] + [c.name for c in self.conf_multi]
        return pheno, conf

    def decode_phenotypes(self, cont: np.ndarray, class_logits: list[np.ndarray]) -> np.ndarray:
        """Predictions in the table's units: continuous de-standardised, categorical as the predicted class index
        (into the sorted training classes, recorded in the file's attributes)."""
        cols = [c.decode(cont[:, j]) for j, c in enumerate(self.pheno_cont)]
        cols += [logits.argmax(1).astype(np.float64) for logits in class_logits]
        return np.stack(cols, 1).astype(np.float32) if cols else np.zeros((len(cont), 0), np.float32)

    def decode_confounders(
        self, cont: np.ndarray, bin_logits: np.ndarray, class_logits: list[np.ndarray]
    ) -> np.ndarray:
        cols = [c.decode(cont[:, j]) for j, c in enumerate(self.conf_cont)]
        cols += [(bin_logits[:, j] > 0).astype(np.float64) for j in range(len(self.conf_bin))]
        cols += [logits.argmax(1).astype(np.float64) for logits in class_logits]
        return np.stack(cols, 1).astype(np.float32)

    def class_names(self) -> dict[str, list[str]]:
        return {c.name: c.classes for c in self.pheno_cat + self.conf_bin + self.conf_multi}


def _stack(cols: list[np.ndarray], n: int, dtype) -> np.ndarray:
    return np.stack(cols, 1).astype(dtype) if cols else np.zeros((n, 0), dtype)


def _fit_continuous(table: pd.DataFrame, col: str, where: str) -> _Continuous:
    values = pd.to_numeric(table[col], errors="coerce")
    bad = table[col].notna() & values.isna()
    if bad.any():
        raise UserError(f"{where}: column {col!r} is continuous but holds {table[col][bad].iloc[0]!r}")
    values = values.dropna()
    if len(values) < 2 or not values.std() > 0:
        raise UserError(f"{where}: column {col!r} is constant (or has < 2 values) in the training split")
    return _Continuous(col, float(values.mean()), float(values.std()))


def _fit_classes(table: pd.DataFrame, col: str, where: str, binary: bool) -> _Classes:
    classes = sorted(_as_text(table[col]).dropna().unique())
    if len(classes) < 2:
        raise UserError(f"{where}: column {col!r} has {len(classes)} class(es) in the training split; it needs 2")
    if binary and len(classes) > 2:
        raise UserError(
            f"{where}: column {col!r} has {len(classes)} classes in the training split, not 2 "
            f"({', '.join(classes[:5])}); list it in mulcat_cols"
        )
    return _Classes(col, classes)
