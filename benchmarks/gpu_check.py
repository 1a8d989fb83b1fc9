#!/usr/bin/env python
"""One prepared GPU check: the device tests and the figures of docs/benchmarks.md "GPU check", in one run.

On one CUDA device (random weights at SD v1 size; under 8 minutes on a current GPU):
1. the device-parametrised tests (``tests/test_devices.py`` on this device);
2. SD-512 sampling, DDIM 50 steps, CFG 7.5: plain, A&E without refinement, A&E with every refinement at its maximum
   (3 threshold steps x 20 iterations; 2 with --tiny), in float32 and in half-precision weights (fp16 on CUDA, bf16
   on the CPU): seconds and peak memory (CUDA: all allocated memory, weights included; CPU: the process's extra
   RSS); the A&E peak in half precision is checked against the 8 GB target;
3. inversion steps per second at 512 px with and without the posterior cache (``bench_inversion.bench``);
4. the UNet forward with SDPA against explicit attention: seconds and peak memory.
Prints one table and writes it as JSON (``--out``).

    bash scripts/gpu_check.sh                       # CUDA, SD v1 size
    bash scripts/gpu_check.sh --device cpu --tiny   # the same code path on the CPU with tiny sizes (CI)
"""

from __future__ import annotations

import argparse
import copy
import datetime
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from bench_inversion import bench as bench_inversion  # noqa: E402
from common import peak_memory, timed  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from ldm import inference  # noqa: E402
from ldm.guidance.attend_excite.config import AttendExciteConfig  # noqa: E402
from ldm.modules.attention import CrossAttention  # noqa: E402
from ldm.outputs import save_json  # noqa: E402
from ldm.precision import cast_model  # noqa: E402
from ldm.util import instantiate_from_config  # noqa: E402

MB = 1024**2
TARGET_AE_HALF_GB = 8.0
SIZES = {  # config, image side, latent factor, steps, A&E attention_res, inversion config and side
    "sd": ("configs/stable-diffusion/v1-inference.yaml", 512, 8, 50, 16, "sd", 512),
    "tiny": ("configs/tests/golden_tiny_sd.yaml", 32, 2, 4, 8, "tiny", 64),
}


def build_model(config: str, device: torch.device) -> torch.nn.Module:
    cfg = OmegaConf.load(REPO / config).model
    cfg.params.pop("ckpt_path", None)
    with torch.device("cpu"):
        model = instantiate_from_config(cfg)  # random weights
    return model.to(device).eval()


