"""Speed paths: no gradient-checkpoint recomputation while sampling (with or without Attend-and-Excite), the explicit
memory option that turns it on for the guidance pass, and the opt-in compiled UNet (equal to eager)."""

from __future__ import annotations

import pytest
import torch
from conftest import GOLDEN, GOLDEN_WEIGHTS, REPO, load_golden, rel_err, require_fixture
from omegaconf import OmegaConf

from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.guidance.attend_and_excite import AttendAndExcite
from ldm.models.diffusion.guidance.attend_excite_config import AttendExciteConfig
from ldm.modules.attention import BasicTransformerBlock
from ldm.modules.diffusionmodules.unet_blocks import ResBlock
from ldm.modules.diffusionmodules.util import compile_diffusion_model
from ldm.util import load_model_from_config


def checkpointed_tiny_sd():
    """The goldens' tiny SD model with ``use_checkpoint: True`` (as the released inference configs set it)."""
    config = OmegaConf.load(REPO / "configs" / "tests" / "golden_tiny_sd.yaml")
    config.model.params.unet_config.params.use_checkpoint = True
    model = load_model_from_config(config, require_fixture(GOLDEN_WEIGHTS["sd"]), strict=True).eval()
    blocks = [m for m in model.modules() if isinstance(m, (BasicTransformerBlock, ResBlock))]
    assert blocks and all(getattr(b, "checkpoint", getattr(b, "use_checkpoint", False)) for b in blocks)
    return model


class RecomputeCounter:
    """Counts block calls (module ``__call__``) and runs of each block's first layer; a checkpointed block runs its
    first layer once more in the backward than it is called, so ``recomputations = runs - calls``."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls = 0
        self.runs = 0
        self.handles = []
        for module in model.modules():
            if isinstance(module, BasicTransformerBlock):
                inner = module.norm1
            elif isinstance(module, ResBlock):
                inner = module.in_layers
            else:
                continue
            self.handles.append(module.register_forward_hook(self._call))
            self.handles.append(inner.register_forward_hook(self._run))

    def _call(self, *_) -> None:
        self.calls += 1

    def _run(self, *_) -> None:
        self.runs += 1

    @property
    def recomputations(self) -> int:
        return self.runs - self.calls

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def sample(model, guidance=None, steps: int = 2):
    inp = load_golden("ae/tiny_sd", "inputs.safetensors")
    out, _ = DDIMSampler(model).sample(
        steps, 2, (4, 32, 32), conditioning=inp["c"], eta=0.0, x_T=inp["x_T"], verbose=False,
        unconditional_guidance_scale=5.0, unconditional_conditioning=inp["uc"], latent_guidance=guidance,
    )  # fmt: skip
    return out


def ae_config(**kw) -> AttendExciteConfig:
    return AttendExciteConfig(
        token_indices=(2, 5), thresholds={0: 0.05}, max_iter_to_alter=2, max_refinement_steps=2, schedule_steps=None,
        **kw,
    )  # fmt: skip


@pytest.fixture(scope="module")
def model():
    require_fixture(GOLDEN / "ae" / "tiny_sd")
    return checkpointed_tiny_sd()


def test_training_mode_recomputes_so_the_counter_can_see_it(model):
    unet = model.model.diffusion_model
    x = torch.randn(1, 4, 32, 32, requires_grad=True)  # the UNet is frozen: gradients flow to the input only
    t, c = torch.tensor([500]), torch.randn(1, 77, 32)
    counter = RecomputeCounter(unet)
    try:
        unet.train()
        unet(x, t, context=c).square().mean().backward()
        trained = counter.recomputations
        counter.calls = counter.runs = 0
        unet.eval()
        unet(x, t, context=c).square().mean().backward()  # gradients in eval mode: no recomputation
        evaluated = counter.recomputations
    finally:
        counter.close()
        unet.eval()
        unet.zero_grad(set_to_none=True)
    assert trained == sum(isinstance(m, (BasicTransformerBlock, ResBlock)) for m in unet.modules())
    assert evaluated == 0


def test_sampling_never_recomputes(model):
    counter = RecomputeCounter(model)
    try:
        sample(model)
        plain = (counter.calls, counter.recomputations)
        counter.calls = counter.runs = 0
        guidance = AttendAndExcite(model.model.diffusion_model, ae_config())
        sample(model, guidance)
        guided = (counter.calls, counter.recomputations)
    finally:
        counter.close()
    assert plain[0] > 0 and plain[1] == 0
    assert guidance.num_forwards > 0  # the guidance pass ran (with gradients) ...
    assert guided[1] == 0  # ... and recomputed nothing


def test_checkpoint_guidance_option_recomputes_with_the_same_result(model):
    plain = AttendAndExcite(model.model.diffusion_model, ae_config())
    counter = RecomputeCounter(model)
    try:
        out_plain = sample(model, plain)
        assert counter.recomputations == 0
        checkpointed = AttendAndExcite(model.model.diffusion_model, ae_config(checkpoint_guidance=True))
        out_ckpt = sample(model, checkpointed)
        recomputed = counter.recomputations
    finally:
        counter.close()
    assert recomputed > 0
    assert checkpointed.num_forwards == plain.num_forwards
    assert rel_err(out_ckpt, out_plain) < 1e-5


@pytest.mark.slow
def test_compiled_unet_equals_eager():
    """Inductor compile of a smaller UNet than the goldens' (same block kinds: ResBlock, SpatialTransformer,
    down/up-sampling) so the compile stays within about a minute on 2 CPU cores."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    torch.manual_seed(0)
    unet = UNetModel(
        image_size=8, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[2], num_res_blocks=1,
        channel_mult=[1, 2], num_heads=2, use_spatial_transformer=True, context_dim=16, legacy=False,
    ).eval()  # fmt: skip
    for p in unet.parameters():  # zero-initialised output convs would hide the transformer path
        torch.nn.init.normal_(p, std=0.05)
    gen = torch.Generator().manual_seed(0)
    x, c = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 5, 16, generator=gen)
    t = torch.tensor([999, 10])
    with torch.no_grad():
        eager = unet(x, t, context=c)
        keys = list(unet.state_dict())
        compile_diffusion_model(unet)
        compiled = unet(x, t, context=c)
    assert list(unet.state_dict()) == keys  # checkpoints still load into a compiled model
    assert unet._compiled_call_impl is not None  # the compiled path is the one that ran
    assert rel_err(compiled, eager) < 1e-4


