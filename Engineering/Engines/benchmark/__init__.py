"""The benchmark of representations behind ``Executors/main_benchmark.py`` (which parses its flags).

- ``run.benchmark(args)``: inputs checked, the label-based scores (Eval/suite.py), NSC, the model-dependent
  families, then metrics.json, metrics.csv and report.html;
- ``inputs``: run names, label-file names, pixel axes and vectors, NSC metadata, the report's summary;
- ``model_metrics``: the --run families, one function each, asking the saved run's engine what it can do through
  the protocols of Engines/capabilities.py.

It lives at the Engines level because ``--run`` loads saved runs (Engines/saved_runs.py); Eval never imports it.
"""

from __future__ import annotations

from Engineering.Engines.benchmark.model_metrics import MODEL_METRICS, NotApplicable, model_metrics
from Engineering.Engines.benchmark.run import benchmark

__all__ = ["MODEL_METRICS", "NotApplicable", "benchmark", "model_metrics"]
