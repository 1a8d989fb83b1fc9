"""SynGen (Rassin et al., NeurIPS 2023, "Linguistic Binding in Diffusion Models"): bind each modifier to its noun.

At each of the first steps the latent is moved against the gradient of the SynGen loss (``loss.py``) on the
cross-attention maps of a conditional UNet pass: a modifier's map is pulled towards its noun's, and both are pushed
away from the maps of the prompt's other words:

    z_t <- z_t - alpha * dL/dz_t        at steps i < max_iter_to_alter (official: 25 of 50), alpha = 20 (constant)

One update per step, no iterative refinement (the official loop). The loop is the guidance package's shared one
(``ldm/guidance/engine.py``): the pass goes through the model's own denoising call and stops after the last block
with maps at ``attention_res`` (the official pass runs the whole UNet; the maps and the gradient are the same), and
the samples of a batch go through one pass, each with its own loss (the official pipeline can only run one sample,
see ``tests/fixtures/guidance/syngen/README.md``). Which words bind: ``--g_pairs``, or the prompt's parse
(``ldm/guidance/parse.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ldm.errors import UserError
from ldm.guidance.attend_excite.config import step_size
from ldm.guidance.capture import CapturedMaps
from ldm.guidance.engine import AttentionLossGuidance, GroupLoss, LossGroup, SampleTarget, StepMaps
from ldm.guidance.parse import PLACEHOLDERS, NounPhrase, bindings, prompt_phrases, prompt_words, resolve_pairs
from ldm.guidance.syngen.config import SynGenConfig
from ldm.guidance.syngen.loss import Binding, binding_loss, pixel_distributions
from ldm.guidance.tokens import PromptTokens

__all__ = ["SynGen", "sample_target"]

logger = logging.getLogger(__name__)


def sample_target(
    tokens: PromptTokens, config: SynGenConfig, view_groups: Sequence[tuple[int, ...]] = ()
) -> SampleTarget:
    """One sample's bindings: from ``config.pairs`` or the prompt's parse, as positions of ``tokens``.

    ``token_groups`` are the words whose maps viewers show: ``view_groups`` (the ``--ae_tokens`` words) when given,
    else the words that bind (modifiers and nouns, in order); ``extras`` holds the
    :class:`~ldm.guidance.syngen.loss.Binding` list (``"bindings"``) and the prompt positions (``"prompt_positions"``).
    """
    placeholders = set(PLACEHOLDERS) | set(tokens.placeholders.values())
    words = prompt_words(tokens.table, placeholders)
    if config.pairs.strip():
        phrases: Sequence[NounPhrase] = resolve_pairs(config.pairs, words, flag="--g_pairs")
    else:
        found = prompt_phrases(tokens.prompt, words, config.parser, config.spacy_model, placeholders)
        phrases = bindings(found, include_entities=config.include_entities)
    binds = tuple(Binding(p.noun.positions, tuple(m.positions for m in p.modifiers)) for p in phrases)
    groups = tuple(view_groups) or tuple(dict.fromkeys(g for b in binds for g in (*b.modifiers, b.noun)))
    extras = {"bindings": binds, "prompt_positions": tuple(range(1, tokens.eot))}
    return SampleTarget(groups, tokens.eot, extras)


def describe_target(target: SampleTarget, tokens: PromptTokens) -> str:
    """``"red -> circle, blue -> square"`` for the log."""
    names = dict(tokens.table)

    def word(group: tuple[int, ...]) -> str:
        return "".join(names.get(p, "?").removesuffix("</w>").removeprefix("##") for p in group)

    parts = []
    for b in target.extras.get("bindings", ()):
        mods = "+".join(word(m) for m in b.modifiers)
        parts.append(f"{mods} -> {word(b.noun)}" if mods else f"(entity) {word(b.noun)}")
    return ", ".join(parts) or "none"


class SynGen(AttentionLossGuidance):
    """The SynGen latent guidance (``LatentGuidance`` protocol), composed into any sampler.

    Args:
        model: the ``LatentDiffusion`` (or a bare UNet in unit tests).
        config: the settings; ``max_iter_to_alter`` in absolute steps (``config.for_steps``).
        targets: one :func:`sample_target` per sample (a sample without bindings is not guided).
        truncate, on_maps: see ``AttentionLossGuidance``. The maps a viewer gets are the map of each word of the
            target's ``token_groups`` as a distribution over the pixels (the max over a word's positions), the maps
            the loss compares: ``[K, r, r]``.
    """

    def __init__(
        self,
        model: Any,
        config: SynGenConfig,
        targets: Sequence[SampleTarget],
        truncate: bool = True,
        on_maps: Callable[[StepMaps], None] | None = None,
    ) -> None:
        super().__init__(model, config, targets, truncate=truncate, on_maps=on_maps)

    def has_target(self, target: SampleTarget) -> bool:
        return bool(target.extras.get("bindings"))

    def check_group(self, group: LossGroup, num_tokens: int) -> None:
        for p in group.target.extras["prompt_positions"]:
            if not 1 <= p < num_tokens - 1:
                raise ValueError(f"SynGen position {p} is outside the prompt positions 1..{num_tokens - 2}")

    def threshold_at(self, step: int) -> float | None:
        return None  # SynGen has no iterative refinement

    def step_size(self, step: int, num_steps: int) -> float:
        return step_size(self.config, step, num_steps)

    def group_loss(self, maps: CapturedMaps, group: LossGroup, step: int) -> GroupLoss:
        extras = group.target.extras
        loss = binding_loss(maps.cross[self.config.attention_res], extras["bindings"], extras["prompt_positions"])
        return GroupLoss(loss)

    def view_maps(self, maps: CapturedMaps, group: LossGroup) -> torch.Tensor:
        cross = maps.cross[self.config.attention_res]  # [r, r, 77]
        r = cross.shape[0]
        views = [pixel_distributions(cross, g).max(dim=0).values.reshape(r, r) for g in group.token_groups]
        return torch.stack(views)  # [K, r, r]


def build_syngen(
    model: Any,
    config: SynGenConfig,
    tokens: Sequence[PromptTokens],
    on_maps: Callable[[StepMaps], None] | None = None,
    view_groups: Sequence[Sequence[tuple[int, ...]]] | None = None,
) -> SynGen | None:
    """SynGen on each sample's bindings; None (with a warning) when no prompt of the batch has any.
    ``view_groups``: per sample, the words whose maps ``on_maps`` gets (the ``--ae_tokens`` groups; default: the
    binding words)."""
    targets = []
    for b, t in enumerate(tokens):
        try:
            targets.append(sample_target(t, config, view_groups[b] if view_groups else ()))
        except UserError as err:
            raise UserError(f"{err} (prompt {t.prompt!r})") from None
    for t, target in zip(tokens, targets):
        logger.info("SynGen bindings of %r: %s", t.prompt, describe_target(target, t))
    if not any(target.extras["bindings"] for target in targets):
        logger.warning("SynGen: no modifier-noun pair in %s; sampling without guidance (give --g_pairs "
                       "'modifier:noun')", ", ".join(repr(t.prompt) for t in tokens))  # fmt: skip
        return None
    return SynGen(model, config, targets, on_maps=on_maps)