def build_with_ckpt_path(ckpt) -> torch.nn.Module:
    from ldm.util import instantiate_from_config

    config = OmegaConf.load(REPO / "configs" / "tests" / "golden_tiny_sd.yaml").model
    config.params.ckpt_path = str(ckpt)
    return instantiate_from_config(config)


def test_ckpt_path_build_skips_random_init_and_equals_the_ordinary_load(tmp_path):
    from safetensors.torch import save_file

    from ldm.util import load_state_dict_file

    reference = load_model_from_config(
        OmegaConf.load(REPO / "configs" / "tests" / "golden_tiny_sd.yaml"), require_fixture(GOLDEN_WEIGHTS["sd"])
    )
    fast = build_with_ckpt_path(GOLDEN_WEIGHTS["sd"])
    ref_state, fast_state = reference.state_dict(), fast.state_dict()
    for key, value in ref_state.items():
        if not key.startswith("embedding_manager."):  # built after the load from the loaded table, in both
            assert torch.equal(fast_state[key], value), key

    # Keys the checkpoint lacks get their module's ordinary initialisation, never NaN.
    state = load_state_dict_file(GOLDEN_WEIGHTS["sd"])
    dropped = ["model.diffusion_model.out.2.weight", "model.diffusion_model.input_blocks.0.0.weight"]
    partial = {k: v.contiguous() for k, v in state.items() if k not in dropped and k in ref_state}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    rebuilt = build_with_ckpt_path(tmp_path / "partial.safetensors").state_dict()
    assert all(bool(torch.isfinite(v).all()) for v in rebuilt.values() if v.is_floating_point())
    assert not bool(rebuilt[dropped[0]].any())  # zero_module's output conv: zeros, as an ordinary build makes it
    assert float(rebuilt[dropped[1]].std()) > 0  # an ordinary conv: its random initialisation
