"""KL autoencoder: manifest keys, goldens, the posterior and the training path."""

from __future__ import annotations

import json
import math

import pytest
import pytorch_lightning as pl
import torch

from ldm.models.autoencoder import AutoencoderKL, IdentityFirstStage
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
from ldm.modules.losses import KLReconstructionLoss
from tests.conftest import FIXTURES, GOLDEN, load_golden, rel_err, require_fixture

PREFIX = "first_stage_model."
# first_stage_config of v1-inference.yaml and txt2img-1p4B-finetune.yaml (identical apart from resolution)
FULL_DDCONFIG = dict(
    double_z=True,
    z_channels=4,
    resolution=256,
    in_channels=3,
    out_ch=3,
    ch=128,
    ch_mult=[1, 2, 4, 4],
    num_res_blocks=2,
    attn_resolutions=[],
    dropout=0.0,
)
IDENTITY_LOSS = {"target": "torch.nn.Identity"}
TINY_DDCONFIG = dict(FULL_DDCONFIG, resolution=16, ch=32, ch_mult=[1, 2], num_res_blocks=1)


def manifest_section(manifest: str, prefix: str) -> dict[str, list[int]]:
    keys = json.loads(require_fixture(FIXTURES / manifest).read_text())["keys"]
    return {k[len(prefix) :]: v for k, v in keys.items() if k.startswith(prefix)}


@pytest.mark.parametrize("manifest", ["sd_v1_state_dict.json", "ldm_txt2img_1p4B_state_dict.json"])
def test_autoencoder_state_dict_matches_manifest(manifest: str) -> None:
    expected = manifest_section(manifest, PREFIX)
    with torch.device("meta"):
        model = AutoencoderKL(FULL_DDCONFIG, IDENTITY_LOSS, embed_dim=4)
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert got == expected


def golden_first_stage(name: str) -> AutoencoderKL:
    from omegaconf import OmegaConf

    from ldm.util import instantiate_from_config, load_state_dict_file

    config = OmegaConf.load(require_fixture(GOLDEN / "configs" / f"tiny_{name}.yaml"))
    model = instantiate_from_config(config.model.params.first_stage_config)
    weights = "tiny_sd.ckpt" if name == "sd" else "tiny_ldm.safetensors"
    state = load_state_dict_file(require_fixture(GOLDEN / "weights" / weights))
    model.load_state_dict({k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}, strict=True)
    return model.eval()


@pytest.mark.parametrize("name", ["sd", "ldm"])
def test_vae_goldens(name: str) -> None:
    model = golden_first_stage(name)
    inputs = load_golden(f"tiny_{name}", "inputs.safetensors")
    golden = load_golden(f"tiny_{name}", "vae.safetensors")
    with torch.no_grad():
        decoded = model.decode(inputs["z_dec"] / 0.18215)
        posterior = model.encode(inputs["img_enc"])
    assert rel_err(decoded, golden["decoded"]) < 1e-5
    assert rel_err(posterior.mean, golden["enc_mean"]) < 1e-5
    assert rel_err(posterior.logvar, golden["enc_logvar"]) < 1e-5


def test_diagonal_gaussian_against_torch_distributions() -> None:
    gen = torch.Generator().manual_seed(0)
    params = torch.randn(2, 8, 3, 3, generator=gen)
    params[0, 4, 0, 0] = 50.0  # logvar above the clamp
    post = DiagonalGaussianDistribution(params)
    mean, logvar = params[:, :4], params[:, 4:].clamp(-30, 20)
    assert post.logvar[0, 0, 0, 0] == 20.0
    ref = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    prior = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    torch.testing.assert_close(post.kl(), torch.distributions.kl_divergence(ref, prior).sum(dim=[1, 2, 3]))
    other = DiagonalGaussianDistribution(torch.randn(2, 8, 3, 3, generator=gen))
    ref_other = torch.distributions.Normal(other.mean, other.std)
    torch.testing.assert_close(post.kl(other), torch.distributions.kl_divergence(ref, ref_other).sum(dim=[1, 2, 3]))
    x = torch.randn(2, 4, 3, 3, generator=gen)
    torch.testing.assert_close(post.nll(x), -ref.log_prob(x).sum(dim=[1, 2, 3]))
    assert torch.equal(post.mode(), mean)
    a = post.sample(torch.Generator().manual_seed(3))
    b = post.sample(torch.Generator().manual_seed(3))
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    torch.testing.assert_close(a, mean + torch.exp(0.5 * logvar) * eps)
    det = DiagonalGaussianDistribution(params, deterministic=True)
    assert torch.equal(det.sample(), mean) and torch.equal(det.kl(), torch.zeros(2))


