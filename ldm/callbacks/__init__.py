"""Lightning callbacks of the training CLI (`main.py`): run-folder setup, image logging, embedding files and
CUDA statistics. The research code (`LatentDiffusion`) knows nothing about files or folders."""

from ldm.callbacks.cuda import CUDACallback
from ldm.callbacks.embeddings import EmbeddingWriter, atomic_save
from ldm.callbacks.image_logger import ImageLogger
from ldm.callbacks.setup import SetupCallback

__all__ = ["CUDACallback", "EmbeddingWriter", "ImageLogger", "SetupCallback", "atomic_save"]
