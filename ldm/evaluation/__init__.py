"""CLIP-based evaluation: Textual Inversion (reconstruction/editability) and Attend-and-Excite metrics."""
