"""SynGen: the loss on the official maps, the distance against torch's own KL, and the method against the goldens."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FIXTURES, rel_err, require_fixture

from ldm.guidance.syngen.loss import Binding, binding_loss, pixel_distributions, symmetric_kl

SYNGEN = FIXTURES / "guidance" / "syngen"
RUNS = ("cat_frog", "bowl_table", "circle_square_entities")


def golden_log() -> dict:
    return json.loads(require_fixture(SYNGEN / "log.json").read_text())


def golden(name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(require_fixture(SYNGEN / f"{name}.safetensors")))


def official_bindings(subtrees: list) -> list[Binding]:
    """The official ``subtrees_indices`` ([modifier..., noun], an entry a position or a list of them) as bindings."""

    def group(entry) -> tuple[int, ...]:
        return tuple(entry) if isinstance(entry, list) else (entry,)

    return [Binding(group(s[-1]), tuple(group(m) for m in s[:-1])) for s in subtrees]


def test_symmetric_kl_is_torch_categorical_kl():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 256, generator=gen) * 100
    p, q = torch.distributions.Categorical(probs=a), torch.distributions.Categorical(probs=b)
    expected = (torch.distributions.kl_divergence(p, q) + torch.distributions.kl_divergence(q, p)) / 2
    ours = symmetric_kl(a / a.sum(), b / b.sum())
    assert torch.allclose(ours, expected, rtol=1e-6)
    assert float(symmetric_kl(a / a.sum(), a / a.sum())) == 0.0


def test_pixel_distributions_sum_to_one_and_ignore_scale():
    maps = torch.rand(16, 16, 77, generator=torch.Generator().manual_seed(1))
    dist = pixel_distributions(maps, [1, 2, 5])
    assert dist.shape == (3, 256) and torch.allclose(dist.sum(-1), torch.ones(3))
    assert torch.allclose(pixel_distributions(maps * 100, [1, 2, 5]), dist)
    assert torch.equal(dist[2], (maps[:, :, 5] / maps[:, :, 5].sum()).flatten())


@pytest.mark.parametrize("run", RUNS)
def test_loss_on_the_official_maps_matches_the_official_loss(run):
    log = golden_log()["runs"][run]
    maps = golden(run)["maps"]  # [3, 16, 16, n]: start token, prompt, end token
    n_prompt = maps.shape[-1] - 2
    bindings = official_bindings(log["subtrees_indices"])
    for step in range(maps.shape[0]):
        loss = binding_loss(maps[step], bindings, range(1, n_prompt + 1))
        expected = log["losses"][step]
        assert abs(float(loss) - expected) <= 1e-5 * abs(expected), (run, step, float(loss), expected)


def test_loss_terms_by_hand():
    """Two one-position words and a third word: L = d(m,n) - (d(m,u) + d(n,u)) / 2; a bare noun: -d(n,u)."""
    maps = torch.rand(4, 4, 5, generator=torch.Generator().manual_seed(2)) + 0.1
    dist = pixel_distributions(maps, [1, 2, 3])
    d = lambda i, j: symmetric_kl(dist[i], dist[j])  # noqa: E731
    loss = binding_loss(maps, [Binding((2,), ((1,),))], [1, 2, 3])
    assert torch.allclose(loss, d(0, 1) - (d(0, 2) + d(1, 2)) / 2)
    assert torch.allclose(binding_loss(maps, [Binding((2,))], [1, 2, 3]), -(d(1, 0) + d(1, 2)) / 2)
    grouped = binding_loss(maps, [Binding((3,), ((1, 2),))], [1, 2, 3])  # no outside word: L_pos only
    assert torch.allclose(grouped, torch.maximum(d(0, 2), d(1, 2)))
    assert float(binding_loss(maps, [], [1, 2, 3])) == 0.0
    with pytest.raises(ValueError, match="not prompt positions"):
        binding_loss(maps, [Binding((7,), ((1,),))], [1, 2, 3])


def test_loss_gradient_flows_to_the_maps():
    maps = (torch.rand(4, 4, 5, generator=torch.Generator().manual_seed(3)) + 0.1).requires_grad_(True)
    binding_loss(maps, [Binding((2,), ((1,),))], [1, 2, 3, 4]).backward()
    assert maps.grad is not None and maps.grad[:, :, 1:5].abs().sum() > 0 and maps.grad[:, :, 0].abs().sum() == 0


# --- the method on the tiny SD model against the official pipeline ------------------------------------------------
GOLDEN_STEPS = 50  # the official default; SynGen updates at steps 0..24
GOLDEN_SCALE = 7.5


def tiny_sd():
    from conftest import _golden_model

    require_fixture(FIXTURES / "golden" / "weights")
    return _golden_model("sd")


def run_syngen(model, runs: list[str], config=None):
    """DDIM 50 steps, CFG 7.5 from the goldens' x_T; returns (final latents, per-step guided latents, guidance)."""
    from safetensors.torch import load_file

    from ldm.guidance.syngen import SynGenConfig
    from ldm.guidance.syngen.config import for_steps
    from ldm.guidance.syngen.method import SynGen, sample_target
    from ldm.guidance.tokens import prompt_tokens
    from ldm.models.diffusion.ddim import DDIMSampler

    log = golden_log()["runs"]
    inputs = load_file(str(SYNGEN / "inputs.safetensors"))
    prompts = [log[r]["prompt"] for r in runs]
    x_t = torch.cat([inputs["x_T"][log[r]["x_T_row"]][None] for r in runs])  # [n, 4, 32, 32]
    with torch.no_grad():
        c = model.get_learned_conditioning(prompts)  # [n, 77, 32]
        uc = model.get_learned_conditioning(len(runs) * [""])
    for b, r in enumerate(runs):
        assert rel_err(c[b], inputs[f"c_{r}"][0]) < 1e-5 and rel_err(uc[b], inputs["uc"][0]) < 1e-5
    targets = []
    for r in runs:
        cfg = for_steps(config or SynGenConfig(parser="rules", include_entities=log[r]["include_entities"]),
                        GOLDEN_STEPS)  # fmt: skip
        targets.append(sample_target(prompt_tokens(model, log[r]["prompt"]), cfg))
    guidance = SynGen(model, cfg, targets)
    after: list[torch.Tensor] = []

    def record(x, t, i, num, cond):
        out = guidance(x, t, i, num, cond)
        after.append(out.clone())
        return out

    sampler = DDIMSampler(model)
    final, _ = sampler.sample(
        GOLDEN_STEPS, len(runs), (4, 32, 32), conditioning=c, eta=0.0, x_T=x_t, verbose=False,
        unconditional_guidance_scale=GOLDEN_SCALE, unconditional_conditioning=uc, latent_guidance=record,
    )  # fmt: skip
    assert torch.equal(torch.as_tensor(sampler.ddim_timesteps[::-1].copy()), golden(runs[0])["timesteps"])
    return final, after, guidance


