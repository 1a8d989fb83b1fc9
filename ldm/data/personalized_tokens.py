"""Per-image placeholder tokens of textual inversion (``per_image_tokens``): the 22 Hebrew letters.

Each is a single token in bert-base-uncased (LDM); in the CLIP BPE vocabulary (SD) each splits into two byte-level
tokens, so per-image tokens work only with ``BERTEmbedder`` (the original asserts the same way).
"""

per_img_token_list: list[str] = [
    "א",
    "ב",
    "ג",
    "ד",
    "ה",
    "ו",
    "ז",
    "ח",
    "ט",
    "י",
    "כ",
    "ל",
    "מ",
    "נ",
    "ס",
    "ע",
    "פ",
    "צ",
    "ק",
    "ר",
    "ש",
    "ת",
]
