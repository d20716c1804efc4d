"""This machine's peak FLOP/s per precision and memory layout, measured on the layers a model actually runs.

A throughput is only meaningful against the peak of the arithmetic it runs on: fp32 against fp32, bf16 against
bf16 (AVX512-BF16 / AMX units run it several times faster), channels-last against channels-last. For a model and
an input, ``measure`` times

- a large GEMM in each precision (the BLAS rate), and
- every distinct convolution the model runs on that input (its own layer list, taken by forward hooks), in each
  precision and both memory layouts (contiguous and channels-last),

and the peak of a (precision, layout) pair is the best of these rates: the fastest arithmetic the model's own
shapes reach on this machine. ``fraction`` divides a workload's achieved rate by that peak and refuses a value
above 1: a workload cannot outrun the best of its own parts, so a fraction above 100 % means the peak was
measured wrong (the old benchmark's single fixed-shape convolution gave "509 % of peak"), not a fast workload.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
LAYOUTS = ("contiguous", "channels_last")
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class ConvShape:
    """One convolution as the model runs it: its module's hyper-parameters and its input's shape."""

    c_in: int
    c_out: int
    kernel: tuple
    stride: tuple
    padding: tuple
    groups: int
    input_shape: tuple

    @property
    def dims(self) -> int:
        return len(self.kernel)

    def output_spatial(self) -> tuple:
        return tuple(
            (n + 2 * p - k) // s + 1 for n, k, s, p in zip(self.input_shape[2:], self.kernel, self.stride, self.padding)
        )

    def flops(self) -> float:
        """2 x multiply-adds: every output element sums c_in/groups x prod(kernel) products."""
        b = self.input_shape[0]
        return (
            2.0
            * b
            * self.c_out
            * math.prod(self.output_spatial())
            * (self.c_in // self.groups)
            * math.prod(self.kernel)
        )

    def build(self) -> nn.Module:
        cls = _CONVS[self.dims - 1]
        return cls(self.c_in, self.c_out, self.kernel, stride=self.stride, padding=self.padding, groups=self.groups)


def conv_layers(model: nn.Module, run) -> list[ConvShape]:
    """The distinct convolutions that ``run()`` (a call that runs ``model``) executes, in first-call order."""
    seen: dict[ConvShape, None] = {}

    def hook(mod, inputs, _out):
        seen.setdefault(
            ConvShape(
                mod.in_channels,
                mod.out_channels,
                tuple(mod.kernel_size),
                tuple(mod.stride),
                tuple(mod.padding),
                mod.groups,
                tuple(inputs[0].shape),
            )
        )

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _CONVS)]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return list(seen)


def _best_seconds(fn, calls: int) -> float:
    """The fastest of ``calls`` timed calls after one warm-up: a peak is the best the machine does."""
    fn()
    best = math.inf
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _memory_format(layout: str, ndim: int):
    if layout == "contiguous":
        return torch.contiguous_format
    return {4: torch.channels_last, 5: torch.channels_last_3d}.get(ndim, torch.contiguous_format)


def conv_rate(conv: ConvShape, precision: str, layout: str, calls: int = 2) -> float:
    """FLOP/s of one convolution, forward, in the given precision and layout (random data, no grad)."""
    dtype = PRECISIONS[precision]
    fmt = _memory_format(layout, len(conv.input_shape))
    module = conv.build().to(dtype).to(memory_format=fmt).eval()
    x = torch.randn(conv.input_shape, dtype=dtype).contiguous(memory_format=fmt)
    with torch.no_grad():
        return conv.flops() / _best_seconds(lambda: module(x), calls)


def matmul_rate(precision: str, n: int = 2048, calls: int = 20) -> float:
    """FLOP/s of an n x n GEMM in the given precision (the best of ``calls``: a few calls of ~50 ms each caught
    the cores still ramping up and under-measured the bf16 rate by half)."""
    dtype = PRECISIONS[precision]
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2.0 * n**3 / _best_seconds(lambda: a @ b, calls)


@dataclass
class Peaks:
    """Measured rates (FLOP/s): ``matmul[precision]``, ``layers[(precision, layout)] = [rate per layer]``."""

    matmul: dict
    layers: dict
    convs: list

    def conv(self, precision: str, layout: str) -> float:
        """The best convolution rate of the model's own layers in this precision and layout."""
        return max(self.layers[(precision, layout)], default=0.0)

    def peak(self, precision: str, layout: str) -> float:
        """The peak for a workload in this precision and layout: the best of its GEMM and convolution rates."""
        return max(self.matmul[precision], self.conv(precision, layout))

    def summary(self) -> dict:
        out = {f"matmul_peak_{p}_GFLOPs": round(self.matmul[p] / 1e9, 1) for p in self.matmul}
        for p, lay in self.layers:
            out[f"conv_peak_{p}_{lay}_GFLOPs"] = round(self.conv(p, lay) / 1e9, 1)
        out["conv_layers_measured"] = len(self.convs)
        return out


def measure(
    convs: list[ConvShape], precisions=tuple(PRECISIONS), layouts=LAYOUTS, matmul_n: int = 2048, calls: int = 2
) -> Peaks:
    """Time the GEMM and every listed convolution in every precision and layout, in this process, now."""
    matmul = {p: matmul_rate(p, matmul_n) for p in precisions}
    layers = {(p, lay): [conv_rate(c, p, lay, calls) for c in convs] for p in precisions for lay in layouts}
    return Peaks(matmul, layers, list(convs))


class PeakExceeded(RuntimeError):
    pass


def fraction(achieved: float, peaks: Peaks, precision: str, layout: str, what: str) -> float:
    """achieved / the peak of its own precision and layout; above 1 the peak is wrong, and that is an error."""
    peak = peaks.peak(precision, layout)
    frac = achieved / peak
    if frac > 1.0:
        raise PeakExceeded(
            f"{what}: {achieved / 1e9:.1f} GFLOP/s is above the measured {precision} {layout} peak "
            f"{peak / 1e9:.1f} GFLOP/s: the peak misses a faster layer of this workload"
        )
    return frac