def check_against_golden(run: str, sample: int, final, after, guidance) -> None:
    log = golden_log()
    ref, gold = log["runs"][run], golden(run)
    official = {tuple(sorted(b.positions)) for b in official_bindings(ref["subtrees_indices"])}
    ours = {tuple(sorted(b.positions)) for b in guidance.targets[sample].extras["bindings"]}
    assert ours == official
    losses = [g["loss"] for rec in guidance.records for g in rec["groups"] if g["samples"] == [sample]]
    assert len(losses) == 25 and [rec["step"] for rec in guidance.records] == list(range(25))
    scale = max(abs(v) for v in ref["losses"])  # losses pass through 0: relative to the run's loss scale
    for step, (mine, theirs) in enumerate(zip(losses, ref["losses"])):
        assert abs(mine - theirs) <= 1e-5 * max(abs(theirs), scale), (run, step, mine, theirs)
    for k, step in enumerate(log["settings"]["latent_steps"]):
        err = rel_err(after[step][sample], gold["latents_after_syngen"][k][0])
        assert err < 1e-5, (run, step, err)
    assert rel_err(final[sample], gold["latents_final"][0]) < 2e-5


@pytest.mark.slow
@pytest.mark.parametrize("run", RUNS)
def test_method_matches_the_official_pipeline_batch1(run):
    final, after, guidance = run_syngen(tiny_sd(), [run])
    check_against_golden(run, 0, final, after, guidance)


