"""Side by side with diffusers on the same SD v1 weights (seeded random, nothing downloaded).

Builds the SD v1 model from configs/stable-diffusion/v1-inference.yaml with seeded random weights, converts its state
dict with diffusers' own single-file converter functions (``create_unet_diffusers_config_from_ldm`` /
``convert_ldm_unet_checkpoint`` and the VAE equivalents, given the local original config: no hub access), checks that
the two UNets agree, and prints ours/diffusers time ratios from interleaved rounds in one process:

  plain sampling           DDIM, CFG 7.5, batch 1, decode included (StableDiffusionPipeline, prompt_embeds given)
  A&E, no refinement       thresholds {}, max_iter_to_alter = steps/2 (StableDiffusionAttendAndExcitePipeline)
  A&E, refinement <= 5     thresholds {0: .05, S/5: .5, 2S/5: .8} (the official schedule rescaled), at most 5
                           refinement iterations per threshold step on both sides
  one UNet forward         batch 2 (CFG), no grad
  one guidance pass        forward with attention capture + loss + gradient w.r.t. the latent, batch 1
  inversion step           ours: v1-finetune.yaml step (posterior cache warm, placeholder vector only) with and
                           without gradient checkpointing; diffusers: a step written from what its textual_inversion
                           example does (VAE encode every step, AdamW over the whole token-embedding table with the
                           other rows restored, no checkpointing), on the converted models and a transformers
                           CLIPTextModel holding our text tower's weights.

diffusers is a ``bench`` extra: ``pip install -e ".[bench]"``. Times are printed, never asserted.
Usage: python benchmarks/bench_vs_diffusers.py [--size 256] [--steps 10] [--rounds 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ldm.guidance.attend_excite.config import AttendExciteConfig  # noqa: E402
from ldm.guidance.attend_excite.method import AttendAndExcite  # noqa: E402
from ldm.models.diffusion.ddim import DDIMSampler  # noqa: E402
from ldm.models.diffusion.posterior_cache import PosteriorCache  # noqa: E402
from ldm.util import instantiate_from_config  # noqa: E402

INFERENCE = REPO / "configs" / "stable-diffusion" / "v1-inference.yaml"
FINETUNE = REPO / "configs" / "stable-diffusion" / "v1-finetune.yaml"
PROMPT, TOKENS = "a cat and a dog", [2, 5]  # positions of "cat" and "dog" after the start token


def require_diffusers():
    try:
        import diffusers
    except ImportError:
        sys.exit('diffusers is not installed: pip install -e ".[bench]" (the bench extra; never a runtime dependency)')
    return diffusers


def seeded_random_model(config_path: Path) -> torch.nn.Module:
    config = OmegaConf.load(config_path).model
    config.params.pop("ckpt_path", None)
    torch.manual_seed(0)
    model = instantiate_from_config(config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # zero-initialised output convs would make the UNet trivial: every weight random
        for name, p in model.named_parameters():
            if name.startswith(("model.", "first_stage_model.")) and p.dim() > 1:
                p.normal_(0.0, 1.0 / p[0].numel() ** 0.5, generator=gen)
    return model.eval()


def convert_to_diffusers(model: torch.nn.Module, size: int):
    """diffusers UNet, VAE (diffusers' converter functions on our state dict) and a transformers text encoder."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextConfig, CLIPTextModel

    original = OmegaConf.to_container(OmegaConf.load(INFERENCE), resolve=True)
    state = model.state_dict()
    unet_cfg = sfu.create_unet_diffusers_config_from_ldm(original, state, image_size=size)
    unet = UNet2DConditionModel(**unet_cfg)
    unet.load_state_dict(sfu.convert_ldm_unet_checkpoint(state, unet_cfg), strict=True)
    vae_cfg = sfu.create_vae_diffusers_config_from_ldm(original, state, image_size=size)
    vae = AutoencoderKL(**vae_cfg)
    vae.load_state_dict(sfu.convert_ldm_vae_checkpoint(state, vae_cfg), strict=True)
    prefix = "cond_stage_model.transformer.text_model."
    text = CLIPTextModel(
        CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                       num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")
    )  # fmt: skip
    text.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, strict=False)
    return unet.eval(), vae.eval(), text


