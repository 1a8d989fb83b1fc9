"""One description of a model, from its config or from a loaded model: the one place that knows model families.

    from ldm.models.description import describe, describe_config, describe_model

    d = describe("configs/stable-diffusion/v1-inference.yaml")   # a path, an OmegaConf config, or a loaded model
    d.family            # "ldm" (BERT tower: LDM text2img-large, ToyWorld 1), "sd1" (CLIP: SD v1, ToyWorld 2),
                        # "sd2" (OpenCLIP), "sdxl" (CLIP ViT-L + OpenCLIP bigG, size conditioning)
    d.towers            # the text towers: TextTower(kind, width, layers, layer, pooled, name)
    d.context_dim       # channels the UNet's cross-attention reads (SDXL: 768 + 1280 = 2048)
    d.vector_dim        # width of the vector y (SDXL: adm_in_channels 2816), None without one
    d.first_stage_factor, d.channels, d.unet_levels, d.attention_ds, d.parameterization, d.image_size, d.timesteps
    d.attention_sides(H, W)   # the (h, w) of every cross-attention map at an image size, largest first
    d.toy               # "toyworld1" / "toyworld2" / None;  d.defaults: steps, scale and image side to start with

A config may say which bundled toy it is with a top-level ``toyworld: 1`` or ``toyworld: 2`` (the shipped ToyWorld
configs do); :func:`ldm.util.load_model_from_config` keeps the description of the config on the model it builds
(``model.description``), so a loaded toy is still known as one. Families are told apart by the text towers' classes,
never by vector widths (1280 is both BERT's width and SDXL bigG's).

Nothing here imports the networks: classes are recognised by name, and a config's missing parameters take the
defaults of the target class's signature.
"""

from __future__ import annotations

import importlib
import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = [
    "FAMILIES", "CONFIGS_WITH_TOKENS", "TextTower", "SamplingDefaults", "ModelDescription", "describe",
    "describe_config", "describe_model", "family_title", "families_for_vectors", "encoder_family",
    "toy_method_settings",
]  # fmt: skip

# family -> what users call it
FAMILIES: dict[str, str] = {
    "ldm": "LDM text2img-large (BERT text encoder)",
    "sd1": "SD v1 (CLIP ViT-L/14 text encoder)",
    "sd2": "SD v2 (OpenCLIP ViT-H/14 text encoder)",
    "sdxl": "SDXL (CLIP ViT-L/14 + OpenCLIP ViT-bigG/14 text encoders)",
}
# The released widths of each family's towers (embedding files carry no family: this is how a file's vectors are
# named in errors). A single-tower file of width 1280 is BERT's; SDXL files always name their two towers.
RELEASED_WIDTHS: dict[str, dict[str, int]] = {
    "ldm": {"": 1280},
    "sd1": {"": 768},
    "sd2": {"": 1024},
    "sdxl": {"clip_l": 768, "clip_g": 1280},
}
# family -> a shipped config of it with an embedding manager (what --embedding_path needs)
CONFIGS_WITH_TOKENS: dict[str, str] = {
    "ldm": "configs/latent-diffusion/txt2img-1p4B-eval_with_tokens.yaml",
    "sd1": "configs/stable-diffusion/v1-inference.yaml",
    "sd2": "configs/stable-diffusion/v2-inference_with_tokens.yaml",
    "sdxl": "configs/sdxl/sd_xl_base-inference_with_tokens.yaml",
}
# encoder class name -> tower kind
TOWER_KINDS = {"BERTEmbedder": "bert", "FrozenCLIPEmbedder": "clip", "FrozenOpenCLIPEmbedder": "openclip"}
CONDITIONERS = ("SDXLConditioner",)
TOYS = {1: "toyworld1", 2: "toyworld2"}
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DEFAULT_CHANNEL_MULT = (1, 2, 4, 8)  # UNetModel's and the first stage's defaults, for configs that leave them out
DEFAULT_FIRST_STAGE_FACTOR = 8


@dataclass(frozen=True)
class TextTower:
    """One text tower.

    kind: "bert" | "clip" | "openclip". width: token-embedding width D (what an embedding file's vectors have).
    layers: transformer blocks. layer: the hidden state used as context: "last" (after the final LayerNorm),
    "penultimate" (OpenCLIP: output of block layers - 1; ``ln_final`` applied unless ``final_norm`` is False) or
    "hidden:<i>" (CLIP: output of block i, no final LayerNorm; SDXL's CLIP-L uses hidden:11 of 12).
    pooled: its pooled output (EOT token after ``ln_final`` @ ``text_projection``) goes into the vector y.
    name: the tower's key in embedding files ("" for single-tower models; "clip_l" / "clip_g" for SDXL).
    """

    kind: str
    width: int
    layers: int
    layer: str = "last"
    pooled: bool = False
    name: str = ""
    final_norm: bool = True


