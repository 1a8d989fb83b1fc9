"""Attend-and-Excite: kernel, schedule, loss decrease, per-sample independence, the full-UNet oracle, the goldens."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import GOLDEN, _golden_model, load_golden, rel_err, require_fixture

from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.ddpm_sampler import DDPMSampler
from ldm.models.diffusion.guidance.attend_and_excite import AttendAndExcite
from ldm.models.diffusion.guidance.attend_excite_config import AttendExciteConfig, scale_schedule, step_size
from ldm.models.diffusion.guidance.attend_excite_maps import max_attention_per_token
from ldm.models.diffusion.guidance.smoothing import gaussian_kernel1d, smooth_maps
from ldm.models.diffusion.plms import PLMSSampler
from ldm.modules.attention_control import AttentionStore, register_attention_controller

GOLDEN_AE = {"thresholds": {0: 0.05, 10: 0.5, 20: 0.8}, "max_iter_to_alter": 25}  # rescaled to 10 steps


def model_and_inputs(name: str = "sd"):
    require_fixture(GOLDEN / "weights")
    return _golden_model(name), load_golden(f"ae/tiny_{name}", "inputs.safetensors")


# --- reference kernel (A&E utils/gaussian_smoothing.py, written out independently) ---------------------------------
def reference_kernel2d(k: int, sigma: float) -> torch.Tensor:
    x = torch.arange(k, dtype=torch.float64)
    g = torch.exp(-(((x - (k - 1) / 2) / (2 * sigma)) ** 2))
    kern = g[:, None] * g[None, :]
    return (kern / kern.sum()).float()


def test_kernel_is_the_reference_one():
    assert torch.allclose(gaussian_kernel1d(3, 0.5), torch.tensor([0.2119, 0.5761, 0.2119]), atol=1e-4)
    maps = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    ref = F.conv2d(F.pad(maps[:, None], (1, 1, 1, 1), mode="reflect"), reference_kernel2d(3, 0.5)[None, None])
    assert torch.allclose(smooth_maps(maps, 3, 0.5), ref[:, 0], atol=1e-6)


def test_schedule_scaling_and_step_size():
    cfg = scale_schedule(AttendExciteConfig(), 10)
    assert cfg.thresholds == {0: 0.05, 2: 0.5, 4: 0.8} and cfg.max_iter_to_alter == 5 and cfg.schedule_steps is None
    assert scale_schedule(AttendExciteConfig(), 3).thresholds == {0: 0.05, 1: 0.8}  # 10 and 20 both land on 1
    assert scale_schedule(cfg, 7) is cfg  # absolute indices stay
    assert step_size(AttendExciteConfig(), 0, 51) == 20.0
    assert abs(step_size(AttendExciteConfig(), 10, 51) - 20 * np.sqrt(1 - 0.5 * 10 / 50)) < 1e-9


def test_group_score_is_max_over_positions():
    maps = torch.rand(16, 16, 77, generator=torch.Generator().manual_seed(0))
    cfg = AttendExciteConfig()
    single = max_attention_per_token(maps, ((2,), (3,), (4,)), cfg)
    grouped = max_attention_per_token(maps, ((2,), (3, 4)), cfg)
    assert torch.allclose(grouped, torch.stack([single[0], single[1:].max()]))


# --- the straightforward implementation (diffusers' loop, full UNet, batch 1 per sample): the oracle -------------
class FullUNetOracle:
    def __init__(self, unet, cfg: AttendExciteConfig, indices: list[int], every_step: bool = False):
        self.unet, self.cfg, self.indices, self.every_step = unet, cfg, indices, every_step
        self.store = AttentionStore([cfg.attention_res])
        self.forwards = 0

    def loss(self, z, t, c):
        self.store.reset()
        with register_attention_controller(self.unet, self.store):
            self.unet(z, t, context=c)  # the whole UNet; output unused
        self.forwards += 1
        res = self.cfg.attention_res
        maps = torch.cat([m.reshape(-1, res, res, 77) for v in self.store.maps.values() for m in v]).mean(0)
        a = torch.softmax(maps[:, :, 1:-1] * 100, dim=-1)
        kern = reference_kernel2d(3, 0.5)[None, None]
        maxes = [
            F.conv2d(F.pad(a[None, None, :, :, i - 1], (1, 1, 1, 1), mode="reflect"), kern).max() for i in self.indices
        ]
        return max(max(0, 1.0 - m) for m in maxes)

    def __call__(self, x, t, i, n, cond):
        cfg, out = self.cfg, []
        alpha = cfg.scale_factor * np.sqrt(np.linspace(1.0, 0.5, n)[i])
        if not self.every_step and i >= cfg.max_iter_to_alter and i not in cfg.thresholds:
            return x
        with torch.enable_grad():
            for b in range(x.shape[0]):
                args = (t[b : b + 1], cond[b : b + 1])
                z = x[b : b + 1].clone().requires_grad_(True)
                loss = self.loss(z, *args)
                if i in cfg.thresholds and loss > 1.0 - cfg.thresholds[i]:
                    it = 0
                    while loss > max(0.0, 1.0 - cfg.thresholds[i]):
                        it += 1
                        z = z.detach().requires_grad_(True)
                        loss = self.loss(z, *args)
                        if loss != 0:
                            z = z - alpha * torch.autograd.grad(loss, z)[0]
                        if it >= cfg.max_refinement_steps:
                            break
                    z = z.detach().requires_grad_(True)
                    loss = self.loss(z, *args)
                if i < cfg.max_iter_to_alter and loss != 0:
                    z = z - alpha * torch.autograd.grad(loss, z)[0]
                out.append(z.detach())
        return torch.cat(out)


def ddim(model, inp, n, steps, guidance, scale=5.0):
    out, _ = DDIMSampler(model).sample(
        steps, n, (4, 32, 32), conditioning=inp["c"][:n], eta=0.0, x_T=inp["x_T"][:n], verbose=False,
        unconditional_guidance_scale=scale, unconditional_conditioning=inp["uc"][:n], latent_guidance=guidance,
    )  # fmt: skip
    return out


def test_truncated_pass_equals_full_unet_oracle():
    model, inp = model_and_inputs("sd")
    unet = model.model.diffusion_model
    cfg = AttendExciteConfig(
        token_indices=(2, 5), thresholds={0: 0.05, 2: 0.5}, max_iter_to_alter=2, max_refinement_steps=3,
        schedule_steps=None,
    )  # fmt: skip
    ours = AttendAndExcite(unet, cfg)
    oracle = FullUNetOracle(unet, cfg, [2, 5])
    x_ours = ddim(model, inp, 2, 4, ours)
    x_oracle = ddim(model, inp, 2, 4, oracle)
    assert rel_err(x_ours, x_oracle) < 1e-5
    assert ours.num_sample_forwards < oracle.forwards  # shared forwards, no re-evaluation without an update
    assert ours.records[0]["groups"][0]["refinement"]["iterations"] >= 1


def test_one_update_lowers_the_loss_and_samples_are_independent():
    model, inp = model_and_inputs("sd")
    unet = model.model.diffusion_model
    cfg = AttendExciteConfig(token_indices=(2, 5), thresholds={}, max_iter_to_alter=1, schedule_steps=None)
    x, c = inp["x_T"], inp["c"]
    t = torch.full((2,), 901, dtype=torch.long)
    batch = AttendAndExcite(unet, cfg)
    with torch.no_grad():
        z = batch(x, t, 0, 10, c)
    alone = torch.cat([AttendAndExcite(unet, cfg)(x[b : b + 1], t[:1], 0, 10, c[b : b + 1]) for b in range(2)])
    assert rel_err(z, alone) < 1e-5 and not torch.equal(z, x)
    probe = AttendExciteConfig(token_indices=(2, 5), thresholds={0: 0.0}, max_iter_to_alter=0, max_refinement_steps=0)
    before = [g["loss"] for g in batch.records[0]["groups"]]
    after_guid = AttendAndExcite(unet, probe)
    after_guid(z, t, 0, 10, c)  # records the loss at z (threshold 0: refine_target 1, so no refinement runs)
    after = [g["loss"] for g in after_guid.records[0]["groups"]]
    assert all(a < b for a, b in zip(after, before))


def test_shared_loss_on_identical_samples_halves_the_step():
    model, inp = model_and_inputs("sd")
    unet = model.model.diffusion_model
    x, c = inp["x_T"][:1].repeat(2, 1, 1, 1), inp["c"][:1].repeat(2, 1, 1)
    t = torch.full((2,), 901, dtype=torch.long)
    base = dict(token_indices=(2, 5), thresholds={}, max_iter_to_alter=1, schedule_steps=None)
    shared = AttendAndExcite(unet, AttendExciteConfig(**base, loss_reduction="shared"))(x, t, 0, 10, c)
    half = AttendAndExcite(unet, AttendExciteConfig(**base, scale_factor=10.0))(x, t, 0, 10, c)
    assert rel_err(shared, half) < 1e-5


def test_plms_ddpm_and_no_cfg_run_with_guidance():
    model, inp = model_and_inputs("sd")
    unet = model.model.diffusion_model
    cfg = AttendExciteConfig(token_indices=(2, 5), thresholds={}, max_iter_to_alter=2, schedule_steps=None)
    common = dict(conditioning=inp["c"][:1], x_T=inp["x_T"][:1], verbose=False)
    for sampler, kw in ((PLMSSampler(model), {"eta": 0.0}), (DDPMSampler(model), {})):
        for scale in (5.0, 1.0):
            uc = inp["uc"][:1] if scale != 1.0 else None
            guid = AttendAndExcite(unet, cfg)
            args = dict(unconditional_guidance_scale=scale, unconditional_conditioning=uc, **common, **kw)
            guided, _ = sampler.sample(3, 1, (4, 32, 32), latent_guidance=guid, **args)
            plain, _ = sampler.sample(3, 1, (4, 32, 32), generator=torch.Generator().manual_seed(0), **args)
            assert len(guid.records) == 2 and guid.num_forwards == 2
            assert torch.isfinite(guided).all() and not torch.allclose(guided, plain)


def test_non_finite_loss_skips_with_one_warning(caplog):
    model, inp = model_and_inputs("sd")
    unet = model.model.diffusion_model
    cfg = AttendExciteConfig(token_indices=(2, 5), thresholds={}, max_iter_to_alter=5, schedule_steps=None)
    c = inp["c"].clone()
    c[1, 3] = float("nan")
    guid = AttendAndExcite(unet, cfg)
    t = torch.full((2,), 901, dtype=torch.long)
    x = inp["x_T"]
    with caplog.at_level(logging.WARNING):
        z = guid(x, t, 0, 10, c)
        guid(z, t, 1, 10, c)
    assert torch.equal(z[1], x[1]) and not torch.equal(z[0], x[0])
    assert sum("non-finite" in r.getMessage() for r in caplog.records) == 1


def test_empty_tokens_is_plain_sampling():
    model, inp = model_and_inputs("sd")
    guid = AttendAndExcite(model.model.diffusion_model, AttendExciteConfig())
    x = inp["x_T"]
    assert guid(x, torch.full((2,), 901), 0, 50, inp["c"]) is x and guid.num_forwards == 0


def test_bad_index_is_a_clear_error():
    model, inp = model_and_inputs("sd")
    guid = AttendAndExcite(model.model.diffusion_model, AttendExciteConfig(token_indices=(0,)))
    with pytest.raises(ValueError, match="start token"):
        guid(inp["x_T"], torch.full((2,), 901), 0, 50, inp["c"])


# --- against the diffusers pipeline (goldens) ----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["batch", "single"])
@pytest.mark.parametrize("name", ["sd", "ldm"])
def test_matches_diffusers_golden(name: str, mode: str):
    model, inp = model_and_inputs(name)
    golden = load_golden(f"ae/tiny_{name}", f"{mode}.safetensors")
    log = json.loads(require_fixture(GOLDEN / "ae" / f"tiny_{name}" / "log.json").read_text())[mode]
    n = 2 if mode == "batch" else 1
    cfg = scale_schedule(AttendExciteConfig(token_indices=(2, 5), **GOLDEN_AE), 10)
    sampler = DDIMSampler(model)
    sampler.make_schedule(10)
    assert torch.equal(torch.as_tensor(sampler.ddim_timesteps[::-1].copy()), golden["timesteps"])
    guid = AttendAndExcite(model.model.diffusion_model, cfg)
    after: list[torch.Tensor] = []

    def record(x, t, i, num, c):
        out = guid(x, t, i, num, c)
        after.append(out.clone())
        return out

    final = ddim(model, inp, n, 10, record)
    assert rel_err(final, golden["latents_final"]) < 5e-5
    assert rel_err(after[0], golden["latents_after_ae_step0"]) < 5e-5
    for i in range(10):
        assert rel_err(after[i], golden["latents_after_ae"][i]) < 5e-5, f"step {i}"
    records = {r["step"]: r["groups"] for r in guid.records}
    assert sorted(records) == list(range(5))  # steps 5-9 neither update nor refine: no pass at all
    for step in log["steps"]:
        if step["i"] not in records:
            continue
        for ref, ours in zip(step["samples"], records[step["i"]]):
            assert abs(ref["loss"] - ours["loss"]) < 1e-4
            ref_r, our_r = ref.get("refinement"), ours.get("refinement")
            assert (ref_r is None) == (our_r is None)
            if ref_r:
                assert (our_r["iterations"], our_r["hit_max"]) == (ref_r["iterations"], ref_r["hit_max"])
                # the log lists every iteration's loss, then the loss of the refined latent
                assert np.allclose([*our_r["losses"], our_r["loss_out"]], ref_r["losses"], atol=1e-4)
            if ref.get("update"):
                assert abs(ref["update"]["loss"] - ours["update_loss"]) < 1e-4
