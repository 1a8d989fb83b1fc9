"""SD v1 UNet forward: scaled_dot_product_attention path vs the explicit-softmax path (random weights).

Prints time and peak-memory ratios (SDPA / explicit) measured in one process, batch 1 and 2, 64x64 latent.
Target: SDPA at most 0.8x the explicit path's time, never more memory.
``--layout``: batch-2 forward with SpatialTransformer's contiguous token layout (ours) vs the earlier strided views
(``flatten(2).transpose(1, 2)`` in, ``transpose(1, 2).reshape`` out), with the profiler's ``aten::copy_`` time.
``--checkpointing``: one Attend-and-Excite guidance pass (batch 1, forward + gradient w.r.t. the latent) with and
without ``checkpoint_guidance``: time and the activations autograd keeps for the backward (bytes of the tensors saved
for backward, unique storages, the weights excluded: what checkpointing trades for recomputation).
Usage: python benchmarks/bench_unet.py [--batch_sizes 1 2] [--repeats 2] [--size 64] [--layout] [--checkpointing]
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_memory, pick_device, timed  # noqa: E402

from ldm.modules.attention import CrossAttention  # noqa: E402
from ldm.util import instantiate_from_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def set_sdpa(unet: torch.nn.Module, enabled: bool) -> None:
    for module in unet.modules():
        if isinstance(module, CrossAttention):
            module.use_sdpa = enabled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--size", type=int, default=64, help="latent side")
    parser.add_argument("--config", default=str(REPO / "configs/stable-diffusion/v1-inference.yaml"))
    parser.add_argument("--layout", action="store_true", help="contiguous vs strided SpatialTransformer layout")
    parser.add_argument("--checkpointing", action="store_true", help="A&E guidance pass with/without checkpointing")
    parser.add_argument("--compile", action="store_true", help="torch.compile'd UNet forward vs eager")
    parser.add_argument("--only_sections", action="store_true", help="skip the SDPA/explicit table")
    args = parser.parse_args()
    device = pick_device()
    cfg = OmegaConf.load(args.config).model.params.unet_config
    cfg.params.use_checkpoint = False
    unet = instantiate_from_config(cfg).to(device).eval()
    ctx_dim = cfg.params.context_dim
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    if args.layout:
        layout_section(unet, args.size, ctx_dim, args.repeats, device)
    if args.checkpointing:
        checkpointing_section(unet, args.size, ctx_dim, args.repeats)
    if args.compile:
        compile_section(args.config, args.size, ctx_dim, args.repeats, device)
    if args.only_sections:
        return
    print("batch | explicit s | sdpa s | time ratio | explicit MiB | sdpa MiB | memory ratio")
    for bs in args.batch_sizes:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(bs, 4, args.size, args.size, generator=gen).to(device)
        t = torch.full((bs,), 500, dtype=torch.long, device=device)
        c = torch.randn(bs, 77, ctx_dim, generator=gen).to(device)
        results = {}
        outputs = {}
        for name, sdpa in (("explicit", False), ("sdpa", True)):
            set_sdpa(unet, sdpa)
            with torch.no_grad():
                unet(x, t, context=c)  # warm-up
                with peak_memory(device) as mem:
                    outputs[name] = unet(x, t, context=c)
                seconds = timed(partial(unet, x, t, context=c), device, args.repeats)
            results[name] = (seconds, mem["peak"] / 2**20)
        (te, me), (ts, ms) = results["explicit"], results["sdpa"]
        diff = float((outputs["sdpa"] - outputs["explicit"]).abs().max())
        print(
            f"{bs:5d} | {te:10.2f} | {ts:6.2f} | {ts / te:10.2f} | {me:12.0f} | {ms:8.0f} | {ms / max(me, 1e-9):12.2f}"
        )
        print(f"      max |sdpa - explicit| = {diff:.2e}")


def strided_spatial_forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
    """SpatialTransformer.forward as it was: strided views handed to the blocks and to proj_out."""
    b, _, h, w = x.shape
    x_in = x
    x = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # [B, HW, inner], strided
    for block in self.transformer_blocks:
        x = block(x, context=context)
    x = x.transpose(1, 2).reshape(b, -1, h, w)  # strided view
    return self.proj_out(x) + x_in


def copy_seconds(fn) -> float:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.self_cpu_time_total for e in prof.key_averages() if e.key == "aten::copy_") / 1e6


def layout_section(unet: torch.nn.Module, size: int, ctx_dim: int, repeats: int, device: torch.device) -> None:
    from ldm.modules.attention import SpatialTransformer

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, size, size, generator=gen).to(device)  # [2, 4, h, w]
    c = torch.randn(2, 77, ctx_dim, generator=gen).to(device)
    t = torch.full((2,), 500, dtype=torch.long, device=device)
    contiguous = SpatialTransformer.forward
    print(f"\nlayout, batch 2, {size}x{size} latent: variant | forward s | aten::copy_ s (profiler)")
    outs, rows = {}, {"contiguous": [0.0, 0.0], "strided": [0.0, 0.0]}
    try:
        with torch.no_grad():
            for _ in range(repeats):  # interleaved
                for name, fwd in (("contiguous", contiguous), ("strided", strided_spatial_forward)):
                    SpatialTransformer.forward = fwd
                    outs[name] = unet(x, t, context=c)
                    rows[name][0] += timed(partial(unet, x, t, context=c), device) / repeats
                    rows[name][1] += copy_seconds(partial(unet, x, t, context=c)) / repeats
    finally:
        SpatialTransformer.forward = contiguous
    for name, (sec, cp) in rows.items():
        print(f"  {name:>10} | {sec:8.2f} | {cp:6.3f}")
    print(f"  contiguous / strided time: {rows['contiguous'][0] / rows['strided'][0]:.2f}x; "
          f"max |diff| {float((outs['contiguous'] - outs['strided']).abs().max()):.1e}")  # fmt: skip


def saved_activation_bytes(fn, params: list[torch.Tensor]) -> tuple[float, int]:
    """(seconds, bytes of the unique storages autograd saves for backward, weights excluded) of ``fn()``."""
    storages: dict[int, int] = {}
    weights = {p.untyped_storage().data_ptr() for p in params}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in weights:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return time.perf_counter() - start, sum(storages.values())


def checkpointing_section(unet: torch.nn.Module, size: int, ctx_dim: int, repeats: int) -> None:
    from ldm.guidance.attend_excite.config import AttendExciteConfig
    from ldm.guidance.attend_excite.method import AttendAndExcite

    gen = torch.Generator().manual_seed(0)
    x, c = torch.randn(1, 4, size, size, generator=gen), torch.randn(1, 77, ctx_dim, generator=gen)
    print(f"\nA&E guidance pass, batch 1, {size * 8}px ({size}x{size} latent): checkpoint_guidance | s | saved MiB")
    rows = {False: [0.0, 0], True: [0.0, 0]}
    for _ in range(repeats):
        for flag in (False, True):
            cfg = AttendExciteConfig(token_indices=(2, 5), thresholds={}, schedule_steps=None, checkpoint_guidance=flag)
            guidance = AttendAndExcite(unet, cfg)
            sec, nbytes = saved_activation_bytes(
                lambda g=guidance: g(x, torch.tensor([501]), 0, 10, c), list(unet.parameters())
            )
            rows[flag][0] += sec / repeats
            rows[flag][1] = nbytes
    for flag, (sec, nbytes) in rows.items():
        print(f"  {str(flag):>5} | {sec:6.2f} | {nbytes / 2**20:8.0f}")
    print(f"  on/off: time {rows[True][0] / rows[False][0]:.2f}x, saved activations "
          f"{rows[True][1] / max(rows[False][1], 1):.2f}x")  # fmt: skip


def compile_section(config: str, size: int, ctx_dim: int, repeats: int, device: torch.device) -> None:
    """Eager vs ``torch.compile`` of the same weights (a second UNet with the eager one's state dict)."""
    from ldm.modules.diffusionmodules.util import compile_diffusion_model

    cfg = OmegaConf.load(config).model.params.unet_config
    cfg.params.use_checkpoint = False
    eager = instantiate_from_config(cfg).to(device).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # LDM zero-initialises the output convolutions: random weights make the comparison real
        for param in eager.parameters():
            param.normal_(0.0, 0.02)
    compiled = instantiate_from_config(cfg).to(device).eval()
    compiled.load_state_dict(eager.state_dict())
    compile_diffusion_model(compiled)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, size, size, generator=gen).to(device)  # [2, 4, h, w]
    c = torch.randn(2, 77, ctx_dim, generator=gen).to(device)
    t = torch.full((2,), 500, dtype=torch.long, device=device)
    with torch.no_grad():
        start = time.perf_counter()
        out_compiled = compiled(x, t, context=c)  # compiles
        compile_s = time.perf_counter() - start
        out_eager = eager(x, t, context=c)
        secs = {"eager": 0.0, "compiled": 0.0}
        for _ in range(repeats):  # interleaved
            for name, net in (("eager", eager), ("compiled", compiled)):
                secs[name] += timed(partial(net, x, t, context=c), device) / repeats
    rel = float((out_compiled - out_eager).abs().max() / out_eager.abs().max())
    print(f"\ntorch.compile, batch 2, {size}x{size} latent: first call (compiling) {compile_s:.1f} s")
    print(f"  eager {secs['eager']:.2f} s | compiled {secs['compiled']:.2f} s | "
          f"speed-up {secs['eager'] / secs['compiled']:.2f}x | max rel diff {rel:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
