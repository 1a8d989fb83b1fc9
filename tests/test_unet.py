"""UNet and attention: checkpoint key layout, golden eps, SDPA vs explicit attention, the capture seam, stop_after,
attention_block_ds and gradient checkpointing."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path

import pytest
import torch
from einops import rearrange
from omegaconf import OmegaConf
from safetensors.torch import load_file

from ldm.modules.attention import AttentionController, CrossAttention, SpatialTransformer
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from ldm.modules.diffusionmodules.util import timestep_embedding

FIXTURES = Path(__file__).resolve().parent / "fixtures"
GOLDEN = FIXTURES / "golden"
PREFIX = "model.diffusion_model."

TINY = dict(
    image_size=32,
    in_channels=4,
    out_channels=4,
    model_channels=32,
    attention_resolutions=[1, 2],
    num_res_blocks=1,
    channel_mult=[1, 2, 2],
    num_heads=2,
    use_spatial_transformer=True,
    transformer_depth=1,
    context_dim=32,
    legacy=False,
)


def fixture(path: Path) -> Path:
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"fixture missing: {path}")
        pytest.skip(f"fixture missing: {path}")
    return path


def tiny_unet(seed: int = 0, **overrides) -> UNetModel:
    """The golden tiny UNet with every parameter redrawn (LDM zero-initialises proj_out and the output conv)."""
    model = UNetModel(**{**TINY, **overrides})
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(noise / math.sqrt(fan_in))
    return model


def inputs(batch: int = 2, size: int = 32, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, size, size, generator=gen)
    t = torch.tensor([500, 20, 999, 0][:batch])
    c = torch.randn(batch, 77, 32, generator=gen)
    return x, t, c


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


class Recorder:
    """An AttentionController that keeps every cross-attention map it is given (with its graph)."""

    def __init__(self, cross_only: bool = True) -> None:
        self.cross_only = cross_only
        self.maps: list[tuple[str, torch.Tensor]] = []

    def wants(self, is_cross: bool, place: str, layer_name: str, num_queries: int) -> bool:
        return is_cross or not self.cross_only

    def __call__(self, probs: torch.Tensor, is_cross: bool, place: str, layer_name: str) -> None:
        self.maps.append((layer_name, probs))


def attach(model: UNetModel, controller: AttentionController) -> list[str]:
    names = []
    for name, module in model.named_modules():
        if isinstance(module, CrossAttention):
            module.controller, module.layer_name = controller, name
            names.append(name)
    return names


# --- released checkpoint layout -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "manifest, context_dim",
    [("sd_v1_state_dict.json", 768), ("ldm_txt2img_1p4B_state_dict.json", 1280)],
)
def test_state_dict_matches_released_layout(manifest: str, context_dim: int) -> None:
    keys = json.loads(fixture(FIXTURES / manifest).read_text())["keys"]
    expected = {k[len(PREFIX) :]: list(v) for k, v in keys.items() if k.startswith(PREFIX)}
    with torch.device("meta"):
        model = UNetModel(
            image_size=32,
            in_channels=4,
            out_channels=4,
            model_channels=320,
            attention_resolutions=[4, 2, 1],
            num_res_blocks=2,
            channel_mult=[1, 2, 4, 4],
            num_heads=8,
            use_spatial_transformer=True,
            transformer_depth=1,
            context_dim=context_dim,
            use_checkpoint=True,
            legacy=False,
        )
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(got) - set(expected)) == [] and sorted(set(expected) - set(got)) == []
    assert got == expected
    # Reference spec 1.10: 16 transformers, ds 1/2/4 at in 1,2/4,5/7,8, mid ds 8, out 3-5/6-8/9-11.
    assert model.attention_block_ds == {
        **{f"input_blocks.{i}": ds for i, ds in [(1, 1), (2, 1), (4, 2), (5, 2), (7, 4), (8, 4)]},
        "middle_block": 8,
        **{f"output_blocks.{i}": 4 if i < 6 else 2 if i < 9 else 1 for i in range(3, 12)},
    }


# --- golden eps -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_sdpa", [True, False])
@pytest.mark.parametrize("name, weights", [("tiny_sd", "tiny_sd.ckpt"), ("tiny_ldm", "tiny_ldm.safetensors")])
def test_golden_eps(name: str, weights: str, use_sdpa: bool) -> None:
    config = OmegaConf.load(fixture(GOLDEN / "configs" / f"{name}.yaml")).model.params.unet_config
    path = fixture(GOLDEN / "weights" / weights)
    if path.suffix == ".safetensors":
        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    model = UNetModel(**OmegaConf.to_container(config.params), use_sdpa=use_sdpa).eval()
    model.load_state_dict({k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}, strict=True)
    inp = load_file(fixture(GOLDEN / name / "inputs.safetensors"))
    golden = load_file(fixture(GOLDEN / name / "eps.safetensors"))["eps"]
    with torch.no_grad():
        eps = model(inp["x_eps"], inp["t_eps"], inp["c"])
    assert rel_err(eps, golden) < 1e-5


# --- building blocks ------------------------------------------------------------------------------------------------


def test_timestep_embedding_formula() -> None:
    t = torch.tensor([0, 7, 500, 999])
    dim, half = 9, 4
    emb = timestep_embedding(t, dim)
    assert emb.shape == (4, dim)
    for row, step in zip(emb, t.tolist()):
        freqs = [10000 ** (-i / half) for i in range(half)]
        expected = [math.cos(step * f) for f in freqs] + [math.sin(step * f) for f in freqs] + [0.0]
        assert torch.allclose(row.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-4)
    assert torch.equal(timestep_embedding(t, 3, repeat_only=True), t[:, None].repeat(1, 3))


def test_cross_attention_mask_sdpa_matches_explicit() -> None:
    torch.manual_seed(0)
    attn = CrossAttention(16, context_dim=8, heads=2, dim_head=4)
    x, ctx = torch.randn(3, 5, 16), torch.randn(3, 6, 8)
    mask = torch.rand(3, 6) > 0.4
    mask[:, 0] = True
    rec = Recorder()
    attn.controller = rec
    explicit = attn(x, ctx, mask=mask)
    attn.controller = None
    fused = attn(x, ctx, mask=mask)
    assert rel_err(fused, explicit) < 1e-5
    probs = rec.maps[0][1]  # [B*heads, N, M], (b h) batch-major
    assert probs.shape == (6, 5, 6)
    keep = mask.repeat_interleave(2, dim=0)[:, None, :].expand_as(probs)
    assert torch.all(probs[~keep] == 0)
    assert torch.allclose(probs.sum(-1), torch.ones(6, 5))


# --- UNet: attention paths and the capture seam ---------------------------------------------------------------------


def test_sdpa_matches_explicit_path() -> None:
    x, t, c = inputs()
    fused, explicit = tiny_unet(), tiny_unet(use_sdpa=False)
    assert all(m.use_sdpa is False for m in explicit.modules() if isinstance(m, CrossAttention))
    with torch.no_grad():
        a, b = fused(x, t, c), explicit(x, t, c)
    assert b.abs().max() > 0.1  # random weights: the output is not trivially zero
    assert rel_err(a, b) < 1e-5


def test_controller_receives_cross_maps_with_grad() -> None:
    model = tiny_unet(use_checkpoint=True).train()
    x, t, c = inputs()
    x.requires_grad_(True)
    rec = Recorder()
    names = attach(model, rec)
    captured_inputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    target = "input_blocks.3.1.transformer_blocks.0.attn2"

    def keep_inputs(module, args, kwargs, out) -> None:
        captured_inputs[target] = (args[0], kwargs["context"])

    model.get_submodule(target).register_forward_hook(keep_inputs, with_kwargs=True)
    model(x, t, c)
    cross_layers = [n for n in names if n.endswith("attn2")]
    assert [name for name, _ in rec.maps] == cross_layers  # execution order, each once, self-attention skipped
    sizes = {name: probs.shape for name, probs in rec.maps}
    assert sizes["input_blocks.1.1.transformer_blocks.0.attn2"] == (2 * 2, 32 * 32, 77)
    assert sizes["middle_block.1.transformer_blocks.0.attn2"] == (2 * 2, 8 * 8, 77)
    assert all(probs.requires_grad for _, probs in rec.maps)

    # Independent recomputation of one map: heads folded batch-major, softmax(q k^T / sqrt(d)).
    layer = model.get_submodule(target)
    hidden, context = captured_inputs[target]
    q = rearrange(layer.to_q(hidden), "b n (h d) -> (b h) n d", h=2)
    k = rearrange(layer.to_k(context), "b m (h d) -> (b h) m d", h=2)
    expected = (q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])).softmax(-1)
    assert torch.allclose(dict(rec.maps)[target], expected, atol=1e-6)

    # Gradients reach the latent through a captured map (A&E needs this under checkpointing).
    dict(rec.maps)[target][..., 3].max().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_controller_called_once_per_layer_with_checkpointing() -> None:
    model = tiny_unet(use_checkpoint=True).train()
    x, t, c = inputs()
    x.requires_grad_(True)
    rec = Recorder(cross_only=False)
    names = attach(model, rec)
    out = model(x, t, c)
    loss = out.square().mean() + sum(probs[..., 0].mean() for _, probs in rec.maps)
    loss.backward()
    assert Counter(name for name, _ in rec.maps) == Counter(names)
    assert len(names) == 2 * 7  # 7 transformer blocks, self + cross each


def test_controller_that_wants_nothing_changes_nothing() -> None:
    model = tiny_unet()
    x, t, c = inputs()
    with torch.no_grad():
        plain = model(x, t, c)
        rec = Recorder()
        rec.wants = lambda *args: False  # type: ignore[method-assign]
        attach(model, rec)
        assert torch.equal(model(x, t, c), plain)
    assert rec.maps == []


# --- stop_after and attention_block_ds ------------------------------------------------------------------------------


@pytest.mark.parametrize("stop", ["input_blocks.3", "middle_block", "output_blocks.3", "output_blocks.5"])
def test_stop_after_returns_block_output_and_runs_nothing_later(stop: str) -> None:
    model = tiny_unet()
    x, t, c = inputs()
    order = model.block_names
    seen: list[str] = []
    outputs: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def fn(module, args, out):
            seen.append(name)
            outputs[name] = out

        return fn

    for name in order:
        model.get_submodule(name).register_forward_hook(hook(name))
    with torch.no_grad():
        model(x, t, c)
        full = outputs[stop]
        seen.clear()
        partial = model(x, t, c, stop_after=stop)
    assert torch.equal(partial, full)
    assert seen == order[: order.index(stop) + 1]


def test_stop_after_unknown_name() -> None:
    model = tiny_unet()
    x, t, c = inputs(batch=1)
    with pytest.raises(ValueError, match="output_blocks.5"):
        model(x, t, c, stop_after="output_blocks.6")


def test_attention_block_ds_matches_feature_sizes() -> None:
    model = tiny_unet()
    x, t, c = inputs(batch=1, size=32)
    sizes: dict[str, tuple[int, int]] = {}

    def record(block: str):
        def hook(module, args) -> None:
            sizes[block] = tuple(args[0].shape[-2:])

        return hook

    for name, module in model.named_modules():
        if isinstance(module, SpatialTransformer):
            module.register_forward_pre_hook(record(name.rsplit(".", 1)[0]))
    with torch.no_grad():
        model(x, t, c)
    assert set(model.attention_block_ds) == set(sizes)
    for block, ds in model.attention_block_ds.items():
        assert sizes[block] == (32 // ds, 32 // ds), block
    # README of the goldens: cross-attention at 32x32, 16x16 and 8x8 (the middle block) for a 32x32 latent.
    assert sorted(set(model.attention_block_ds.values())) == [1, 2, 4]
    assert model.attention_block_ds["middle_block"] == 4


# --- gradient checkpointing -----------------------------------------------------------------------------------------


def test_checkpointing_gives_same_gradients_and_recomputes() -> None:
    x, t, c = inputs()
    grads = []
    calls = []
    for use_checkpoint in (False, True):
        model = tiny_unet(use_checkpoint=use_checkpoint).train()
        counter: Counter[str] = Counter()
        for key, name in [
            ("res", "input_blocks.1.0.in_layers"),
            ("attn", "input_blocks.1.1.transformer_blocks.0.norm1"),
        ]:
            model.get_submodule(name).register_forward_hook(lambda *a, key=key, counter=counter: counter.update([key]))
        xi, ci = x.clone().requires_grad_(True), c.clone().requires_grad_(True)
        model(xi, t, ci).square().mean().backward()
        grads.append([xi.grad, ci.grad] + [p.grad for p in model.parameters()])
        calls.append(counter)
    assert calls[0] == Counter(res=1, attn=1)
    assert calls[1] == Counter(res=2, attn=2)  # recomputed in backward: checkpointing is really on
    for g0, g1 in zip(*grads):
        assert torch.allclose(g0, g1, rtol=1e-5, atol=1e-7)
