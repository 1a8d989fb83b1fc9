"""SynGen (Rassin et al., NeurIPS 2023, "Linguistic Binding in Diffusion Models"): binding modifiers to their nouns."""
