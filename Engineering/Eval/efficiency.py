"""Efficiency of a model (seed 003's efficiency family): its parameters, inference time per sample and peak
memory of inference, measured on the current device.

Time: the median over ``repeats`` timed passes of one batch (after a warm-up pass), divided by the batch size.
Memory: on CUDA the peak allocated by PyTorch during one pass, minus what was allocated before; on Linux CPUs
the rise of the process's peak resident set size during one pass (the peak is reset first through
/proc/self/clear_refs), which includes what the allocator keeps for later; elsewhere not measured (skipped with
the reason). Energy: when ``codecarbon`` is installed (``pip install codecarbon``; its offline tracker, nothing
is sent), the energy of encoding passes repeated for about 2 seconds, per sample, as codecarbon estimates it for
this process (RAPL counters where readable, else its CPU power model, plus RAM); CO2 from that energy and the
grid intensity of a given country (``co2_country``, ISO 3166 alpha-3). Lower is better for all of them. No
bootstrap: these are measurements of one model, not statistics over samples; the spread of the timed passes is
the reported interval for the time.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch

from Engineering.Eval.result import LOWER, MetricResult

METRICS = {
    "parameters_M": (LOWER, "Trainable and frozen parameters of the model, in millions. Lower is better."),
    "inference_ms_per_sample": (
        LOWER,
        "Median time of one encoding pass per sample (ms; interval: the fastest "
        "and slowest timed passes). Lower is better.",
    ),
    "inference_peak_MiB": (LOWER, "Peak memory added by one encoding pass (MiB). Lower is better."),
    "inference_mJ_per_sample": (
        LOWER,
        "Energy of encoding per sample (millijoules, codecarbon's estimate). Lower is better.",
    ),
    "inference_CO2_ug_per_sample": (
        LOWER,
        "CO2-equivalent of that energy per sample (micrograms; the grid of --co2_country). Lower is better.",
    ),
}
ENERGY_SECONDS = 2.0


def _peak_rss_kib() -> int | None:
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def efficiency(
    module: torch.nn.Module, encode, batch: torch.Tensor, repeats: int = 5, co2_country: str | None = None
) -> dict[str, MetricResult]:
    """``encode(batch)`` is timed and measured; ``module`` is counted."""
    n = len(batch)
    params = sum(p.numel() for p in module.parameters()) / 1e6
    out = {"parameters_M": MetricResult(params, params, params, LOWER, n=1)}
    cuda = batch.is_cuda
    with torch.no_grad():
        encode(batch)  # warm-up (lazy initialisation, allocator caches)
        times = []
        for _ in range(repeats):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            encode(batch)
            if cuda:
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) / n * 1000)
        med = statistics.median(times)
        out["inference_ms_per_sample"] = MetricResult(
            med, min(times), max(times), LOWER, n=repeats, note=f"batch {n}, {repeats} timed passes"
        )
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            encode(batch)
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
            out["inference_peak_MiB"] = MetricResult(peak, peak, peak, LOWER, n=1, note="CUDA, allocated by torch")
        elif _reset_peak_rss() and (before := _peak_rss_kib()) is not None:
            encode(batch)
            peak = max(0, _peak_rss_kib() - before) / 1024
            out["inference_peak_MiB"] = MetricResult(
                peak, peak, peak, LOWER, n=1, note="CPU: rise of the process's peak resident set"
            )
        else:
            out["inference_peak_MiB"] = MetricResult.skip(LOWER, "peak memory is measured on CUDA or on Linux only")
        out.update(energy(encode, batch, co2_country))
    return out


def energy(encode, batch: torch.Tensor, co2_country: str | None) -> dict[str, MetricResult]:
    """Energy (and CO2 with ``co2_country``) per sample of encoding passes repeated for ENERGY_SECONDS."""
    try:
        import logging

        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        from codecarbon import OfflineEmissionsTracker
    except ImportError:
        why = "codecarbon is not installed (pip install codecarbon)"
        return {
            "inference_mJ_per_sample": MetricResult.skip(LOWER, why),
            "inference_CO2_ug_per_sample": MetricResult.skip(LOWER, why),
        }
    tracker = OfflineEmissionsTracker(
        country_iso_code=co2_country or "USA",
        log_level="error",
        save_to_file=False,
        measure_power_secs=1,
        tracking_mode="process",
    )
    tracker.start()
    t0, samples = time.perf_counter(), 0
    try:
        while time.perf_counter() - t0 < ENERGY_SECONDS:
            encode(batch)
            samples += len(batch)
    finally:
        kg = tracker.stop()
    data = tracker.final_emissions_data
    mj = float(data.energy_consumed) * 3.6e9 / samples  # kWh -> mJ
    note = f"codecarbon {data.cpu_model or 'CPU'}: {samples} samples in {time.perf_counter() - t0:.1f} s"
    out = {"inference_mJ_per_sample": MetricResult(mj, mj, mj, LOWER, n=samples, note=note)}
    if co2_country:
        ug = float(kg) * 1e9 / samples
        out["inference_CO2_ug_per_sample"] = MetricResult(
            ug, ug, ug, LOWER, n=samples, note=f"{note}; grid of {co2_country}"
        )
    else:
        out["inference_CO2_ug_per_sample"] = MetricResult.skip(
            LOWER, "give --co2_country ISO3 (the grid's carbon intensity) for CO2"
        )
    return out


def as_tensor(images: np.ndarray, device) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(images), dtype=torch.float32, device=device)
