"""The Attend-and-Excite explorer: a browser page over :mod:`ldm.inference` (``python scripts/explore.py``).

- :mod:`ldm.explorer.chips`: a prompt as word chips (the ``--ae_tokens`` lookup's grouping) and chips <-> string.
- :mod:`ldm.explorer.session`: the loaded model, the A&E presets and fields, a run without and with A&E.
- :mod:`ldm.explorer.views`, :mod:`ldm.explorer.plot`: maps over images, the per-step plot, the summary.
- :mod:`ldm.explorer.callbacks`: the page's callbacks as plain functions (tested without a browser).
- :mod:`ldm.explorer.app`: the Gradio page (the ``app`` extra); nothing else here imports Gradio.
"""
