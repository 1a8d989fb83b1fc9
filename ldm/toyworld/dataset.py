"""ToyWorldDataset: the procedural ToyWorld scenes (`ldm.toyworld.scenes`) with captions, as a torch Dataset.

Item ``i`` of a split is a pure function of ``(seed, split, i)`` and the dataset's parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch.utils.data import Dataset

from ldm.toyworld.caption_noise import check_probability
from ldm.toyworld.scenes import (
    COLOURS,
    DEFAULT_COLOURS,
    DEFAULT_HELDOUT,
    HELDOUT_SHAPES,
    NAMED_SHAPES,
    SPLITS,
    SceneSpec,
    caption_for,
    check_names,
    image_to_array,
    render_scene,
    sample_scene,
    scene_rng,
)


class ToyWorldDataset(Dataset):
    """Procedural scenes with captions; items are ``{"image": HWC float32 in [-1, 1], "caption": str}``.

    Usable from a config as ``target: ldm.toyworld.dataset.ToyWorldDataset`` with ``params``. Items are rendered on the
    fly (about 1 ms each at 64x64); item ``i`` depends only on ``(seed, split, i)`` and the other parameters.
    ``p_over_describe`` / ``p_under_describe``: caption noise (see `caption_for`; 0 = the shipped BERT toy's captions).
    """

    def __init__(
        self,
        size: int = 64,
        num_samples: int = 20000,
        split: str = "train",
        seed: int = 0,
        min_objects: int = 1,
        max_objects: int = 3,
        shapes: Sequence[str] = NAMED_SHAPES,
        colours: Sequence[str] = DEFAULT_COLOURS,
        heldout_shape: str | None = DEFAULT_HELDOUT,
        heldout_prob: float = 0.12,
        generic_prob: float = 0.2,
        drop_colour_prob: float = 0.1,
        p_over_describe: float = 0.0,
        p_under_describe: float = 0.0,
        min_size: float = 8.0,
        max_size: float = 13.0,
        supersample: int = 4,
    ) -> None:
        super().__init__()
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {sorted(SPLITS)}")
        self.shapes = check_names(list(shapes), NAMED_SHAPES + HELDOUT_SHAPES, "shapes")
        if heldout_shape is not None and heldout_shape in self.shapes:
            raise ValueError(f"heldout_shape {heldout_shape!r} must not be in shapes {list(self.shapes)}")
        self.colours = check_names(list(colours), tuple(COLOURS), "colours")
        self.size, self.num_samples, self.split, self.seed = int(size), int(num_samples), split, int(seed)
        self.min_objects, self.max_objects = int(min_objects), int(max_objects)
        self.heldout_shape, self.heldout_prob = heldout_shape, float(heldout_prob)
        self.generic_prob, self.drop_colour_prob = float(generic_prob), float(drop_colour_prob)
        self.p_over_describe = check_probability(p_over_describe, "p_over_describe")
        self.p_under_describe = check_probability(p_under_describe, "p_under_describe")
        self.min_size, self.max_size, self.supersample = float(min_size), float(max_size), int(supersample)

    def __len__(self) -> int:
        return self.num_samples

    def spec(self, i: int) -> SceneSpec:
        """The scene description of item ``i``."""
        if not 0 <= i < self.num_samples:
            raise IndexError(f"index {i} out of range for ToyWorldDataset of {self.num_samples} items")
        return sample_scene(
            scene_rng(self.seed, self.split, i, 0),
            canvas=self.size,
            min_objects=self.min_objects,
            max_objects=self.max_objects,
            shapes=self.shapes,
            heldout_shape=self.heldout_shape,
            heldout_prob=self.heldout_prob,
            colours=self.colours,
            min_size=self.min_size,
            max_size=self.max_size,
        )

    def caption(self, spec: SceneSpec, i: int) -> str:
        return caption_for(
            spec,
            scene_rng(self.seed, self.split, i, 1),
            named_shapes=self.shapes,
            generic_prob=self.generic_prob,
            drop_colour_prob=self.drop_colour_prob,
            p_over_describe=self.p_over_describe,
            p_under_describe=self.p_under_describe,
            noise_rng=scene_rng(self.seed, self.split, i, 2),
            colours=self.colours,
        )

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if i < 0:
            i += self.num_samples
        spec = self.spec(i)
        img = render_scene(spec, self.size, self.supersample)
        return {"image": image_to_array(img), "caption": self.caption(spec, i)}
