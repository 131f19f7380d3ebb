"""The chunked SSD scan (Mamba2's "state space duality" form) on both backends against the
plain recurrence, step by step in float64 numpy; and the whole bidirectional Mamba2 layer
against a float64 numpy re-implementation that runs every direction one step at a time.
Band tables and spec validation of the band-split family are checked here too."""
import mlx.core as mx
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten, tree_unflatten

import mlx_models.bandsplit as mbs
import torch_models.bandsplit as tbs
from shared.engine.config import config_from_dict
from shared.engine.layout import to_backend
from shared.errors import ConfigError, SpecError
from shared.registry import spec_from_dict
from shared.specs.bandsplit import (BandSplitSpec, bandsplit_forward_flops, bandsplit_init_weights,
                                    bandsplit_manifest, bandsplit_train_flops, scale_band_widths,
                                    table_widths)
from tests.helpers import rel_err, one_torch_thread  # noqa: F401  (an autouse fixture)


def recurrent_scan(x, a, B, C):
    """h_t = exp(a_t) h_{t-1} + x_t B_t^T, y_t = h_t C_t, one step at a time (float64)."""
    N, L, H, P = x.shape
    h = np.zeros((N, H, P, B.shape[-1]))
    y = np.zeros((N, L, H, P))
    for t in range(L):
        h = np.exp(a[:, t])[:, :, None, None] * h + x[:, t, :, :, None] * B[:, t, None, None, :]
        y[:, t] = np.einsum("nhps,ns->nhp", h, C[:, t])
    return y


def scan_inputs(N=2, L=37, H=3, P=4, S=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, L, H, P))
    # Log-decays from nearly 0 (long memory) to -4 (state forgotten within a step or two).
    a = -rng.uniform(0.0, 4.0, (N, L, H)) * rng.uniform(0, 1, (1, 1, H)) ** 2
    B, C = rng.standard_normal((N, L, S)), rng.standard_normal((N, L, S))
    return [v.astype(np.float32) for v in (x, a, B, C)]


@pytest.mark.parametrize("chunk,length,decay", [(1, 37, 1), (4, 37, 1), (5, 37, 1), (8, 37, 1),
                                                (37, 37, 1), (64, 37, 1), (16, 300, 4)])
def test_chunked_scan_equals_recurrence(chunk, length, decay):
    """L = 37: chunks 4, 5 and 8 leave a short last chunk; 37 is one chunk; 64 > L. The
    last case: 19 chunks, log-decays down to -16 per step, so the decay summed over the
    sequence reaches thousands while single steps stay near zero for some heads."""
    x, a, B, C = scan_inputs(L=length)
    a = a * decay
    expected = recurrent_scan(*(v.astype(np.float64) for v in (x, a, B, C)))
    got_mlx = np.array(mbs.ssd_scan(*(mx.array(v) for v in (x, a, B, C)), chunk=chunk))
    got_torch = tbs.ssd_scan(*(torch.from_numpy(v) for v in (x, a, B, C)), chunk=chunk).numpy()
    got_torch64 = tbs.ssd_scan(*(torch.from_numpy(v.astype(np.float64)) for v in (x, a, B, C)),
                               chunk=chunk).numpy()
    assert rel_err(got_torch64, expected) <= 1e-12          # the algorithm itself is exact
    assert rel_err(got_mlx, expected) <= 1e-6, rel_err(got_mlx, expected)
    assert rel_err(got_torch, expected) <= 1e-6, rel_err(got_torch, expected)


