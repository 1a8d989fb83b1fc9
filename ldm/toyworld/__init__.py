"""ToyWorld: a miniature text-to-image world (coloured shapes, template captions) for training and measuring tiny
latent-diffusion models offline, with a detector that judges their samples. One feature, one package:

- `scenes`: scene sampling and rendering, template captions, the caption vocabulary and tokenizer, the held-out
  shape's example scenes;
- `caption_noise`: over- and under-description of captions (ToyWorld 2's catastrophic-neglect training data);
- `dataset`: ``ToyWorldDataset``, the scenes and captions as a torch Dataset (``target:
  ldm.toyworld.dataset.ToyWorldDataset`` in configs/toyworld*/);
- `detect`: the deterministic detector (which coloured shapes an image shows) and caption parsing;
- `sampling`: sampling the bundled ToyWorld models with per-sample seeds, the detector's verdicts, sample grids;
- `prompts`: the benchmarks' prompt families;
- `stats`: Wilson intervals, paired bootstrap differences, per-sample hits;
- `benchmarks`: the evaluation's benchmarks (A&E and textual inversion) and the caption-noise sweep's measurement;
- `report`: the results section of docs/results.md, the plot, and reading a section's headline back;
- `demo`: the detector's verdicts on scripts/txt2img.py sampling runs (scripts/demo.sh);
- `export`: trained checkpoints -> the shipped fp16 state dicts.

Imports point one way: caption_noise <- scenes <- dataset, detect; detect <- sampling, prompts; sampling, prompts,
stats <- benchmarks <- report; sampling <- demo. The rest of ``ldm`` never imports this package (only scripts, tests
and configs do), so there is no import cycle. This file imports nothing, so ``import ldm.toyworld.scenes`` stays
light.
"""