def ddim_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )  # fmt: skip


class Timer:
    """Interleaved timing: every (task, side) gets one sample per round; medians are reported."""

    def __init__(self) -> None:
        self.samples: dict[tuple[str, str], list[float]] = {}

    def run(self, task: str, side: str, fn: Callable[[], object]) -> None:
        start = time.perf_counter()
        try:
            fn()
        except Exception:  # a failing task is reported and left out of the table; the others still run
            traceback.print_exc()
            return
        self.samples.setdefault((task, side), []).append(time.perf_counter() - start)
        print(f"  {task:<28} {side:<10} {self.samples[task, side][-1]:8.2f} s", flush=True)

    def median(self, task: str, side: str) -> float:
        return statistics.median(self.samples.get((task, side)) or [float("nan")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (medians are printed)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--skip", nargs="*", default=[], help="task names to skip (plain, ae, ae_refine, ...)")
    args = parser.parse_args()
    require_diffusers()
    from diffusers import StableDiffusionAttendAndExcitePipeline, StableDiffusionPipeline

    torch.set_num_threads(args.threads)
    latent = args.size // 8
    print(f"torch {torch.__version__}, {args.threads} threads, {args.size}px, {args.steps} DDIM steps, CFG 7.5")
    model = seeded_random_model(INFERENCE)
    unet_d, vae_d, text_d = convert_to_diffusers(model, args.size)
    unet = model.model.diffusion_model
    with torch.no_grad():
        c = model.get_learned_conditioning([PROMPT])  # [1, 77, 768]
        uc = model.get_learned_conditioning([""])
    gen = torch.Generator().manual_seed(1)
    x_T = torch.randn(1, 4, latent, latent, generator=gen)
    x2, t2, c2 = torch.cat([x_T, x_T]), torch.tensor([501, 501]), torch.cat([uc, c])

    with torch.no_grad():
        ours_eps, theirs_eps = unet(x2, t2, context=c2), unet_d(x2, t2, encoder_hidden_states=c2).sample
    agree = float((ours_eps - theirs_eps).abs().max() / theirs_eps.abs().max())
    verdict = "OK" if agree < 1e-4 else "FAIL"
    print(f"UNet agreement: max |ours - diffusers| / max |diffusers| = {agree:.2e} ({verdict}, must be < 1e-4)")

    common = dict(vae=vae_d, text_encoder=None, tokenizer=None, unet=unet_d, scheduler=ddim_scheduler(),
                  safety_checker=None, feature_extractor=None, requires_safety_checker=False)  # fmt: skip
    pipe = StableDiffusionPipeline(**common)
    ae_pipe = StableDiffusionAttendAndExcitePipeline(**common)
    for p in (pipe, ae_pipe):
        p.set_progress_bar_config(disable=True)
    processors = unet_d.attn_processors
    refine_cap = 5

    def rescaled(i: int) -> int:
        return int(np.floor(i * args.steps / 50 + 0.5))

    alter = rescaled(25)
    thresholds = {rescaled(0): 0.05, rescaled(10): 0.5, rescaled(20): 0.8}

    def ours_sample(guidance=None):
        with torch.no_grad():
            z, _ = DDIMSampler(model).sample(
                args.steps, 1, (4, latent, latent), conditioning=c, eta=0.0, x_T=x_T.clone(), verbose=False,
                unconditional_guidance_scale=7.5, unconditional_conditioning=uc, latent_guidance=guidance,
            )  # fmt: skip
            return model.decode_first_stage(z)

    def ours_ae(refine: bool):
        cfg = AttendExciteConfig(
            token_indices=tuple(TOKENS), max_iter_to_alter=alter, thresholds=thresholds if refine else {},
            max_refinement_steps=refine_cap, schedule_steps=None,
        )  # fmt: skip
        return ours_sample(AttendAndExcite(unet, cfg))

    def theirs_plain():
        return pipe(prompt_embeds=c, negative_prompt_embeds=uc, num_inference_steps=args.steps, guidance_scale=7.5,
                    latents=x_T.clone(), output_type="pt").images  # fmt: skip

    def theirs_ae(refine: bool):
        refine_step = ae_pipe._perform_iterative_refinement_step
        ae_pipe._perform_iterative_refinement_step = lambda *a, **k: refine_step(
            *a, **k, max_refinement_steps=refine_cap
        )
        try:
            return ae_pipe(prompt=None, token_indices=TOKENS, prompt_embeds=c, negative_prompt_embeds=uc,
                           num_inference_steps=args.steps, guidance_scale=7.5, latents=x_T.clone(), output_type="pt",
                           max_iter_to_alter=alter, thresholds=thresholds if refine else {}).images  # fmt: skip
        finally:
            del ae_pipe._perform_iterative_refinement_step
            unet_d.set_attn_processor(dict(processors))  # the call empties the dict it gets

    def ours_forward():
        with torch.no_grad():
            unet(x2, t2, context=c2)

    def theirs_forward():
        with torch.no_grad():
            unet_d(x2, t2, encoder_hidden_states=c2)

    pass_cfg = AttendExciteConfig(token_indices=tuple(TOKENS), thresholds={}, schedule_steps=None)
    ours_pass = AttendAndExcite(unet, pass_cfg)  # step 0, no threshold: exactly one pass and one gradient

    def ours_guidance():
        ours_pass(x_T, torch.tensor([501]), 0, args.steps, c)

    def theirs_guidance():
        from diffusers.pipelines.deprecated.stable_diffusion_attend_and_excite import (
            pipeline_stable_diffusion_attend_and_excite as ae_module,
        )

        ae_pipe.attention_store = ae_module.AttentionStore((16, 16))
        ae_pipe.register_attention_control()
        try:
            with torch.enable_grad():
                z = x_T.clone().requires_grad_(True)
                unet_d(z, 501, encoder_hidden_states=c)
                unet_d.zero_grad()
                loss = ae_pipe._compute_loss(ae_pipe._aggregate_and_get_max_attention_per_token(indices=TOKENS))
                ae_pipe._update_latent(z, loss, 20.0)
        finally:
            unet_d.set_attn_processor(dict(processors))  # the call empties the dict it gets

    # --- inversion -------------------------------------------------------------------------------------------
    from PIL import Image

    from ldm.data.personalized import PersonalizedBase

    tmp = tempfile.TemporaryDirectory()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8)).save(f"{tmp.name}/{i}.png")
    data = PersonalizedBase(tmp.name, size=args.size, repeats=100)
    items = [data[i] for i in range(3)]
    batches = [
        {"image": torch.from_numpy(it["image"][None]), "caption": [it["caption"]], "image_path": [it["image_path"]],
         "flipped": torch.tensor([it["flipped"]])}
        for it in items
    ]  # fmt: skip
    ft_config = OmegaConf.load(FINETUNE).model
    ft_config.params.pop("ckpt_path", None)
    ft = instantiate_from_config(ft_config)
    ft.load_state_dict(model.state_dict(), strict=False, assign=True)  # same weights, shared storage
    ft.learning_rate = 5.0e-3
    ft.posterior_cache = PosteriorCache()
    ft_opt = ft.configure_optimizers()
    ft_unet = ft.model.diffusion_model
    step_no = [0]

    def ours_inversion(checkpointing: bool):
        ft_unet.use_checkpoint = checkpointing  # shared_step follows the UNet's use_checkpoint (docs/benchmarks.md)
        batch = batches[step_no[0] % 3]
        step_no[0] += 1
        loss, _ = ft.shared_step(batch)
        loss.backward()
        ft_opt.step()
        ft_opt.zero_grad(set_to_none=True)

    for b in batches:  # warm the posterior cache (a real run's first pass over the images)
        with torch.no_grad():
            ft.get_input(b, ft.first_stage_key)

    # diffusers' textual_inversion example, per step (written from its description)
    text_d.resize_token_embeddings(49409)
    placeholder = 49408
    with torch.no_grad():
        table = text_d.get_input_embeddings().weight
        table[placeholder] = table[model.cond_stage_model._token_ids(["sculpture"])[0, 1]]
    text_d.requires_grad_(False)
    text_d.get_input_embeddings().requires_grad_(True)
    text_d.train()
    original_table = text_d.get_input_embeddings().weight.detach().clone()
    ti_opt = torch.optim.AdamW(text_d.get_input_embeddings().parameters(), lr=5.0e-3)
    ids = model.cond_stage_model._token_ids(["a photo of a *"])  # [1, 77]
    ids[0, 5] = placeholder
    unet_d.requires_grad_(False)
    vae_d.requires_grad_(False)
    train_sched = ddim_scheduler()
    images = [b["image"].permute(0, 3, 1, 2).float() for b in batches]  # [1, 3, H, W] in [-1, 1]

    def theirs_inversion():
        image = images[step_no[0] % 3]
        step_no[0] += 1
        latents = vae_d.encode(image).latent_dist.sample() * 0.18215
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (1,))
        noisy = train_sched.add_noise(latents, noise, t)
        states = text_d(ids)[0]
        loss = F.mse_loss(unet_d(noisy, t, states).sample.float(), noise.float())
        loss.backward()
        ti_opt.step()
        ti_opt.zero_grad()
        with torch.no_grad():  # keep every row but the placeholder's
            keep = torch.ones(49409, dtype=torch.bool)
            keep[placeholder] = False
            text_d.get_input_embeddings().weight[keep] = original_table[keep]

    tasks: list[tuple[str, list[tuple[str, Callable[[], object]]]]] = [
        ("unet_forward", [("ours", ours_forward), ("diffusers", theirs_forward)]),
        ("guidance_pass", [("ours", ours_guidance), ("diffusers", theirs_guidance)]),
        ("inversion_step", [("ours", lambda: ours_inversion(True)), ("ours_nockpt", lambda: ours_inversion(False)),
                            ("diffusers", theirs_inversion)]),
        ("plain", [("ours", ours_sample), ("diffusers", theirs_plain)]),
        ("ae", [("ours", lambda: ours_ae(False)), ("diffusers", lambda: theirs_ae(False))]),
        ("ae_refine", [("ours", lambda: ours_ae(True)), ("diffusers", lambda: theirs_ae(True))]),
    ]  # fmt: skip
    tasks = [(name, sides) for name, sides in tasks if name not in args.skip]
    timer = Timer()
    for name, sides in tasks[:3]:  # warm-up of the short tasks (first-call allocations, thread pools)
        for side, fn in sides:
            Timer().run(name, f"{side} (warm-up)", fn)
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}")
        for name, sides in tasks:
            order = sides if r % 2 == 0 else sides[::-1]
            for side, fn in order:
                timer.run(name, side, fn)
    labels = {
        "plain": "plain sampling", "ae": "A&E without refinement", "ae_refine": f"A&E, refinement <= {refine_cap}",
        "unet_forward": "one UNet forward (batch 2)", "guidance_pass": "one guidance pass",
        "inversion_step": "inversion step",
    }  # fmt: skip
    goals = {"plain": 0.9, "ae": 0.8, "ae_refine": 0.6, "unet_forward": 1.0, "inversion_step": 0.7}
    print(f"\nmedians of {args.rounds} interleaved round(s); UNet agreement {agree:.1e}")
    print("| run | this project | diffusers | ratio | goal |")
    print("|---|---|---|---|---|")
    for name, sides in tasks:
        theirs = timer.median(name, "diffusers")
        for side, _ in sides:
            if side == "diffusers":
                continue
            ours = timer.median(name, side)
            label = labels[name] + (" (no checkpointing)" if side == "ours_nockpt" else "")
            goal = goals.get(name)
            goal_text = "-" if goal is None else f"<= {goal}x: {'met' if ours / theirs <= goal else 'not met'}"
            print(f"| {label} | {ours:.2f} s | {theirs:.2f} s | {ours / theirs:.2f}x | {goal_text} |")
    tmp.cleanup()


if __name__ == "__main__":
    main()
