"""CONFORM: the contrastive loss against the official pipeline's recorded maps and an independent computation."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import FIXTURES, require_fixture
from safetensors.torch import load_file

from ldm.guidance.conform.loss import conform_loss, group_embeddings, info_nce_loss

CONFORM = FIXTURES / "guidance" / "conform"
GROUPS = ((2, 3), (6, 7))  # "a red cat and a blue frog": (red, cat), (blue, frog)


def golden(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(require_fixture(CONFORM / f"{name}.safetensors")))


def golden_log() -> dict:
    return json.loads(require_fixture(CONFORM / "log.json").read_text())


# --- the loss on recorded maps ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("run, softmax_normalize", [("notebook", False), ("script", True)])
@pytest.mark.parametrize("step", [0, 1])
def test_loss_matches_official_on_recorded_maps(run: str, softmax_normalize: bool, step: int):
    maps = golden(f"{run}_sample0")
    ref = golden_log()["runs"][f"{run}_sample0"][step]["samples"][0]
    previous = maps.get(f"previous_maps_step{step}")
    assert (previous is not None) == ref["has_previous_maps"] == (step > 0)
    loss = conform_loss(maps[f"maps_step{step}"], previous, GROUPS, softmax_normalize=softmax_normalize)
    assert abs(float(loss) - ref["loss"]) <= 1e-5 * abs(ref["loss"])


def brute_force_info_nce(emb: torch.Tensor, labels: list[int], tau: float) -> float:
    """The InfoNCE of the module docstring written out with loops in float64 (an independent computation)."""
    e = emb.double()
    unit = [e[i] / e[i].norm() for i in range(len(labels))]
    s = [[float(unit[i] @ unit[j]) / tau for j in range(len(labels))] for i in range(len(labels))]
    terms = []
    for a in range(len(labels)):
        negatives = [n for n in range(len(labels)) if labels[n] != labels[a]]
        for p in range(len(labels)):
            if p != a and labels[p] == labels[a]:
                den = math.exp(s[a][p]) + sum(math.exp(s[a][n]) for n in negatives)
                terms.append(-math.log(math.exp(s[a][p]) / den))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("labels", [[0, 0, 1, 1], [0, 0, 0, 1, 2, 2], [0, 1, 0, 1, 2, 2, 2, 0]])
def test_info_nce_equals_the_written_out_formula(labels: list[int]):
    emb = torch.rand(len(labels), 40, generator=torch.Generator().manual_seed(len(labels)))
    ours = info_nce_loss(emb, torch.tensor(labels), temperature=0.3)
    assert abs(float(ours) - brute_force_info_nce(emb, labels, 0.3)) < 1e-5


def test_no_positive_or_no_negative_pair_is_zero_with_a_graph():
    emb = torch.rand(3, 8, requires_grad=True)
    for labels in ([0, 1, 2], [0, 0, 0]):
        loss = info_nce_loss(emb, torch.tensor(labels), 0.5)
        assert loss.item() == 0.0 and loss.requires_grad


def test_memory_makes_singletons_positive():
    """One word per group has no positive pair alone; with the previous step's maps it is its own positive."""
    maps = golden("notebook_sample0")
    singles = ((3,), (7,))
    assert float(conform_loss(maps["maps_step1"], None, singles)) == 0.0
    assert float(conform_loss(maps["maps_step1"], maps["previous_maps_step1"], singles)) > 0.0


def test_embeddings_keep_positions_1_to_75_and_label_groups():
    maps = torch.rand(4, 4, 77, generator=torch.Generator().manual_seed(0))
    emb, labels = group_embeddings(maps, ((1, 75), (2,)), smooth_attentions=False)
    assert labels.tolist() == [0, 0, 1]
    assert torch.equal(emb[1], maps[:, :, 75].flatten())
    soft, _ = group_embeddings(maps, ((1, 75), (2,)), softmax_normalize=True, smooth_attentions=False)
    expected = torch.softmax(100 * maps[:, :, 1:76], dim=-1)[:, :, 0].flatten()  # position 76 is not in the softmax
    assert torch.allclose(soft[0], expected)
    with pytest.raises(ValueError, match="twice"):
        group_embeddings(maps, ((2, 3), (3,)))


