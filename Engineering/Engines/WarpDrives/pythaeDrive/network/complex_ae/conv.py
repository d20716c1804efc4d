"""Complex convolution and transposed convolution (2D and 3D) on complex tensors.

A complex kernel ``w + i v`` applied to a complex input ``a + i b`` gives
``(a*w - b*v) + i (a*v + b*w)`` (Trabelsi et al., "Deep Complex Networks", ICLR 2018, section 3.2). We hold the two
real kernels ``w`` and ``v`` as real parameters and compute the product as ONE real convolution of the stacked input
``[a, b]`` (2C channels) with the 2x2 block kernel ``[[w, -v], [v, w]]`` (2O outputs); its first O outputs are the
real part, the last O the imaginary part.

Why decomposed and not torch's native complex convolution (``F.conv2d`` on complex64 works on CPU): measured on
this machine (torch 2.13 CPU, one thread, forward + backward of one layer, kernel 4, stride 2, median of 10):
3D 4x8x16x32x32 -> 16 channels: block 65-85 ms, native 111-129 ms (native slower by ~40%); 2D 8x16x64x64 -> 32
channels: block 52-91 ms, native 72-87 ms (on par; the native path won by ~10% on a loaded machine, lost by ~30% on
an idle one). The native path also uses Gauss's three-product trick, whose float32 rounding differs from the plain
decomposition (~6e-6 here). And real parameters keep optimisers, AMP, weight decay, gradient clipping and
safetensors on the paths every other drive uses.
Only ``groups=1`` is offered (the block kernel assumes one group).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .checks import ComplexAEError, check_spatial_dims, require_complex

_CONV = {2: F.conv2d, 3: F.conv3d}
_CONV_T = {2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _tuple(value, n: int, name: str) -> tuple[int, ...]:
    values = (value,) * n if isinstance(value, int) else tuple(value)
    if len(values) != n or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise ComplexAEError(f"{name} must be an int or {n} ints, got {value!r}")
    return values


def complex_init_(weight_real: torch.Tensor, weight_imag: torch.Tensor, fan_in: int) -> None:
    """The complex He initialisation of Trabelsi et al. (2018, section 3.6): magnitude Rayleigh(sigma = 1/sqrt(fan_in)),
    so that Var(W) = E|W|^2 = 2 sigma^2 = 2 / fan_in, and phase uniform in (-pi, pi)."""
    sigma = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        uniform = torch.rand_like(weight_real).clamp_min(torch.finfo(weight_real.dtype).tiny)
        magnitude = sigma * torch.sqrt(-2.0 * torch.log(uniform))  # inverse CDF of the Rayleigh distribution
        phase = (torch.rand_like(weight_real) * 2.0 - 1.0) * math.pi
        weight_real.copy_(magnitude * torch.cos(phase))
        weight_imag.copy_(magnitude * torch.sin(phase))


def stack_parts(x: torch.Tensor) -> torch.Tensor:
    """Complex (N, C, ...) -> real (N, 2C, ...): real parts, then imaginary parts."""
    return torch.cat([x.real, x.imag], dim=1)


def unstack_parts(y: torch.Tensor) -> torch.Tensor:
    """Real (N, 2C, ...) -> complex (N, C, ...), the inverse of ``stack_parts``. Under mixed precision the real
    convolution gives bfloat16 / float16, which torch has no complex type for (bfloat16) or few complex kernels
    for (float16): the complex values are formed in float32, the convolutions keep their reduced precision."""
    if y.dtype not in (torch.float32, torch.float64):
        y = y.float()
    half = y.shape[1] // 2
    return torch.complex(y[:, :half], y[:, half:])


class _ComplexConvBase(nn.Module):
    transposed = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        bias: bool = True,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        n = self.spatial_dims
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ComplexAEError(f"{name} must be a positive integer, got {value!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _tuple(kernel_size, n, "kernel_size")
        self.stride = _tuple(stride, n, "stride")
        self.padding = _tuple(padding, n, "padding")
        self.dilation = _tuple(dilation, n, "dilation")
        # torch's layout: conv (out, in, *k); transposed conv (in, out, *k)
        shape = (in_channels, out_channels) if self.transposed else (out_channels, in_channels)
        self.weight_real = nn.Parameter(torch.empty(*shape, *self.kernel_size))
        self.weight_imag = nn.Parameter(torch.empty(*shape, *self.kernel_size))
        if bias:
            self.bias_real = nn.Parameter(torch.zeros(out_channels))
            self.bias_imag = nn.Parameter(torch.zeros(out_channels))
        else:
            self.register_parameter("bias_real", None)
            self.register_parameter("bias_imag", None)
        # fan_in = in_channels x kernel taps for both kinds (a transposed conv's output sees about 1/prod(stride) of
        # them; the complex BN after each block resets the scale, so the difference does not matter here)
        complex_init_(self.weight_real, self.weight_imag, in_channels * math.prod(self.kernel_size))

    @property
    def weight(self) -> torch.Tensor:
        """The complex kernel ``w + i v`` (a view for inspection and tests; the parameters are the two real parts)."""
        return torch.complex(self.weight_real, self.weight_imag)

    def _block_bias(self) -> torch.Tensor | None:
        if self.bias_real is None:
            return None
        return torch.cat([self.bias_real, self.bias_imag])

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, spatial_dims={self.spatial_dims}, bias={self.bias_real is not None}"
        )


class ComplexConv(_ComplexConvBase):
    """Complex convolution, ``spatial_dims`` 2 or 3: complex (N, C_in, [S,] X, Y) -> complex (N, C_out, ...).

    Output = conv(a, w) - conv(b, v) + i (conv(a, v) + conv(b, w)) + (bias_real + i bias_imag), computed as one real
    convolution with the block kernel [[w, -v], [v, w]] (Trabelsi et al., ICLR 2018).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        require_complex(x, self.spatial_dims, type(self).__name__)
        w, v = self.weight_real, self.weight_imag
        block = torch.cat([torch.cat([w, -v], dim=1), torch.cat([v, w], dim=1)], dim=0)  # (2 out, 2 in, *k)
        y = _CONV[self.spatial_dims](
            stack_parts(x), block, self._block_bias(), self.stride, self.padding, self.dilation
        )
        return unstack_parts(y)


class ComplexConvTranspose(_ComplexConvBase):
    """Complex transposed convolution, ``spatial_dims`` 2 or 3, the adjoint-shaped partner of ``ComplexConv``.

    Output = convT(a, w) - convT(b, v) + i (convT(a, v) + convT(b, w)) + bias; as one real transposed convolution
    whose kernel (2 in, 2 out, *k) is [[w, v], [-v, w]] (rows index the input's real / imaginary halves).
    """

    transposed = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        output_padding=0,
        dilation=1,
        bias: bool = True,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, bias, spatial_dims)
        self.output_padding = _tuple(output_padding, self.spatial_dims, "output_padding")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        require_complex(x, self.spatial_dims, type(self).__name__)
        w, v = self.weight_real, self.weight_imag
        block = torch.cat([torch.cat([w, v], dim=1), torch.cat([-v, w], dim=1)], dim=0)  # (2 in, 2 out, *k)
        y = _CONV_T[self.spatial_dims](
            stack_parts(x), block, self._block_bias(), self.stride, self.padding, self.output_padding, 1, self.dilation
        )
        return unstack_parts(y)