def test_kl_reconstruction_loss_value() -> None:
    gen = torch.Generator().manual_seed(1)
    x, xrec = torch.randn(2, 3, 4, 4, generator=gen), torch.randn(2, 3, 4, 4, generator=gen)
    post = DiagonalGaussianDistribution(torch.randn(2, 8, 2, 2, generator=gen))
    kl = 0.5 * (post.mean**2 + post.var - 1 - post.logvar).sum() / 2
    loss, log = KLReconstructionLoss(kl_weight=0.1, rec_loss="l1")(x, xrec, post, split="val")
    assert math.isclose(loss.item(), ((x - xrec).abs().sum() / 2 + 0.1 * kl).item(), rel_tol=1e-6)
    assert math.isclose(log["val/rec_loss"].item(), (x - xrec).abs().mean().item(), rel_tol=1e-6)
    loss2, _ = KLReconstructionLoss(kl_weight=0.0, rec_loss="mse")(x, xrec, post)
    assert math.isclose(loss2.item(), ((x - xrec) ** 2).sum().item() / 2, rel_tol=1e-6)
    with pytest.raises(ValueError, match="rec_loss"):
        KLReconstructionLoss(rec_loss="lpips")


def tiny_batch(n: int = 2) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    return {"image": torch.rand(n, 16, 16, 3, generator=gen) * 2 - 1}  # HWC in [-1, 1], like the datasets


def test_get_input_and_log_images() -> None:
    torch.manual_seed(0)
    model = AutoencoderKL(TINY_DDCONFIG, IDENTITY_LOSS, embed_dim=4).eval()
    batch = tiny_batch()
    x = model.get_input(batch, "image")
    assert x.shape == (2, 3, 16, 16) and torch.equal(x[1, 2], batch["image"][1, :, :, 2])
    dec, post = model(x, sample_posterior=False)
    assert dec.shape == x.shape and post.mean.shape == (2, 4, 8, 8)
    images = model.log_images(batch)
    assert set(images) == {"inputs", "reconstructions", "samples"}
    assert all(v.shape == (2, 3, 16, 16) for v in images.values())
    with pytest.raises(RuntimeError, match="KLReconstructionLoss"):
        model.training_step(batch, 0)


def test_training_lowers_the_loss() -> None:
    torch.manual_seed(0)
    loss_config = {"target": "ldm.modules.losses.KLReconstructionLoss", "params": {"kl_weight": 1e-6}}
    model = AutoencoderKL(TINY_DDCONFIG, loss_config, embed_dim=4, monitor="val/rec_loss")
    model.learning_rate = 1e-3
    batch = tiny_batch()
    x = model.get_input(batch, "image")

    def rec_error() -> float:
        with torch.no_grad():
            return (model(x, sample_posterior=False)[0] - x).abs().mean().item()

    before = rec_error()
    loader = torch.utils.data.DataLoader([{"image": img} for img in batch["image"]], batch_size=2)
    trainer = pl.Trainer(
        max_steps=15,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, loader)
    assert rec_error() < before
    optimizer = model.configure_optimizers()
    assert optimizer.defaults["betas"] == (0.5, 0.9) and optimizer.defaults["lr"] == 1e-3


def test_ckpt_path_loads_plain_and_ldm_prefixed_files(tmp_path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = AutoencoderKL(TINY_DDCONFIG, IDENTITY_LOSS, embed_dim=4)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(tmp_path / "vae.safetensors"))
    torch.save({"state_dict": {PREFIX + k: v for k, v in state.items()}}, tmp_path / "ldm.ckpt")
    for file in ("vae.safetensors", "ldm.ckpt"):
        loaded = AutoencoderKL(TINY_DDCONFIG, IDENTITY_LOSS, embed_dim=4, ckpt_path=str(tmp_path / file))
        assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in state.items())


def test_identity_first_stage() -> None:
    x = torch.randn(1, 4, 2, 2)
    stage = IdentityFirstStage(vq_interface=True)
    assert stage.encode(x) is x and stage.decode(x) is x and stage.quantize(x)[0] is x