# --- the method on the tiny SD model against the official runs ------------------------------------------------------
RUNS = {  # our settings for each official run (50-step indices, rescaled to the 10 steps run)
    "notebook": {},
    "script": {"max_iter_to_alter": 25, "softmax_normalize": True, "iterative_refinement_steps": (0,)},
    "anchor": {"previous_attention_map_anchor_step": 5},
}


def run_ours(run: str, samples: list[int]):
    """Our CONFORM in DDIM (10 steps, scale 7.5, eta 0) on ``samples`` of the golden x_T, one batch."""
    from conftest import _golden_model

    from ldm.guidance.conform import Conform, ConformConfig
    from ldm.guidance.conform.config import scale_schedule
    from ldm.models.diffusion.ddim import DDIMSampler

    model = _golden_model("sd")
    inp = golden("inputs")
    n = len(samples)
    cfg = scale_schedule(ConformConfig(**RUNS[run]), 10)
    guidance = Conform(model, cfg, [GROUPS] * n)
    after: list[torch.Tensor] = []

    def record(x, t, i, num, c):
        out = guidance(x, t, i, num, c)
        after.append(out.clone())
        return out

    sampler = DDIMSampler(model)
    final, _ = sampler.sample(
        10, n, (4, 32, 32), conditioning=inp["c"].expand(n, -1, -1), eta=0.0, x_T=inp["x_T"][samples],
        unconditional_guidance_scale=7.5, unconditional_conditioning=inp["uc"].expand(n, -1, -1),
        latent_guidance=record, verbose=False,
    )  # fmt: skip
    return sampler, cfg, guidance, torch.stack(after), final


def rel(x: float, ref: float) -> float:
    return abs(x - ref) / abs(ref)


@pytest.mark.slow
@pytest.mark.parametrize("run, samples", [("notebook", [0]), ("notebook", [0, 1]), ("script", [0]), ("anchor", [0])])
def test_matches_official_pipeline(run: str, samples: list[int]):
    """Loss, refinement and latent after each guided step (1e-5), final latent (2e-5); batch 2 against the
    official batch-1 runs of each sample (its own batch of 2 shares one memory: README)."""
    from conftest import rel_err

    sampler, cfg, guidance, after, final = run_ours(run, samples)
    log = golden_log()["runs"]
    for k, b in enumerate(samples):
        ref = golden(f"{run}_sample{b}")
        assert torch.equal(torch.as_tensor(sampler.ddim_timesteps[::-1].copy()), ref["timesteps"])
        records = {r["step"]: r["groups"][k] for r in guidance.records}
        assert sorted(records) == list(range(cfg.max_iter_to_alter))
        for step in log[f"{run}_sample{b}"][: cfg.max_iter_to_alter]:
            i, official = step["i"], step["samples"][0]
            ours = records[i]
            assert rel(ours["loss"], official["loss"]) < 1e-5, f"sample {b} step {i}"
            if "refinement" in official:
                ref_r, our_r = official["refinement"], ours["refinement"]
                assert our_r["iterations"] == ref_r["iterations"] == cfg.max_refinement_steps
                for x, y in zip([*our_r["losses"], our_r["loss_out"]], [*ref_r["losses"], ref_r["loss_out"]]):
                    assert rel(x, y) < 1e-5, f"sample {b} step {i} refinement"
            else:
                assert "refinement" not in ours
            assert rel(ours["update_loss"], official["updates"][-1]["loss"]) < 1e-5
            assert rel_err(after[i, k], ref["latents_after_guidance"][i]) < 1e-5, f"sample {b} step {i}"
        assert rel_err(final[k], ref["latents_final"][0]) < 2e-5, f"sample {b}"


# --- groups, flags, CLI ------------------------------------------------------------------------------------------
def tiny_prompt(prompt: str):
    from conftest import _golden_model

    from ldm.guidance.tokens import prompt_tokens

    model = _golden_model("sd")
    return prompt_tokens(model, prompt), model.cond_stage_model.tokenizer


