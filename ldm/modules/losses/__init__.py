from ldm.modules.losses.kl import KLReconstructionLoss

__all__ = ["KLReconstructionLoss"]