def test_scan_gradients_match_recurrence():
    """Gradients of the chunked scan (both backends, fp32) against autograd through the
    step-by-step recurrence in float64 torch."""
    x, a, B, C = scan_inputs(L=23, seed=1)
    cotangent = np.random.default_rng(2).standard_normal(x.shape)

    def torch_recurrent(x, a, B, C):
        h = torch.zeros(x.shape[0], x.shape[2], x.shape[3], B.shape[-1], dtype=x.dtype)
        ys = []
        for t in range(x.shape[1]):
            h = torch.exp(a[:, t])[:, :, None, None] * h + x[:, t, :, :, None] * B[:, t, None, None, :]
            ys.append(torch.einsum("nhps,ns->nhp", h, C[:, t]))
        return torch.stack(ys, dim=1)

    inputs64 = [torch.from_numpy(v.astype(np.float64)).requires_grad_() for v in (x, a, B, C)]
    (torch_recurrent(*inputs64) * torch.from_numpy(cotangent)).sum().backward()
    expected = [v.grad.numpy() for v in inputs64]

    inputs32 = [torch.from_numpy(v).requires_grad_() for v in (x, a, B, C)]
    (tbs.ssd_scan(*inputs32, chunk=6) * torch.from_numpy(cotangent.astype(np.float32))).sum().backward()
    grads_mlx = mx.grad(lambda *v: (mbs.ssd_scan(*v, chunk=6) * mx.array(cotangent.astype(np.float32))).sum(),
                        argnums=(0, 1, 2, 3))(*(mx.array(v) for v in (x, a, B, C)))
    for name, want, got_t, got_m in zip("xaBC", expected, inputs32, grads_mlx):
        assert rel_err(got_t.grad.numpy(), want) <= 1e-5, name
        assert rel_err(np.array(got_m), want) <= 1e-5, name


# ----------------------------------------------------------------------------- the layer
def numpy_mamba2(u, w, spec):
    """One Mamba2 direction, float64, one time step at a time (an independent reading of
    the architecture: no chunks, no matrices over time)."""
    E, S, H, P, K = spec.d_inner, spec.d_state, spec.mamba_heads, spec.head_dim, spec.d_conv
    N, L, _ = u.shape
    zxbcdt = u @ w["in_proj.weight"].T
    z, xBC, dt = zxbcdt[..., :E], zxbcdt[..., E:2 * E + 2 * S], zxbcdt[..., 2 * E + 2 * S:]
    kernel = w["conv1d.weight"][:, 0, :]                                     # (channels, K)
    conv = np.zeros_like(xBC)
    for t in range(L):
        for k in range(K):
            src = t - (K - 1) + k
            if src >= 0:
                conv[:, t] += xBC[:, src] * kernel[:, k]
    conv += w["conv1d.bias"]
    xBC = conv / (1 + np.exp(-conv))
    x, B, C = xBC[..., :E].reshape(N, L, H, P), xBC[..., E:E + S], xBC[..., E + S:]
    dt = np.log1p(np.exp(dt + w["dt_bias"]))
    A = -np.exp(w["A_log"])
    h = np.zeros((N, H, P, S))
    y = np.zeros((N, L, H, P))
    for t in range(L):
        h = np.exp(dt[:, t] * A)[:, :, None, None] * h \
            + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, None, None, :]
        y[:, t] = np.einsum("nhps,ns->nhp", h, C[:, t]) + w["D"][:, None] * x[:, t]
    g = y.reshape(N, L, E) * (z / (1 + np.exp(-z)))
    g = g / np.sqrt(np.mean(g * g, axis=-1, keepdims=True) + spec.eps) * w["norm.weight"]
    return g @ w["out_proj.weight"].T


