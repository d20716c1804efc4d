"""A real association tool finds a planted locus through our latents (issue 38): genotypes -> phantom images whose
cavity radius follows the causal SNP -> a VAE's latents -> export_gwas (site as covariate) -> plink2 --glm.
Runs in ``make test-gwas`` (part of ``make ci``), which installs Debian's plink2 first; a few minutes on 2 cores."""

from __future__ import annotations

import importlib.util
import shutil

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.gwas


def _bench():
    spec = importlib.util.spec_from_file_location("gwas_planted", REPO / "benchmarks" / "gwas_planted.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    if shutil.which("plink2") is None:
        pytest.fail("plink2 is not installed: run `make test-gwas` (it installs Debian's plink2)")
    return _bench()


def test_the_planted_locus_is_the_top_hit_and_the_null_snps_are_calibrated(bench, tmp_path):
    r = bench.planted(tmp_path / "planted", n=1000, m=3000, effect=0.8)
    print(r)
    assert r["causal_is_top_hit"] and r["p_causal"] < r["bonferroni"], r
    assert 0.9 <= r["lambda_gc"] <= 1.15, r
    assert r["min_p_null_snps"] > r["bonferroni"], r  # no null SNP passes, the site-driven one included


def test_without_a_causal_effect_nothing_passes(bench, tmp_path):
    r = bench.planted(tmp_path / "null", n=1000, m=3000, effect=0.0)
    print(r)
    assert r["min_p_any"] > r["bonferroni"], r