@dataclass(frozen=True)
class SamplingDefaults:
    """What a sampling UI starts with for this model (the explorer; the scripts keep their own flag defaults)."""

    steps: int
    scale: float
    image_side: int
    ae_preset: str  # file name under configs/guidance/ (or configs/toyworld/ for ToyWorld 1)


@dataclass(frozen=True)
class ModelDescription:
    """What a model is (see the module docstring); build it with :func:`describe`."""

    family: str
    towers: tuple[TextTower, ...]
    context_dim: int | None
    vector_dim: int | None
    first_stage_factor: int  # f: image pixels per latent pixel, 2^(len(ch_mult) - 1)
    channels: int  # latent channels
    unet_levels: int  # len(channel_mult): the UNet halves the latent (levels - 1) times
    attention_ds: tuple[int, ...]  # latent downsampling of every cross-attention layer (levels and middle)
    parameterization: str  # eps | x0 | v
    image_size: int  # the latent side the model was trained at
    timesteps: int  # T, the most steps any sampler can run
    toy: str | None = None
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def title(self) -> str:
        return family_title(self.family)

    @property
    def is_toy(self) -> bool:
        return self.toy is not None

    @property
    def native_image_size(self) -> int:
        """The image side the model was trained at (latent side times f)."""
        return self.image_size * self.first_stage_factor

    @property
    def downsampling(self) -> int:
        """Image pixels per pixel of the UNet's lowest level: image sides must be multiples of this."""
        return self.first_stage_factor * 2 ** (self.unet_levels - 1)

    @property
    def embedding_widths(self) -> dict[str, int]:
        """Tower name -> the width of its placeholder vectors ({"": D} for one tower)."""
        return {t.name: t.width for t in self.towers}

    def attention_sides(self, H: int, W: int) -> list[tuple[int, int]]:
        """``(h, w)`` of every cross-attention map at image size ``H`` x ``W``, largest first."""
        h, w = H // self.first_stage_factor, W // self.first_stage_factor
        return sorted({(h // ds, w // ds) for ds in self.attention_ds}, reverse=True)

    def method_settings(self, method: str) -> Path | None:
        """The toy's own settings file of a guidance method (:func:`toy_method_settings`); None for other models."""
        return toy_method_settings(self.toy, method)

    @property
    def sigma_spacing(self) -> str:
        """The timestep spacing of the sigma samplers (Euler, DPM++ 2M, UniPC; ``ldm.models.diffusion.sigma_schedule``)
        for this model: SDXL's reference discretization ("sgm") for SDXL, diffusers' default ("linspace") else."""
        return "sgm" if self.family == "sdxl" else "linspace"

    @property
    def defaults(self) -> SamplingDefaults:
        """Steps, guidance scale, image side and A&E preset to start a sampling UI with."""
        if self.toy == "toyworld1":
            return SamplingDefaults(25, 3.0, self.native_image_size, "toyworld/attend_and_excite.yaml")
        if self.toy == "toyworld2":
            return SamplingDefaults(25, 3.0, self.native_image_size, "guidance/attend_and_excite.yaml")
        if self.family == "sdxl":  # sgm's demo: guidance scale 5
            return SamplingDefaults(50, 5.0, self.native_image_size, "guidance/attend_and_excite_sdxl.yaml")
        preset = "guidance/attend_and_excite_sd2.yaml" if self.family == "sd2" else "guidance/attend_and_excite.yaml"
        return SamplingDefaults(50, 7.5, self.native_image_size, preset)


def toy_method_settings(toy: str | None, method: str) -> Path | None:
    """A bundled toy's own settings file of a guidance method (chosen on the toy's tuning seeds): for ToyWorld 2
    ``configs/toyworld2/<file>.yaml``, else the first toy's ``configs/toyworld/<file>.yaml`` (``<file>``: the registry
    name, ``attend_and_excite`` for A&E). None for a model that is no toy, or when the toy has none."""
    if toy not in TOYS.values():
        return None
    file = "attend_and_excite" if method == "ae" else method
    folders = ["toyworld2", "toyworld"] if toy == "toyworld2" else ["toyworld"]
    return next((p for p in (CONFIGS / d / f"{file}.yaml" for d in folders) if p.is_file()), None)


def family_title(family: str) -> str:
    return FAMILIES.get(family, family)


def families_for_vectors(widths: dict[str, int]) -> list[str]:
    """The families whose released towers have these embedding widths (tower name -> width; "" for one tower)."""
    return [f for f, released in RELEASED_WIDTHS.items() if released == dict(widths)]


# --- from a config -------------------------------------------------------------------------------------------------
def _class_name(target: Any) -> str:
    return str(target or "").rsplit(".", 1)[-1]


def _target_class(node: Any) -> Any:
    """The class a ``{target, params}`` node names, or None when it cannot be imported."""
    target = node.get("target") if hasattr(node, "get") else None
    module, _, name = str(target or "").rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _params(node: Any) -> dict[str, Any]:
    """A ``{target, params}`` node's params on top of the target class's signature defaults (when importable)."""
    if node is None or isinstance(node, str):
        return {}
    raw = node.get("params") if hasattr(node, "get") else None
    params = dict(OmegaConf.to_container(raw, resolve=True) if isinstance(raw, DictConfig) else raw or {})
    cls = _target_class(node)
    try:
        signature = inspect.signature(cls) if cls is not None else None
    except (ValueError, TypeError):
        signature = None
    empty = inspect.Parameter.empty
    defaults = {k: p.default for k, p in signature.parameters.items() if p.default is not empty} if signature else {}
    return {**defaults, **params}


def _tower_from_params(kind: str, p: dict[str, Any], name: str = "") -> TextTower:
    if kind == "bert":
        return TextTower("bert", int(p.get("n_embed", 1280)), int(p.get("n_layer", 32)), "last", False, name)
    if kind == "clip":
        layers = int(p.get("num_hidden_layers", 12))
        layer = "last" if p.get("layer", "last") == "last" else f"hidden:{int(p['layer_idx']) % (layers + 1)}"
        return TextTower("clip", int(p.get("hidden_size", 768)), layers, layer, False, name)
    legacy = bool(p.get("legacy", True))
    return TextTower(
        "openclip", int(p.get("width", 1024)), int(p.get("layers", 24)), str(p.get("layer", "last")),
        bool(p.get("always_return_pooled", False)), name, final_norm=legacy,
    )  # fmt: skip


def _towers_from_config(cond: Any) -> tuple[TextTower, ...]:
    if cond is None or isinstance(cond, str):
        return ()
    cls = _class_name(cond.get("target"))
    params = _params(cond)
    if cls in CONDITIONERS:  # the conditioner's own defaults for its towers, then the config's
        conditioner = _target_class(cond)
        clip_l = {**conditioner.CLIP_L_DEFAULTS, **(params.get("clip_l") or {})}
        clip_g = {**conditioner.CLIP_G_DEFAULTS, **(params.get("clip_g") or {})}
        return (
            _tower_from_params("clip", _params({"target": _CLIP, "params": clip_l}), "clip_l"),
            _tower_from_params("openclip", _params({"target": _OPENCLIP, "params": clip_g}), "clip_g"),
        )
    if cls in TOWER_KINDS:
        return (_tower_from_params(TOWER_KINDS[cls], params),)
    return ()


_CLIP = "ldm.modules.encoders.modules.FrozenCLIPEmbedder"
_OPENCLIP = "ldm.modules.encoders.openclip.FrozenOpenCLIPEmbedder"


def _family(towers: tuple[TextTower, ...]) -> str:
    kinds = tuple(t.kind for t in towers)
    if kinds == ("clip", "openclip"):
        return "sdxl"
    single = {("bert",): "ldm", ("clip",): "sd1", ("openclip",): "sd2"}
    return single.get(kinds, "+".join(kinds) if kinds else "unconditional")


def _attention_ds(unet: dict[str, Any], levels: int) -> tuple[int, ...]:
    """Downsampling factors of the levels (and the middle block) that hold cross-attention."""
    if not unet.get("use_spatial_transformer", False) and unet.get("context_dim") is None:
        return ()
    depth = unet.get("transformer_depth", 1)
    depths = [int(d) for d in depth] if isinstance(depth, (list, tuple)) else [int(depth)] * levels
    resolutions = {int(r) for r in unet.get("attention_resolutions") or ()}
    ds = {2**level for level in range(levels) if 2**level in resolutions and depths[level] > 0}
    if depths[-1] > 0:
        ds.add(2 ** (levels - 1))  # the middle block's cross-attention
    return tuple(sorted(ds))


def describe_config(config: DictConfig | dict | str | os.PathLike) -> ModelDescription:
    """The description of a model config (a YAML path, or a config with ``model:`` at the top, or the model node)."""
    if isinstance(config, (str, os.PathLike)):
        from ldm.util import load_yaml  # a YAML error names the file, line and column

        config = load_yaml(Path(config), "--config")
    if isinstance(config, dict):
        config = OmegaConf.create(config)
    toy = TOYS.get(int(config.get("toyworld", 0) or 0)) if "model" in config else None
    model = config.model if "model" in config else config
    params = model.get("params") or {}
    ch_mult = OmegaConf.select(model, "params.first_stage_config.params.ddconfig.ch_mult")
    f = 2 ** (len(ch_mult) - 1) if ch_mult else DEFAULT_FIRST_STAGE_FACTOR
    unet = _params(params.get("unet_config"))
    levels = len(unet.get("channel_mult") or DEFAULT_CHANNEL_MULT)
    towers = _towers_from_config(params.get("cond_stage_config"))
    return ModelDescription(
        family=_family(towers),
        towers=towers,
        context_dim=int(unet["context_dim"]) if unet.get("context_dim") is not None else None,
        vector_dim=int(unet["adm_in_channels"]) if unet.get("num_classes") == "sequential" else None,
        first_stage_factor=f,
        channels=int(params.get("channels", unet.get("in_channels", 4))),
        unet_levels=levels,
        attention_ds=_attention_ds(unet, levels),
        parameterization=str(params.get("parameterization", "eps")),
        image_size=int(params.get("image_size", unet.get("image_size", 32))),
        timesteps=int(params.get("timesteps", 1000)),
        toy=toy,
    )


# --- from a loaded model -------------------------------------------------------------------------------------------
def _tower_from_module(encoder: Any, name: str = "") -> TextTower:
    kind = TOWER_KINDS[type(encoder).__name__]
    return TextTower(
        kind, int(encoder.embedding_dim), int(encoder.num_layers), str(encoder.layer_used),
        bool(getattr(encoder, "return_pooled", False)), name, final_norm=bool(getattr(encoder, "legacy", True)),
    )  # fmt: skip


def _towers_from_encoder(cond: Any) -> tuple[TextTower, ...]:
    if type(cond).__name__ in CONDITIONERS:
        return tuple(_tower_from_module(t, n) for n, t in zip(cond.tower_names, cond.towers, strict=True))
    if type(cond).__name__ in TOWER_KINDS:
        return (_tower_from_module(cond),)
    return ()


def encoder_family(encoder: Any) -> str | None:
    """The family of a text encoder (a ``cond_stage_model``) on its own, as an ``EmbeddingManager`` sees its model;
    None for an encoder of no known kind."""
    towers = _towers_from_encoder(encoder)
    return _family(towers) if towers else None


def describe_model(model: Any) -> ModelDescription:
    """The description of a loaded ``LatentDiffusion`` (the one its config gave, when it was built from one)."""
    known = getattr(model, "description", None)
    if isinstance(known, ModelDescription):
        return known
    towers = _towers_from_encoder(getattr(model, "cond_stage_model", None))
    unet = model.model.diffusion_model
    levels = len(unet.channel_mult)
    first = model.first_stage_model
    levels_f = getattr(getattr(first, "encoder", None), "num_resolutions", None)
    f = 2 ** (levels_f - 1) if levels_f else DEFAULT_FIRST_STAGE_FACTOR
    ds = tuple(sorted(set(unet.attention_block_ds.values())))
    return ModelDescription(
        family=_family(towers),
        towers=towers,
        context_dim=getattr(unet, "context_dim", None),
        vector_dim=getattr(unet, "adm_in_channels", None) if unet.num_classes == "sequential" else None,
        first_stage_factor=f,
        channels=int(model.channels),
        unet_levels=levels,
        attention_ds=ds,
        parameterization=str(model.parameterization),
        image_size=int(model.image_size),
        timesteps=int(model.num_timesteps),
    )


def describe(source: Any) -> ModelDescription:
    """:func:`describe_config` for a path or config, :func:`describe_model` for a loaded model."""
    if isinstance(source, (str, os.PathLike, DictConfig, dict)):
        return describe_config(source)
    return describe_model(source)
