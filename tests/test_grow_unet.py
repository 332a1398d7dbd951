"""A grown UNet (model.extra_layers, model.grow_state): the trained UNet with more ResNet layers at some levels,
added as identities, computes what the trained one did, and its new layers are really in the path."""
import dataclasses

import pytest

torch = pytest.importorskip("torch")

from rsgen_qgis.training.model import Denoiser, DenoiserConfig, extra_per_level, grow_state  # noqa: E402


def _cfg(**kw):
    return DenoiserConfig(image_channels=4, spatial_channels=3, cond_dim=6, block_out_channels=(8, 16, 16),
                          attention_levels=(False, False, True), tile=8, norm_num_groups=2, attention_head_dim=8,
                          **kw)


def _inputs():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10.0, 900.0]),
            torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 6, generator=g))


def _randomised(model):
    """Every weight random (a trained model's zero-initialised output layers are not zero)."""
    g = torch.Generator().manual_seed(2)
    return {k: torch.randn(v.shape, generator=g) * 0.2 if v.is_floating_point() else v
            for k, v in model.state_dict().items()}


@pytest.mark.parametrize("small_extra,big_extra", [((), (1, 0, 0)), ((), (2, 1, 0)), ((1, 0, 0), (2, 2, 0))])
def test_grown_unet_computes_what_the_trained_one_did(small_extra, big_extra):
    torch.manual_seed(0)
    small_cfg, big_cfg = _cfg(extra_layers=small_extra), _cfg(extra_layers=big_extra)
    small, big = Denoiser(small_cfg).eval(), Denoiser(big_cfg).eval()
    sd = _randomised(small)
    small.load_state_dict(sd)
    big.load_state_dict(grow_state(sd, small_cfg, big))
    n_small, n_big = (sum(p.numel() for p in m.parameters()) for m in (small, big))
    assert n_big > n_small
    with torch.no_grad():
        a, b = small(*_inputs()), big(*_inputs())
        # The same operations on the same tensors: the added layers add exact zeros (zero last convolution) and
        # pass their input through a 1 x 1 convolution of ones and zeros, so the outputs agree to the last bit;
        # 1e-6 of the output's scale leaves room for a convolution kernel that sums in another order.
        assert torch.allclose(a, b, rtol=0, atol=1e-6 * float(a.abs().max()))
        # and the new layers are in the path: moving one of them moves the output
        p = dict(big.named_parameters())["unet.down_blocks.0.resnets.1.conv2.bias"]
        p.add_(0.5)
        assert float((big(*_inputs()) - a).abs().max()) > 1e-3


def test_growth_is_refused_where_it_cannot_hold():
    with pytest.raises(ValueError, match="attention level"):
        extra_per_level(_cfg(extra_layers=(0, 0, 1)))
    with pytest.raises(ValueError, match="one count"):
        extra_per_level(_cfg(extra_layers=(1, 0)))
    small_cfg, big_cfg = _cfg(extra_layers=(2, 0, 0)), _cfg(extra_layers=(1, 0, 0))
    with pytest.raises(ValueError, match="fewer layers"):
        grow_state(Denoiser(small_cfg).state_dict(), small_cfg, Denoiser(big_cfg))
    other = dataclasses.replace(small_cfg, block_out_channels=(8, 16, 24), extra_layers=())
    with pytest.raises(ValueError, match="more than their extra layers"):
        grow_state(Denoiser(other).state_dict(), other, Denoiser(big_cfg))


def test_a_manifest_without_extra_layers_reads_as_none():
    d = _cfg().to_dict()
    d.pop("extra_layers")
    assert DenoiserConfig.from_dict(d).extra_layers == ()
    assert DenoiserConfig.from_dict(_cfg(extra_layers=(1, 0, 0)).to_dict()).extra_layers == (1, 0, 0)