def rms_norm(x, weight, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


@pytest.mark.parametrize("chunk", [4, 7, 64])
def test_bidirectional_layer_matches_stepwise_numpy(chunk):
    spec = BandSplitSpec(n_fft=64, hop=16, hidden=12, n_layers=1, d_state=6, d_conv=4, expand=2,
                         head_dim=8, chunk_size=chunk, eps=1e-5)
    prefix = "layers.0.time_layer."
    manifest = {p.name[len(prefix):]: p for p in bandsplit_manifest(spec) if p.name.startswith(prefix)}
    rng = np.random.default_rng(3)
    init = bandsplit_init_weights(spec, seed=4)
    weights = {}
    for name, p in manifest.items():
        value = init[prefix + name]
        if p.kind in ("norm", "bias"):   # move them off 1 and 0, so every term is tested
            value = value + 0.2 * rng.standard_normal(value.shape).astype(np.float32)
        weights[name] = value
    u = rng.standard_normal((3, 19, spec.hidden)).astype(np.float32)

    w64 = {k: v.astype(np.float64) for k, v in weights.items()}
    u64 = u.astype(np.float64)
    h = rms_norm(u64, w64["norm.weight"], spec.eps)
    sub = {d: {k.split(".", 1)[1]: v for k, v in w64.items() if k.startswith(d + ".")}
           for d in ("forward_mixer", "backward_mixer")}
    expected = u64 + numpy_mamba2(h, sub["forward_mixer"], spec) \
        + numpy_mamba2(h[:, ::-1], sub["backward_mixer"], spec)[:, ::-1]

    layer_mlx = mbs.BiMamba2Layer(spec)
    layer_mlx.update(tree_unflatten([(k, mx.array(to_backend(v, manifest[k].kind, "mlx")))
                                     for k, v in weights.items()]))
    assert set(dict(tree_flatten(layer_mlx.parameters()))) == set(weights)
    layer_torch = tbs.BiMamba2Layer(spec)
    layer_torch.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    got_mlx = np.array(layer_mlx(mx.array(u)))
    with torch.no_grad():
        got_torch = layer_torch(torch.from_numpy(u)).numpy()
    assert rel_err(got_mlx, expected) <= 1e-5, rel_err(got_mlx, expected)
    assert rel_err(got_torch, expected) <= 1e-5, rel_err(got_torch, expected)
    # The backward direction matters: reversing the input is not the same layer.
    assert rel_err(layer_torch(torch.from_numpy(u[:, ::-1].copy())).detach().numpy()[:, ::-1],
                   expected) > 1e-2


def test_mlx_depthwise_conv_equals_torch_conv1d():
    """The MLX causal conv (shifted multiply-adds) against torch's grouped Conv1d."""
    rng = np.random.default_rng(5)
    weight, bias = rng.standard_normal((7, 1, 4)).astype(np.float32), rng.standard_normal(7).astype(np.float32)
    x = rng.standard_normal((2, 11, 7)).astype(np.float32)
    conv = mbs.DepthwiseCausalConv1d(7, 4)
    conv.update({"weight": mx.array(to_backend(weight, "conv1d", "mlx")), "bias": mx.array(bias)})
    expected = torch.nn.functional.conv1d(torch.from_numpy(x).transpose(1, 2), torch.from_numpy(weight),
                                          torch.from_numpy(bias), padding=3, groups=7)[..., :11]
    assert rel_err(np.array(conv(mx.array(x))), expected.transpose(1, 2).numpy()) <= 1e-6


# ----------------------------------------------------------------------------- band tables
def test_band_tables():
    assert sum(table_widths("bs_roformer_62")) == 1025 and len(table_widths("bs_roformer_62")) == 62
    assert sum(table_widths("48")) == 1025 and len(table_widths("48")) == 48
    assert table_widths("bs_roformer_62")[:2] == (2, 2) and table_widths("bs_roformer_62")[-2:] == (128, 129)
    for n_fft in (64, 128, 256, 500, 512, 1024, 2048, 4096):
        for bands in ("bs_roformer_62", "48"):
            spec = BandSplitSpec(n_fft=n_fft, hop=n_fft // 4, bands=bands)
            assert sum(spec.widths) == n_fft // 2 + 1 and min(spec.widths) >= 1, (n_fft, bands)
            assert spec.n_bands <= len(table_widths(bands))
    # Scaling keeps the edge frequencies: at 4096 the 62-band edges land near twice the 2048 ones.
    edges_4096 = np.cumsum(BandSplitSpec(n_fft=4096, hop=1024).widths)
    assert np.abs(edges_4096 - 2 * np.cumsum(table_widths("bs_roformer_62"))).max() <= 2
    assert scale_band_widths((2, 2, 4), 8) == (2, 2, 4) and scale_band_widths((2, 2, 4), 16) == (4, 4, 8)
    explicit = BandSplitSpec(n_fft=16, hop=4, band_widths=(1, 2, 6))
    assert explicit.widths == (1, 2, 6) and explicit.band_features == (4, 8, 24)


def test_bad_specs_raise_spec_error():
    for bad, field in [({"band_widths": (1, 2, 3)}, "band_widths"),
                       ({"n_fft": 16, "hop": 4, "band_widths": (4, 0, 5)}, "band_widths"),
                       ({"bands": "31"}, "model.bands"),
                       ({"sequence_layer": "lstm"}, "sequence_layer"),
                       ({"hidden": 80, "head_dim": 64}, "head_dim"),
                       ({"sequence_layer": "transformer", "hidden": 96, "n_heads": 5}, "n_heads"),
                       ({"sequence_layer": "transformer", "hidden": 96, "n_heads": 32}, "RoPE"),
                       ({"n_fft": 255}, "n_fft"), ({"hop": 4096}, "hop"),
                       ({"chunk_size": 0}, "chunk_size"), ({"loss": "l2"}, "loss"),
                       ({"dropout": 1.0}, "dropout"), ({"mask_mlp_hidden": -1}, "mask_mlp_hidden")]:
        with pytest.raises(SpecError, match=field):
            BandSplitSpec(**bad)
    # The other sequence layer's settings are not checked.
    assert BandSplitSpec(hidden=96, n_heads=5).sequence_layer == "mamba2"
    # YAML gives lists; configs name the key.
    assert spec_from_dict("bandsplit", {"n_fft": 16, "hop": 4, "band_widths": [4, 5]}).band_widths == (4, 5)
    with pytest.raises(ConfigError, match="band_widths"):
        config_from_dict({"family": "bandsplit", "model": {"n_fft": 16, "hop": 4, "band_widths": [4, 4]}})


def test_flops_hand_count():
    """The FLOP model against a count by hand for a tiny spec: n_fft 8 (5 bins) in bands of
    2 and 3, 8 samples -> T = 3 frames, K = 2 bands; hidden 4, one DualPathModule."""
    common = dict(n_fft=8, hop=4, band_widths=(2, 3), hidden=4, n_layers=1, mask_mlp_hidden=3)
    # Band split: features 2*2*2 = 8 and 3*2*2 = 12 -> 2 T (8 + 12) 4 = 480. Masks (4
    # sources): 2 T (4*3 + 3*2*4*8) + 2 T (4*3 + 3*2*4*12) = 1224 + 1800 = 3024.
    outside = 480 + 3024
    # Mamba2, E 8, S 2, H 2, P 4, conv over 12 channels with kernel 2, chunk 2. Per
    # direction and length L: in_proj 2L*4*(16+4+2) + out_proj 2L*8*4 + conv 2L*12*2 = 288 L;
    # SSD, L 3 (c 2 chunks of Q 2): CB 2*2*2*2*2 = 32, (CB*decay) x 2*2*2*2*2*4 = 128,
    # states 2*2*2*2*4*2 = 128, carry 2*2*2*2*4*2 = 128, C.entering 128 -> 544;
    # L 2 (one chunk): 16 + 64 + 64 + 32 + 64 = 240. Two directions per layer.
    mamba = BandSplitSpec(**common, d_state=2, expand=2, head_dim=4, d_conv=2, chunk_size=2)
    time_layer, band_layer = 2 * (288 * 3 + 544), 2 * (288 * 2 + 240)
    assert bandsplit_forward_flops(mamba, 8) == outside + 2 * time_layer + 3 * band_layer == 14032
    assert bandsplit_train_flops(mamba, 8) == 3 * 14032
    # Transformer, FFN 8: qkv 2L*4*12 + out 2L*4*4 + FFN 2*2L*4*8 + QK^T and PV 2*2*L*L*4
    # = 256 L + 16 L^2 -> L 3: 912, L 2: 576.
    transformer = BandSplitSpec(**common, sequence_layer="transformer", n_heads=2, ffn_mult=2)
    assert bandsplit_forward_flops(transformer, 8) == outside + 2 * 912 + 3 * 576 == 7056
