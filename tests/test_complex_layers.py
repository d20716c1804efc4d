"""The complex autoencoder's pure-torch layers (issue 36), each against a reference computed here independently:
complex (transposed) convolution = its real decomposition; complex BN whitens to the identity covariance and uses
its running statistics in eval; modReLU and CReLU equal their formulas; the encoder gives a real latent and the
decoder a complex image, with gradients to every parameter, in 2D and 3D; crecon equals its definitions."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from Engineering.Engines.WarpDrives.pythaeDrive.network.complex_ae import (
    ComplexAEConfig,
    ComplexAEError,
    ComplexBatchNorm,
    ComplexConv,
    ComplexConvTranspose,
    ComplexDecoder,
    ComplexEncoder,
    CReLU,
    ModReLU,
    crecon,
)

CONV = {2: F.conv2d, 3: F.conv3d}
CONV_T = {2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _complex(*shape, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    return torch.complex(
        torch.randn(*shape, generator=generator, dtype=dtype), torch.randn(*shape, generator=generator, dtype=dtype)
    )


def _with_bias(y: torch.Tensor, bias: torch.Tensor, dims: int) -> torch.Tensor:
    return y + bias.view(1, -1, *([1] * dims))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("stride,padding,dilation", [(1, 0, 1), (2, 1, 1), (1, 2, 2)])
def test_complex_conv_equals_real_decomposition(dims, stride, padding, dilation):
    g = torch.Generator().manual_seed(dims * 10 + stride)
    layer = ComplexConv(3, 4, 3, stride=stride, padding=padding, dilation=dilation, spatial_dims=dims).double()
    with torch.no_grad():
        layer.bias_real.normal_(generator=g)
        layer.bias_imag.normal_(generator=g)
    x = _complex(2, 3, *([7] * dims), generator=g)
    a, b, w, v = x.real, x.imag, layer.weight_real.detach(), layer.weight_imag.detach()
    kw = dict(stride=stride, padding=padding, dilation=dilation)
    conv = CONV[dims]
    real = _with_bias(conv(a, w, **kw) - conv(b, v, **kw), layer.bias_real.detach(), dims)
    imag = _with_bias(conv(a, v, **kw) + conv(b, w, **kw), layer.bias_imag.detach(), dims)
    out = layer(x)
    assert out.dtype == torch.complex128
    torch.testing.assert_close(out.real, real, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.imag, imag, atol=1e-6, rtol=0)
    # float32 in, complex64 out
    assert layer.float()(x.to(torch.complex64)).dtype == torch.complex64


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("stride,padding,output_padding", [(1, 0, 0), (2, 1, 0), (2, 1, 1)])
def test_complex_conv_transpose_equals_real_decomposition(dims, stride, padding, output_padding):
    g = torch.Generator().manual_seed(dims * 100 + stride + output_padding)
    layer = ComplexConvTranspose(
        3, 2, 4, stride=stride, padding=padding, output_padding=output_padding, spatial_dims=dims
    ).double()
    with torch.no_grad():
        layer.bias_real.normal_(generator=g)
        layer.bias_imag.normal_(generator=g)
    x = _complex(2, 3, *([5] * dims), generator=g)
    a, b, w, v = x.real, x.imag, layer.weight_real.detach(), layer.weight_imag.detach()
    kw = dict(stride=stride, padding=padding, output_padding=output_padding)
    conv_t = CONV_T[dims]
    real = _with_bias(conv_t(a, w, **kw) - conv_t(b, v, **kw), layer.bias_real.detach(), dims)
    imag = _with_bias(conv_t(a, v, **kw) + conv_t(b, w, **kw), layer.bias_imag.detach(), dims)
    out = layer(x)
    torch.testing.assert_close(out.real, real, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.imag, imag, atol=1e-6, rtol=0)


def test_complex_conv_refuses_real_input():
    with pytest.raises(ComplexAEError, match="complex tensor"):
        ComplexConv(1, 1, 3)(torch.randn(1, 1, 5, 5))


def _correlated_batch(dims: int, g: torch.Generator, channels: int = 3) -> torch.Tensor:
    """Per channel: (Re, Im) = A u + m with u standard normal, A a random mixing matrix (so Re and Im correlate and
    differ in spread) and m a random mean."""
    u = torch.randn(8, channels, 2, *([6] * dims), generator=g, dtype=torch.float64)
    mix = torch.randn(channels, 2, 2, generator=g, dtype=torch.float64) + 2 * torch.eye(2, dtype=torch.float64)
    mean = 3 * torch.randn(channels, 2, generator=g, dtype=torch.float64)
    pairs = torch.einsum("cij,ncj...->nci...", mix, u) + mean.view(1, channels, 2, *([1] * dims))
    return torch.complex(pairs[:, :, 0], pairs[:, :, 1])


def _channel_stats(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel mean (C, 2) and biased 2x2 covariance (C, 2, 2) of (Re, Im), computed with plain torch."""
    pairs = torch.stack([z.real, z.imag], dim=2).transpose(0, 1).transpose(1, 2).reshape(z.shape[1], 2, -1)
    centred = pairs - pairs.mean(dim=2, keepdim=True)
    return pairs.mean(dim=2), centred @ centred.transpose(1, 2) / pairs.shape[2]