def test_groups_from_words_positions_and_ae_tokens():
    from ldm.guidance.conform.groups import parse_groups, sample_groups

    assert parse_groups("red cat|blue,frog") == [["red", "cat"], ["blue", "frog"]]
    tokens, tok = tiny_prompt("a red cat and a red frog")
    assert sample_groups("red cat|6 frog", tokens, tok, ()) == ((2, 3), (6, 7))
    assert sample_groups(" 2,3 | 7 ", tokens, tok, ()) == ((2, 3), (7,))
    # without --g_groups: the prompt's noun phrases (a modifier with its noun); with --ae_tokens only theirs
    assert sample_groups("", tokens, tok, ()) == ((2, 3), (6, 7))
    assert sample_groups("", tokens, tok, ((7,),)) == ((6, 7),)
    bare, _ = tiny_prompt("a cat and a frog")
    assert sample_groups("", bare, tok, ((2,), (5,))) == ((2,), (5,))  # the official [[2], [5]] for these
    assert sample_groups("", bare, tok, ((3,),)) == ((3,),)  # "and": in no phrase, a group of its own


@pytest.mark.parametrize(
    "spec, message",
    [
        ("red cat||frog", "--g_groups 'red cat||frog': an empty group"),
        ("red cat|red frog", r"position\(s\) \[2\] are in two groups"),
        ("red dog|frog", "--g_groups 'red dog|frog': 'dog'.*not in the prompt.*Token table"),
        ("red cat|9", "position 9 is outside the prompt's tokens 1..7"),
    ],
)
def test_bad_groups_are_one_clear_error(spec: str, message: str):
    from ldm.errors import UserError
    from ldm.guidance.conform.groups import sample_groups

    tokens, tok = tiny_prompt("a red cat and a red frog")
    with pytest.raises(UserError, match=message):
        sample_groups(spec, tokens, tok, ())


def test_schedule_rescaling_and_config_checks():
    from ldm.guidance.conform.config import ConformConfig, scale_schedule, step_size

    cfg = scale_schedule(ConformConfig(previous_attention_map_anchor_step=12), 10)
    assert (cfg.max_iter_to_alter, cfg.iterative_refinement_steps) == (6, (0, 2, 4))
    assert cfg.previous_attention_map_anchor_step == 2 and cfg.schedule_steps is None
    assert scale_schedule(ConformConfig(), 3).iterative_refinement_steps == (0, 1)  # 10 and 20 both land on 1
    assert step_size(cfg, 0, 10) == 20.0 and abs(step_size(cfg, 9, 10) - 20 * 0.5**0.5) < 1e-12
    for bad in ({"temperature": 0.0}, {"loss_reduction": "mean"}, {"iterative_refinement_steps": (-1,)}):
        with pytest.raises(ValueError):
            ConformConfig(**bad)


def test_stable_txt2img_with_conform(tmp_path):
    import importlib.util

    from conftest import GOLDEN_WEIGHTS, REPO

    from ldm.errors import UserError

    spec = importlib.util.spec_from_file_location("stable_txt2img", REPO / "scripts" / "stable_txt2img.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    common = [
        "--config", str(REPO / "configs/tests/golden_tiny_sd.yaml"), "--ckpt", str(GOLDEN_WEIGHTS["sd"]),
        "--prompt", "a red cat and a blue frog", "--guidance", "conform", "--H", "64", "--W", "64",
        "--ddim_steps", "2", "--n_samples", "1", "--n_iter", "1", "--precision", "full", "--outdir", str(tmp_path),
    ]  # fmt: skip
    script.main([*common, "--g_groups", "red cat|blue frog", "--g_max_refinement_steps", "1"])
    assert (tmp_path / "samples" / "00000.png").is_file()
    settings = json.loads(next(tmp_path.glob("settings-*.json")).read_text())
    assert settings["options"]["extra_settings"]["g_groups"] == "red cat|blue frog"
    with pytest.raises(UserError, match="found no token groups"):  # a prompt without a noun phrase
        script.main([*common[:4], "--prompt", "and and", *common[6:]])


