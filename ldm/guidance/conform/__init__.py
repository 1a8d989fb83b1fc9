"""CONFORM (Meral et al., CVPR 2024): a contrastive loss on the cross-attention maps (see ``loss.py``)."""