def run_device_tests(device: torch.device, select: str | None = None) -> dict:
    """``pytest tests/test_devices.py -k <device>`` in a subprocess; its summary line and exit code."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(REPO / "tests" / "test_devices.py"),
           "-k", select or device.type]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    summary = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
    return {"command": " ".join(cmd[2:]), "exit_code": result.returncode, "summary": summary,
            "seconds": time.perf_counter() - start}  # fmt: skip


def on_device(model_cpu: torch.nn.Module, device: torch.device, precision: str) -> torch.nn.Module:
    """A copy of the CPU model on ``device``, cast for ``precision`` (only one model is on the device at a time)."""
    return cast_model(copy.deepcopy(model_cpu).to(device), precision)


def release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def sampling_rows(model_cpu: torch.nn.Module, device: torch.device, size: tuple, half: str) -> list[dict]:
    """Plain / A&E / A&E with full refinement, float32 and ``half`` weights: seconds and peak memory per image
    (the peak is all the device memory allocated, weights included)."""
    _, side, f, steps, res, _, _ = size
    shape = (4, side // f, side // f)
    no_refine = AttendExciteConfig(attention_res=res, thresholds={})
    refine = AttendExciteConfig(attention_res=res, thresholds={0: 1.0, 10: 1.0, 20: 1.0},  # every one at its max
                                max_refinement_steps=20 if steps >= 50 else 2)  # fmt: skip
    rows = []
    for precision in ("full", half):
        m = on_device(model_cpu, device, precision)
        sampler = inference.make_sampler(m, "ddim")
        for label, tokens, cfg in (("plain", "", None), ("A&E", "2,5", no_refine), ("A&E + refinement", "2,5", refine)):
            used = None
            if cfg is not None:
                used = inference.schedule_for_run(cfg, "ddim", steps, m.num_timesteps, log=False)[0]
            x_T = torch.randn((1, *shape), generator=torch.Generator().manual_seed(0)).to(device)

            def run(sampler=sampler, m=m, used=used, tokens=tokens, x_T=x_T) -> None:
                with inference.sampling_scope(m, "full"):
                    inference.sample_prompts(m, sampler, ["a cat and a frog"], shape, steps, 7.5, x_T=x_T,
                                             ae_tokens=tokens, ae_config=used)  # fmt: skip

            run()  # warm-up (kernels, allocator)
            with peak_memory(device) as peak:
                seconds = timed(run, device)
            total = peak["peak"] + (torch.cuda.memory_allocated(device) if device.type == "cuda" else 0)
            rows.append({"what": f"sampling {side}px, {steps} steps: {label}", "precision": precision,
                         "seconds": seconds, "peak_mb": total / MB})  # fmt: skip
        del m, sampler
        release(device)
    return rows


def attention_rows(model: torch.nn.Module, device: torch.device, size: tuple) -> list[dict]:
    """UNet forward (batch 2, as CFG runs it) with SDPA and with explicit softmax attention."""
    _, side, f, _, _, _, _ = size
    unet = model.model.diffusion_model
    x = torch.randn(2, 4, side // f, side // f, device=device)
    t = torch.full((2,), 500, device=device)
    with torch.no_grad():
        c = model.get_learned_conditioning(["a cat and a frog", ""])
    rows = []
    for label, sdpa in (("SDPA", True), ("explicit", False)):
        for module in unet.modules():
            if isinstance(module, CrossAttention):
                module.use_sdpa = sdpa

        def run() -> None:
            with torch.no_grad():
                unet(x, t, context=c)

        run()
        with peak_memory(device) as peak:
            seconds = timed(run, device, repeats=3)
        rows.append({"what": f"UNet forward {side}px, batch 2: {label} attention", "precision": "full",
                     "seconds": seconds, "peak_mb": peak["peak"] / MB})  # fmt: skip
    for module in unet.modules():
        if isinstance(module, CrossAttention):
            module.use_sdpa = True
    return rows


def inversion_rows(device: torch.device, size: tuple, tiny: bool) -> list[dict]:
    _, _, _, _, _, name, side = size
    rates = bench_inversion(name, device, side, steps=2 if tiny else 6, bf16=False, rounds=1 if tiny else 2)
    return [{"what": f"inversion {side}px, batch 1: {label}", "precision": "full", "steps_per_s": rate}
            for label, rate in rates.items()]  # fmt: skip


def format_table(rows: list[dict]) -> str:
    lines = ["| what | precision | seconds | steps/s | peak MB |", "|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r[k]:.3f}" if k in r else "" for k in ("seconds", "steps_per_s")]
        cells.append(f"{r['peak_mb']:.0f}" if "peak_mb" in r else "")
        lines.append(f"| {r['what']} | {r['precision']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (the goldens' tiny SD model, 32 px, 4 steps)")
    p.add_argument("--out", default="outputs/gpu_check.json", help="where the table goes as JSON")
    p.add_argument("--skip_tests", action="store_true", help="do not run tests/test_devices.py")
    p.add_argument("--tests_k", default=None, help="pytest -k expression for the device tests (default: the device)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but PyTorch sees no CUDA device (use --device cpu --tiny to try it)")
    size = SIZES["tiny" if args.tiny else "sd"]
    half = "fp16" if device.type == "cuda" else "bf16"
    started = time.perf_counter()
    report: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "tiny": args.tiny}  # fmt: skip
    report["tests"] = None if args.skip_tests else run_device_tests(device, args.tests_k)
    model_cpu = build_model(size[0], torch.device("cpu"))
    rows = sampling_rows(model_cpu, device, size, half)
    model = on_device(model_cpu, device, "full")
    rows += attention_rows(model, device, size)
    del model, model_cpu
    release(device)
    rows += inversion_rows(device, size, args.tiny)
    ae_half = max(r["peak_mb"] for r in rows if r["precision"] == half and "A&E" in r["what"]) / 1024
    report["ae_half_peak_gb"] = ae_half
    report["ae_half_within_8gb"] = ae_half <= TARGET_AE_HALF_GB
    report["rows"] = rows
    report["seconds"] = time.perf_counter() - started
    table = format_table(rows)
    print(f"\nGPU check on {report['device']} ({'tiny' if args.tiny else 'SD v1 size'}), {report['date']}")
    if report["tests"] is not None:
        print(f"device tests: {report['tests']['summary']} (exit code {report['tests']['exit_code']})")
    print(table)
    print(f"A&E peak memory in {half}: {ae_half:.2f} GB (target <= {TARGET_AE_HALF_GB:g} GB)")
    out = Path(args.out)
    save_json(report, out)
    print(f"wrote {out} ({report['seconds']:.0f} s)")
    if report["tests"] is not None and report["tests"]["exit_code"] != 0:
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    main()
