"""The work of a sampling run as a list of items, each image with its own seed and its own file.

An item is one image: ``(prompt, sample index, method)`` with the method a registered guidance method's name
(``"plain"``, ``"ae"`` for Attend-and-Excite on the item's ``ae_tokens``, ``"syngen"``, ...; see ``ldm.guidance``). Its
seed is :func:`item_seed` of ``(base seed, prompt, index)``, not of the method, so an image with and without guidance
starts from the same noise, and not of the batch, the process or the order, so an
image is the same however the run is split (see docs/distributed.md, the seed rule).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ldm import guidance
from ldm.outputs import inside, safe_stem

logger = logging.getLogger(__name__)

__all__ = ["METHODS", "WorkItem", "item_seed", "item_generator", "start_noise", "prompt_stems", "make_items"]

METHODS = ("plain", "ae")  # the methods every install has; any registered guidance method is accepted


def item_seed(seed: int, prompt: str, index: int) -> int:
    """The image's own seed: the first 8 bytes of ``sha256(f"{seed}|{prompt}|{index}")`` as a 63-bit integer."""
    digest = hashlib.sha256(f"{int(seed)}|{prompt}|{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def item_generator(seed: int) -> torch.Generator:
    """A CPU generator for one image: its start noise and then its step noise (DDPM, DDIM with eta > 0).

    Drawing on the CPU (then moving to the device) makes an image's noise the same on every device.
    """
    return torch.Generator(device="cpu").manual_seed(int(seed))


def start_noise(generator: torch.Generator, shape: tuple[int, int, int]) -> torch.Tensor:
    """x_T of one image, ``[C, h, w]`` float32 on the CPU (the generator moves on for the step noise)."""
    return torch.randn(shape, generator=generator, dtype=torch.float32)


@dataclass(frozen=True)
class WorkItem:
    """One image to make: where it goes, how, and with which seed."""

    prompt: str
    index: int  # the sample index within the prompt (and method)
    method: str  # a registered guidance method: "plain", "ae", ...
    path: Path  # the image file (PNG); its existence marks the item done
    seed: int  # item_seed(...)
    ae_tokens: str = ""  # words/positions the method excites (A&E: required)
    record_path: Path | None = None  # where the guidance record of this image goes (JSON), written before the image

    def __post_init__(self) -> None:
        names = guidance.method_names()
        if self.method not in names:
            raise ValueError(f"unknown sampling method {self.method!r}; use one of {tuple(names)}")
        if guidance.get_method(self.method).needs_tokens and not self.ae_tokens.strip():
            title = "A&E" if self.method == "ae" else self.method
            raise ValueError(f"{title} item for {self.prompt!r} has no tokens to excite")


def prompt_stems(prompts: Sequence[str], given: Mapping[str, str] | None = None) -> dict[str, str]:
    """A distinct folder name for every prompt. ``given``: names handed out before (a run's record), kept as they
    are. A new prompt gets ``safe_stem(prompt)``; when that is taken (case-insensitively, by a given name or an earlier
    prompt of the list: ``"a/cat"`` after ``"a cat"``), the newcomer gets ``-<first 8 hex digits of sha256(prompt)>``
    appended. A name once given never changes when prompts are added.
    """
    stems = {p: given[p] for p in dict.fromkeys(prompts) if given and p in given}
    taken = {stem.lower() for stem in (given or {}).values()}  # case-insensitive file systems
    for prompt in dict.fromkeys(prompts):
        if prompt in stems:
            continue
        stem = safe_stem(prompt)
        if stem.lower() in taken:
            stem = base = f"{stem}-{hashlib.sha256(prompt.encode()).hexdigest()[:8]}"
            k = 1
            while stem.lower() in taken:
                k += 1
                stem = f"{base}-{k}"
        taken.add(stem.lower())
        stems[prompt] = stem
    return stems


def make_items(
    root: str | Path,
    prompts: Iterable[str],
    n_per_prompt: int,
    methods: Sequence[str],
    seed: int,
    path_of: Callable[[str, int, str], str | Path],
    ae_tokens_of: Callable[[str], str] | None = None,
    record_of: Callable[[str, int, str], str | Path] | None = None,
    fixed_code: bool = False,
) -> list[WorkItem]:
    """Every ``(prompt, index, method)`` item, methods outermost, then prompts in order, then indices.

    ``path_of(prompt, index, method)`` gives the image path (relative to ``root`` or absolute; it must resolve
    inside ``root``), ``record_of`` the guidance record path, ``ae_tokens_of(prompt)`` the tokens a method excites.
    A prompt given twice is kept once (its images would be the same), with a warning. ``fixed_code``: the seed
    ignores the prompt, so sample ``i`` of every prompt starts from the same noise.
    """
    if n_per_prompt < 1:
        raise ValueError(f"need at least one image per prompt, got {n_per_prompt}")
    prompts = list(prompts)
    unique = list(dict.fromkeys(prompts))
    if len(unique) < len(prompts):
        logger.warning("%d repeated prompts are sampled once each", len(prompts) - len(unique))
    root = Path(root)
    items = []
    for method in methods:
        for prompt in unique:
            tokens = ae_tokens_of(prompt) if (method != "plain" and ae_tokens_of is not None) else ""
            for index in range(n_per_prompt):
                record = None
                if method != "plain" and record_of is not None:
                    record = inside(root, record_of(prompt, index, method))
                items.append(
                    WorkItem(
                        prompt=prompt, index=index, method=method, path=inside(root, path_of(prompt, index, method)),
                        seed=item_seed(seed, "" if fixed_code else prompt, index), ae_tokens=tokens,
                        record_path=record,
                    )
                )  # fmt: skip
    paths = [it.path for it in items]
    if len(set(paths)) != len(paths):
        raise ValueError("two items map to the same image file; the output layout must name every item apart")
    return items