# --- the official loop written out (per sample, whole UNet, a pass at every step): the oracle for the edge cases ----
class OfficialLoopOracle:
    """The loop of tests/fixtures/guidance/conform/README.md, straightforwardly: every step runs a pass per sample
    (guided or not), refinement steps run all iterations, and the memory is each sample's last pass of the step."""

    def __init__(self, unet, cfg, groups):
        from ldm.modules.attention_control import AttentionStore

        self.unet, self.cfg, self.groups = unet, cfg, groups
        self.store = AttentionStore([cfg.attention_res])
        self.memory: dict[int, torch.Tensor] = {}
        self.last: torch.Tensor | None = None

    def loss(self, z, t, c, b):
        from ldm.modules.attention_control import register_attention_controller

        self.store.reset()
        with register_attention_controller(self.unet, self.store):
            self.unet(z, t, context=c)  # the whole UNet; output unused
        res = self.cfg.attention_res
        maps = torch.cat([m.reshape(-1, res, res, 77) for v in self.store.maps.values() for m in v]).mean(0)
        self.last = maps.detach()
        return conform_loss(maps, self.memory.get(b), self.groups[b], temperature=self.cfg.temperature)

    def __call__(self, x, t, i, n, cond):
        cfg, out, latest = self.cfg, [], {}
        alpha = cfg.scale_factor * math.sqrt(torch.linspace(1.0, 0.5, n, dtype=torch.float64)[i].item())
        with torch.enable_grad():
            for b in range(x.shape[0]):
                args = (t[b : b + 1], cond[b : b + 1], b)
                z = x[b : b + 1].clone().requires_grad_(True)
                loss = self.loss(z, *args)
                if i in cfg.iterative_refinement_steps:
                    for _ in range(cfg.max_refinement_steps):
                        z = z.detach().requires_grad_(True)
                        loss = self.loss(z, *args)
                        if loss != 0:
                            z = z - alpha * torch.autograd.grad(loss, z)[0]
                    z = z.detach().requires_grad_(True)
                    loss = self.loss(z, *args)
                if i < cfg.max_iter_to_alter and loss != 0:
                    z = z - alpha * torch.autograd.grad(loss, z)[0]
                latest[b] = self.last
                out.append(z.detach())
        if cfg.memory_step(i):
            self.memory.update(latest)
        return torch.cat(out)


@pytest.mark.slow
@pytest.mark.parametrize(
    "settings",
    [
        {"max_iter_to_alter": 1, "iterative_refinement_steps": (0, 2)},  # refinement after the updates end
        {"max_iter_to_alter": 1, "iterative_refinement_steps": (3,), "previous_attention_map_anchor_step": 1},
        {"max_iter_to_alter": 3, "iterative_refinement_steps": (1,), "add_previous_attention_maps": False},
        {"max_iter_to_alter": 3, "iterative_refinement_steps": (0, 1), "singles": True},  # step 0: L = 0, no pass
    ],
)
def test_memory_and_schedule_match_the_official_loop(settings: dict):
    """Our loop (batched, truncated passes, no pass at unguided steps unless the memory needs one, no passes where
    L = 0 whatever the latent) equals the official loop; two samples with different groups (one has single-word
    groups), or both with single-word groups."""
    from conftest import _golden_model, rel_err

    from ldm.guidance.conform import Conform, ConformConfig
    from ldm.models.diffusion.ddim import DDIMSampler

    model = _golden_model("sd")
    inp = golden("inputs")
    settings = dict(settings)
    singles = settings.pop("singles", False)
    cfg = ConformConfig(max_refinement_steps=2, schedule_steps=None, **settings)
    groups = [((3,), (7,))] * 2 if singles else [GROUPS, ((3,), (7,))]
    results = []
    for guidance in (Conform(model, cfg, groups), OfficialLoopOracle(model.model.diffusion_model, cfg, groups)):
        out, _ = DDIMSampler(model).sample(
            4, 2, (4, 32, 32), conditioning=inp["c"].expand(2, -1, -1), eta=0.0, x_T=inp["x_T"],
            unconditional_guidance_scale=7.5, unconditional_conditioning=inp["uc"].expand(2, -1, -1),
            latent_guidance=guidance, verbose=False,
        )  # fmt: skip
        results.append(out)
    assert rel_err(results[0], results[1]) < 2e-5
