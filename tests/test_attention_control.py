"""Attention capture: place labels, restoring the UNet, maps with gradients (design seams 3 and 4)."""

from __future__ import annotations

import pytest
import torch

from ldm.modules.attention import CrossAttention
from ldm.modules.attention_control import AttentionStore, place_of, register_attention_controller
from ldm.modules.diffusionmodules.openaimodel import UNetModel


def tiny_unet(use_checkpoint: bool = False) -> UNetModel:
    torch.manual_seed(0)
    unet = UNetModel(
        image_size=16, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[1, 2],
        num_res_blocks=1, channel_mult=[1, 2], num_heads=2, use_spatial_transformer=True, transformer_depth=1,
        context_dim=16, use_checkpoint=use_checkpoint, legacy=False,
    )  # fmt: skip
    for p in unet.parameters():  # LDM zero-initialises proj_out / the output conv; make every layer matter
        torch.nn.init.normal_(p, std=0.05)
    return unet


def inputs(b: int = 1):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 4, 16, 16, generator=g)
    t = torch.full((b,), 500, dtype=torch.long)
    c = torch.randn(b, 77, 16, generator=g)
    return x, t, c


def test_place_labels_follow_module_names():
    unet = tiny_unet()
    expected = {"input_blocks": "down", "middle_block": "mid", "output_blocks": "up"}
    store = AttentionStore([16])
    with register_attention_controller(unet, store) as count:
        layers = [(n, m) for n, m in unet.named_modules() if isinstance(m, CrossAttention)]
        assert count == len(layers) > 0
        for name, module in layers:
            assert module.layer_name == name
            assert module.place == expected[name.split(".")[0]]
            assert module.controller is store
    assert place_of("down_blocks.2.attentions.0.transformer_blocks.0.attn2") == "down"
    with pytest.raises(ValueError, match="place"):
        place_of("time_embed.0")


def test_controller_restored_after_exception():
    unet = tiny_unet()
    modules = [m for m in unet.modules() if isinstance(m, CrossAttention)]
    modules[0].place, modules[0].layer_name = "old", "old-name"
    with pytest.raises(RuntimeError, match="boom"):
        with register_attention_controller(unet, AttentionStore([16])):
            raise RuntimeError("boom")
    assert all(m.controller is None for m in modules)
    assert (modules[0].place, modules[0].layer_name) == ("old", "old-name")


@pytest.mark.parametrize("use_checkpoint", [False, True])
def test_captured_maps_require_grad_and_carry_gradient(use_checkpoint: bool):
    unet = tiny_unet(use_checkpoint)
    x, t, c = inputs()
    x.requires_grad_(True)
    store = AttentionStore([8])  # the 8x8 level (ds 2): input_blocks.3, middle_block, output_blocks.0/1
    with register_attention_controller(unet, store):
        unet(x, t, context=c)
    maps = [m for ms in store.maps.values() for m in ms]
    assert maps and all(m.shape == (2, 64, 77) and m.requires_grad for m in maps)  # [B*heads, HW, 77], cross only
    assert set(store.layer_names) == {
        f"{b}.1.transformer_blocks.0.attn2" for b in ("input_blocks.3", "output_blocks.0", "output_blocks.1")
    } | {"middle_block.1.transformer_blocks.0.attn2"}
    agg = store.aggregate(1, 8)  # [1, 8, 8, 77]
    (grad,) = torch.autograd.grad(agg[..., 3].max(), x)
    assert grad.abs().sum() > 0


def test_only_chosen_layers_get_the_controller():
    unet = tiny_unet()
    store = AttentionStore([8])
    with register_attention_controller(unet, store, layers=["output_blocks.1"]) as count:
        x, t, c = inputs()
        with torch.no_grad():
            unet(x, t, context=c)
    assert count == 2  # attn1 and attn2 of that block
    assert store.layer_names == ["output_blocks.1.1.transformer_blocks.0.attn2"]
    assert all(m.controller is None for m in unet.modules() if isinstance(m, CrossAttention))
