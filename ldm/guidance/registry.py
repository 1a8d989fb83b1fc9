"""The registered guidance methods: one line each. A new method is one folder under ``ldm/guidance/`` exporting a
``METHOD`` (a ``GuidanceMethod``) and one line here."""

from __future__ import annotations

from ldm.guidance import attend_excite, conform, divide_bind, initno, plain, syngen

BUILTIN = [
    plain.METHOD,
    attend_excite.METHOD,
    syngen.METHOD,
    divide_bind.METHOD,
    conform.METHOD,
    initno.METHOD,
]
