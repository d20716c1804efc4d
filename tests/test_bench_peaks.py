"""The peak code of the speed benchmark (benchmarks/peaks.py) on a tiny case: the layer list is the model's own
convolutions, their FLOPs agree with torch's FLOP counter, the peak of a (precision, layout) is the best of its
measured rates, and a workload reported above its peak is an error rather than a "509 %" row."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_peaks", REPO / "benchmarks" / "peaks.py")
peaks = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = peaks  # dataclasses look their module up
_spec.loader.exec_module(peaks)


def _model(dims: int) -> nn.Module:
    conv = nn.Conv3d if dims == 3 else nn.Conv2d
    shared = conv(4, 4, 3, padding=1)
    # the shared layer runs twice on the same shape (one entry) and a strided layer once
    return nn.Sequential(conv(1, 4, 3, padding=1), shared, nn.SiLU(), shared, conv(4, 8, 3, stride=2, padding=1))


@pytest.mark.parametrize("dims", [2, 3])
def test_layer_list_is_the_models_distinct_convolutions_with_counted_flops(dims):
    model = _model(dims)
    x = torch.randn(2, 1, *([6] * dims))
    convs = peaks.conv_layers(model, lambda: model(x))
    assert [(c.c_in, c.c_out, c.stride) for c in convs] == [
        (1, 4, (1,) * dims),
        (4, 4, (1,) * dims),
        (4, 8, (2,) * dims),
    ]
    assert [c.input_shape for c in convs] == [(2, 1, *[6] * dims), (2, 4, *[6] * dims), (2, 4, *[6] * dims)]
    # each layer's FLOPs as torch's own counter sees that convolution run on that input
    for c in convs:
        module, inp = c.build(), torch.randn(c.input_shape)
        with FlopCounterMode(display=False) as fc:
            out = module(inp)
        assert out.shape[2:] == c.output_spatial()
        assert c.flops() == fc.get_total_flops()


def test_peak_is_the_best_measured_rate_and_a_row_above_it_is_refused():
    model = _model(3)
    x = torch.randn(1, 1, 4, 8, 8)
    convs = peaks.conv_layers(model, lambda: model(x))
    p = peaks.measure(convs, matmul_n=64, calls=1)
    assert set(p.matmul) == {"fp32", "bf16"} and all(r > 0 for r in p.matmul.values())
    assert set(p.layers) == {(prec, lay) for prec in ("fp32", "bf16") for lay in ("contiguous", "channels_last")}
    for (prec, lay), rates in p.layers.items():
        assert len(rates) == len(convs) and all(r > 0 for r in rates)
        assert p.conv(prec, lay) == max(rates)
        assert p.peak(prec, lay) == max(p.matmul[prec], *rates)
    s = p.summary()
    assert s["conv_layers_measured"] == 3 and "conv_peak_bf16_channels_last_GFLOPs" in s
    top = p.peak("bf16", "channels_last")
    assert peaks.fraction(top / 4, p, "bf16", "channels_last", "row") == pytest.approx(0.25)
    assert peaks.fraction(top, p, "bf16", "channels_last", "row") == pytest.approx(1.0)
    with pytest.raises(peaks.PeakExceeded, match="row: .* above the measured bf16 channels_last peak"):
        peaks.fraction(top * 1.01, p, "bf16", "channels_last", "row")


def test_a_layer_is_timed_in_its_precision_and_layout(monkeypatch):
    """conv_rate builds the layer in the asked dtype and memory format (what the peak claims to measure)."""
    seen = []
    real = nn.Conv3d.forward

    def spy(self, x):
        seen.append((self.weight.dtype, x.dtype, x.is_contiguous(memory_format=torch.channels_last_3d)))
        return real(self, x)

    monkeypatch.setattr(nn.Conv3d, "forward", spy)
    conv = peaks.ConvShape(4, 4, (3, 3, 3), (1, 1, 1), (1, 1, 1), 1, (1, 4, 4, 6, 6))
    peaks.conv_rate(conv, "bf16", "channels_last", calls=1)
    peaks.conv_rate(conv, "fp32", "contiguous", calls=1)
    assert set(seen[:2]) == {(torch.bfloat16, torch.bfloat16, True)}
    assert set(seen[2:]) == {(torch.float32, torch.float32, False)}