@pytest.mark.slow
def test_method_matches_the_official_pipeline_batch2():
    """The official pipeline cannot run 2 samples (README): the reference is its batch-1 run of each sample."""
    runs = ["cat_frog", "bowl_table"]
    final, after, guidance = run_syngen(tiny_sd(), runs)
    for sample, run in enumerate(runs):
        check_against_golden(run, sample, final, after, guidance)


# --- the command line ----------------------------------------------------------------------------------------------
def test_stable_txt2img_with_syngen(tmp_path, caplog):
    import importlib.util

    from conftest import GOLDEN_WEIGHTS, REPO

    spec = importlib.util.spec_from_file_location("stable_txt2img", REPO / "scripts" / "stable_txt2img.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    require_fixture(GOLDEN_WEIGHTS["sd"])
    common = [
        "--config", str(REPO / "configs/tests/golden_tiny_sd.yaml"), "--ckpt", str(GOLDEN_WEIGHTS["sd"]), "--f", "2",
        "--n_iter", "1", "--precision", "full", "--H", "64", "--W", "64", "--ddim_steps", "4", "--n_samples", "1",
        "--guidance", "syngen",
    ]  # fmt: skip
    caplog.set_level("INFO", logger="ldm.guidance.syngen.method")
    out = tmp_path / "parsed"
    script.main([*common, "--prompt", "a red cat and a blue frog", "--outdir", str(out)])
    assert (out / "samples" / "00000.png").is_file()
    assert "red -> cat, blue -> frog" in caplog.text
    out = tmp_path / "pairs"
    script.main([*common, "--prompt", "a red cat and a blue frog", "--g_pairs", "blue:cat", "--g_scale_factor", "5",
                 "--outdir", str(out)])  # fmt: skip
    assert (out / "samples" / "00000.png").is_file()
    assert "blue -> cat" in caplog.text
    from ldm.errors import UserError

    with pytest.raises(UserError, match="--g_pairs: 'dog' is not a word of the prompt"):
        script.main([*common, "--prompt", "a red cat", "--g_pairs", "red:dog", "--outdir", str(tmp_path / "bad")])


# --- settings, parser choice and bad inputs -----------------------------------------------------------------------
def test_config_schedule_and_step_size():
    from ldm.guidance.attend_excite.config import step_size
    from ldm.guidance.syngen.config import SynGenConfig, for_steps

    cfg = SynGenConfig()
    assert for_steps(cfg, 50).max_iter_to_alter == 25 and for_steps(cfg, 10).max_iter_to_alter == 5
    assert for_steps(cfg, 7).max_iter_to_alter == 4 and for_steps(for_steps(cfg, 10), 50).max_iter_to_alter == 5
    assert {step_size(cfg, i, 50) for i in range(50)} == {20.0}  # the official constant step


@pytest.mark.parametrize(
    "values, message",
    [
        ({"pairs": "red"}, "'red' in pairs is not a modifier:noun pair"),
        ({"pairs": "red:cat:dog"}, "'red:cat:dog' in pairs is not a modifier:noun pair"),
        ({"parser": "foo"}, "parser must be one of"),
        ({"loss_reduction": "mean"}, "loss_reduction must be one of"),
    ],
)
def test_bad_settings_are_user_errors(values, message):
    from ldm.errors import UserError
    from ldm.guidance import get_method
    from ldm.guidance.flags import method_config

    with pytest.raises(UserError, match=message):
        method_config(get_method("syngen"), values, "--g_" + next(iter(values)))


def test_parser_choice_spacy_when_it_loads_else_rules(monkeypatch):
    import ldm.guidance.parse as parse
    from ldm.errors import UserError
    from ldm.guidance.parse import prompt_phrases, prompt_words

    words = prompt_words(list(enumerate(["<|startoftext|>", "a</w>", "red</w>", "cat</w>", "<|endoftext|>"])))
    monkeypatch.setattr(parse, "load_spacy", lambda model: None)
    assert [p.noun.text for p in prompt_phrases("a red cat", words, "auto")] == ["cat"]
    with pytest.raises(UserError, match="--g_parser spacy: spaCy or its model 'en_core_web_trf' is not installed"):
        prompt_phrases("a red cat", words, "spacy")

    class Tok:  # a parse that makes "a" the noun and "red" its modifier: shows which parser ran
        def __init__(self, text, pos, dep):
            self.text, self.pos_, self.dep_, self.children = text, pos, dep, []

    def nlp(text):
        a, red, cat = Tok("a", "NOUN", "ROOT"), Tok("red", "ADJ", "amod"), Tok("cat", "X", "dep")
        a.children = [red]
        return [a, red, cat]

    monkeypatch.setattr(parse, "load_spacy", lambda model: nlp)
    phrases = prompt_phrases("a red cat", words, "auto")
    assert [(p.noun.text, [m.text for m in p.modifiers]) for p in phrases] == [("a", ["red"])]
    assert [p.noun.text for p in prompt_phrases("a red cat", words, "rules")] == ["cat"]


def test_prompt_without_pairs_is_plain_with_a_warning(caplog):
    from ldm.guidance.syngen import SynGenConfig
    from ldm.guidance.syngen.method import build_syngen
    from ldm.guidance.tokens import prompt_tokens

    model = tiny_sd()
    tokens = [prompt_tokens(model, "a cat")]
    assert build_syngen(model, SynGenConfig(parser="rules"), tokens) is None
    assert "SynGen: no modifier-noun pair in 'a cat'" in caplog.text
    guidance = build_syngen(model, SynGenConfig(parser="rules"), [*tokens, prompt_tokens(model, "a red cat")])
    assert guidance is not None and guidance.loss_groups(2)[0].samples == [1]  # only the sample with a pair


def test_one_update_lowers_the_loss():
    from ldm.guidance.syngen import SynGenConfig
    from ldm.guidance.syngen.method import SynGen, sample_target
    from ldm.guidance.tokens import prompt_tokens

    model = tiny_sd()
    cfg = SynGenConfig(parser="rules", schedule_steps=None, max_iter_to_alter=2, scale_factor=200.0)
    guidance = SynGen(model, cfg, [sample_target(prompt_tokens(model, "a red cat and a blue frog"), cfg)])
    x = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    c = model.get_learned_conditioning(["a red cat and a blue frog"])
    t = torch.full((1,), 901)
    x1 = guidance(x, t, 0, 50, c)
    guidance(x1, t, 1, 50, c)
    before, after = (rec["groups"][0]["loss"] for rec in guidance.records)
    assert after < before and not torch.equal(x, x1)
    assert guidance(x1, t, 2, 50, c) is x1  # past max_iter_to_alter: untouched, no pass
    assert guidance.num_forwards == 2


def test_explorer_runs_syngen_and_shows_the_selected_words_maps():
    from conftest import GOLDEN_WEIGHTS

    from ldm.explorer.session import Explorer, Settings

    model = tiny_sd()
    explorer = Explorer(model, "configs/tests/golden_tiny_sd.yaml", str(GOLDEN_WEIGHTS["sd"]))
    assert "syngen" in explorer.methods() and explorer.method_fields("syngen")["scale_factor"] == "20.0"
    config, flags = explorer.method_config("syngen", {"pairs": "red:cat", "attention_res": "16"})
    assert flags == ["--g_pairs", "red:cat"]
    result = explorer.run("a red cat and a blue frog", "cat,frog", Settings(steps=2, scale=3, H=64, W=64), config,
                          ae_flags=flags, method="syngen")  # fmt: skip
    assert "--guidance syngen" in result.command and "--g_pairs red:cat" in result.command
    trace = result.excited
    assert [m.shape for m in trace.maps] == [(2, 16, 16)] * 2  # cat, frog: each a distribution over the pixels
    assert torch.allclose(trace.maps[0].sum(dim=(1, 2)), torch.ones(2), atol=1e-5)
    assert trace.method_loss[0] is not None and trace.method_loss[1] is None  # 2 steps: step 0 updates