@pytest.mark.parametrize("dims", [2, 3])
def test_complex_bn_whitens_in_train_mode(dims):
    g = torch.Generator().manual_seed(dims)
    x = _correlated_batch(dims, g)
    _, cov_in = _channel_stats(x)
    assert cov_in[:, 0, 1].abs().min() > 0.1  # the input really is correlated
    bn = ComplexBatchNorm(3, spatial_dims=dims).double().train()
    # the paper's initial scaling: gamma_rr = gamma_ii = 1/sqrt(2), gamma_ri = 0, beta = 0
    torch.testing.assert_close(bn.gamma_rr.detach(), torch.full((3,), 1 / math.sqrt(2), dtype=torch.float64))
    assert bn.gamma_ri.abs().max() == 0 and bn.beta_real.abs().max() == 0 and bn.beta_imag.abs().max() == 0
    eye = torch.eye(2, dtype=torch.float64).expand(3, 2, 2)
    mean, cov = _channel_stats(bn(x))
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-6, rtol=0)
    torch.testing.assert_close(cov, 0.5 * eye, atol=1e-4, rtol=0)  # gamma I/sqrt(2) of a whitened batch: I/2
    with torch.no_grad():  # gamma = I: the whitened batch itself, covariance I
        bn.gamma_rr.fill_(1.0)
        bn.gamma_ii.fill_(1.0)
    mean, cov = _channel_stats(bn(x))
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-6, rtol=0)
    torch.testing.assert_close(cov, eye, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dims", [2, 3])
def test_complex_bn_running_stats_in_eval(dims):
    g = torch.Generator().manual_seed(10 + dims)
    x = _correlated_batch(dims, g)
    bn = ComplexBatchNorm(3, spatial_dims=dims, momentum=0.1).double()
    with torch.no_grad():
        for p in (bn.gamma_rr, bn.gamma_ri, bn.gamma_ii, bn.beta_real, bn.beta_imag):
            p.normal_(generator=g)
    bn.train()(x)
    # the running statistics: 0.9 * (mean 0, covariance I) + 0.1 * (batch mean, unbiased batch covariance)
    mean, cov_biased = _channel_stats(x)
    n = x.numel() // x.shape[1]
    cov_unbiased = cov_biased * n / (n - 1)
    torch.testing.assert_close(bn.running_mean, 0.1 * mean.T)
    expected_cov = 0.9 * torch.eye(2, dtype=torch.float64) + 0.1 * cov_unbiased
    torch.testing.assert_close(
        bn.running_covar, torch.stack([expected_cov[:, 0, 0], expected_cov[:, 0, 1], expected_cov[:, 1, 1]])
    )
    # eval: gamma V_run^(-1/2) (x - mean_run) + beta, the inverse square root by eigendecomposition
    running_mean, running_covar = bn.running_mean.clone(), bn.running_covar.clone()
    x2 = _correlated_batch(dims, torch.Generator().manual_seed(0))
    y = bn.eval()(x2)
    torch.testing.assert_close(bn.running_mean, running_mean)  # eval leaves the statistics alone
    torch.testing.assert_close(bn.running_covar, running_covar)
    eigval, eigvec = torch.linalg.eigh(expected_cov + bn.eps * torch.eye(2, dtype=torch.float64))
    inv_sqrt = eigvec @ torch.diag_embed(eigval.rsqrt()) @ eigvec.transpose(1, 2)
    gamma = torch.stack(
        [torch.stack([bn.gamma_rr, bn.gamma_ri], -1), torch.stack([bn.gamma_ri, bn.gamma_ii], -1)], -2
    ).detach()
    beta = torch.stack([bn.beta_real, bn.beta_imag], -1).detach()
    pairs = torch.stack([x2.real, x2.imag], dim=2)  # (N, C, 2, ...)
    centred = pairs - (0.1 * mean).view(1, 3, 2, *([1] * dims))
    expected = torch.einsum("cij,ncj...->nci...", gamma @ inv_sqrt, centred) + beta.view(1, 3, 2, *([1] * dims))
    torch.testing.assert_close(torch.stack([y.real, y.imag], dim=2), expected, atol=1e-6, rtol=1e-6)


def test_modrelu_equals_its_formula_and_is_finite_at_zero():
    g = torch.Generator().manual_seed(3)
    z = _complex(4, 3, 5, 5, generator=g, dtype=torch.float32)
    z[0, :, 0, 0] = 0  # exact zeros among the values
    act = ModReLU(3)
    with torch.no_grad():
        act.bias.copy_(torch.tensor([-0.5, 0.0, 0.7]))
    magnitude = torch.sqrt(z.real**2 + z.imag**2)
    gain = torch.clamp(magnitude + act.bias.detach().view(1, 3, 1, 1), min=0)
    phase = torch.where(magnitude > 0, z / torch.where(magnitude > 0, magnitude, 1.0), 0)
    torch.testing.assert_close(act(z), gain * phase)
    # an all-zero input (positive, zero and negative biases): output 0 and finite gradients
    zero = torch.zeros(2, 3, 4, 4, dtype=torch.complex64, requires_grad=True)
    out = act(zero)
    assert torch.isfinite(torch.view_as_real(out)).all() and out.abs().max() == 0
    (out.real.sum() + out.imag.sum() + act(z).abs().sum()).backward()
    assert torch.isfinite(torch.view_as_real(zero.grad)).all() and torch.isfinite(act.bias.grad).all()


def test_crelu_equals_split_relu():
    g = torch.Generator().manual_seed(4)
    z = _complex(2, 3, 4, 4, 4, generator=g, dtype=torch.float32)
    out = CReLU()(z)
    torch.testing.assert_close(out.real, torch.clamp(z.real, min=0))
    torch.testing.assert_close(out.imag, torch.clamp(z.imag, min=0))


@pytest.mark.parametrize(
    "dims,activation,variational",
    [(2, "modrelu", False), (2, "crelu", True), (3, "modrelu", True), (3, "crelu", False)],
)
def test_encoder_decoder_shapes_dtypes_and_gradients(dims, activation, variational):
    torch.manual_seed(dims)
    size = (16, 16) if dims == 2 else (8, 8, 8)
    config = ComplexAEConfig(
        spatial_dims=dims,
        in_channels=2,
        input_size=size,
        widths=(4, 8),
        latent_dim=6,
        activation=activation,
        variational=variational,
    )
    encoder, decoder = ComplexEncoder(config), ComplexDecoder(config)
    x = torch.randn(3, 2, *size, dtype=torch.complex64)
    encoding = encoder(x)
    assert encoding.embedding.shape == (3, 6) and encoding.embedding.dtype == torch.float32
    assert (encoding.log_var is not None) == variational
    if variational:
        assert encoding.log_var.shape == (3, 6) and encoding.log_var.dtype == torch.float32
    recon = decoder(encoding.embedding)
    assert recon.shape == x.shape and recon.dtype == torch.complex64
    loss = crecon(recon, x) + (encoding.log_var.square().mean() if variational else 0)
    loss.backward()
    for name, param in [*encoder.named_parameters(prefix="encoder"), *decoder.named_parameters(prefix="decoder")]:
        assert param.grad is not None, f"no gradient reaches {name}"
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().max() > 0, f"zero gradient at {name}"


def test_encoder_refuses_real_or_misshapen_input_and_config_checks_sizes():
    config = ComplexAEConfig(input_size=(8, 8), widths=(4,), latent_dim=2)
    with pytest.raises(ComplexAEError, match="complex tensor"):
        ComplexEncoder(config)(torch.randn(2, 1, 8, 8))
    with pytest.raises(ComplexAEError, match="samples of shape"):
        ComplexEncoder(config)(torch.randn(2, 1, 8, 4, dtype=torch.complex64))
    with pytest.raises(ComplexAEError, match="divisible"):
        ComplexAEConfig(input_size=(12, 12), widths=(4, 8, 16))
    with pytest.raises(ComplexAEError, match="3 sides"):
        ComplexAEConfig(spatial_dims=3, input_size=(8, 8))


def test_crecon_equals_its_definitions():
    g = torch.Generator().manual_seed(5)
    x, y = _complex(2, 1, 4, 4, generator=g), _complex(2, 1, 4, 4, generator=g)
    d_re, d_im = x.real - y.real, x.imag - y.imag
    torch.testing.assert_close(crecon(x, y), (d_re**2 + d_im**2).mean())
    torch.testing.assert_close(crecon(x, y, kind="l1", reduction="sum"), torch.sqrt(d_re**2 + d_im**2).sum())
    modulus_x, modulus_y = torch.sqrt(x.real**2 + x.imag**2), torch.sqrt(y.real**2 + y.imag**2)
    xie = d_re.abs() + d_im.abs() + (modulus_x - modulus_y).abs()
    torch.testing.assert_close(crecon(x, y, kind="xie", reduction="none"), xie)
    assert crecon(x, x) == 0
    with pytest.raises(ComplexAEError):
        crecon(x.real, y.real)
