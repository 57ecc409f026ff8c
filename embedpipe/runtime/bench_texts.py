"""Benchmark documents: short (~9 words), long (~49 words) and extra-long (~400 words).

Written for the benchmark (plain English on everyday technical topics) and varied
deterministically, so every text of a batch is distinct but the lengths stay put.
"""

from __future__ import annotations

SHORT: tuple[str, ...] = (
    "How do I reset the router password at home?",
    "Best way to store fresh basil for a week",
    "Why does my laptop battery drain so quickly overnight?",
    "Train delays expected on the northern line this weekend",
    "Simple recipe for bread without a stand mixer",
    "What causes the northern lights to change colour?",
    "Museum opening hours during the public holiday period",
    "Compare electric and gas heating costs for winter",
    "The library extends its evening hours starting in May",
    "Symptoms of dehydration in older adults during summer",
    "Which houseplants survive in rooms without direct sunlight?",
    "City council approves new bicycle lanes along the river",
)

SENTENCES: tuple[str, ...] = (
    "The new water treatment plant opened on Monday after three years of construction and delays.",
    "Engineers say the facility can filter enough water for roughly two hundred thousand households.",
    "Residents had complained for years about the taste and colour of the water in older districts.",
    "The city plans to replace the remaining lead pipes by the end of the next decade.",
    "A small team of volunteers repaired the footbridge over the canal during the summer holidays.",
    "Local shops reported that weekend sales rose once the bridge was open to walkers again.",
    "The school added an evening course on basic programming for adults who want to change careers.",
    "Students build a small web application and learn how databases store and retrieve records.",
    "Farmers in the valley are testing drip irrigation to save water during the dry months.",
    "Early results suggest yields stay the same while water use falls by nearly a third.",
    "The orchestra announced a free concert in the park to celebrate its fiftieth season.",
    "Musicians will play pieces chosen by listeners who voted online over the past month.",
    "Doctors recommend short walks after meals to help keep blood sugar levels steady.",
    "Even ten minutes of light activity can make a measurable difference for many people.",
    "The museum restored a damaged painting using photographs taken before the fire.",
    "Conservators matched the original pigments by analysing tiny samples under a microscope.",
    "Heavy rain flooded several roads near the coast and closed two railway stations.",
    "Crews worked through the night to pump water away and clear fallen trees.",
    "A startup in the old harbour district makes furniture from recycled fishing nets.",
    "The company now employs forty people and ships its chairs to customers across Europe.",
    "Astronomers observed a comet that will pass close enough to be seen without a telescope.",
    "The best viewing time will be just before dawn, away from bright city lights.",
    "The library introduced a tool lending service where members can borrow drills and ladders.",
    "Librarians say the most popular items so far are sewing machines and camping gear.",
)


_STRIDES = (1, 5, 7, 11, 13, 17, 19, 23)  # coprime with len(SENTENCES) = 24


def _paragraph(i: int, n_sentences: int) -> str:
    """Sentences of document ``i``: a start and stride that differ between documents."""
    stride = _STRIDES[(i // len(SENTENCES)) % len(_STRIDES)]
    return " ".join(SENTENCES[(i + j * stride) % len(SENTENCES)] for j in range(n_sentences))


def documents(kind: str, n: int) -> list[str]:
    """``n`` distinct documents of ``kind`` ("short", "long" or "xlong")."""
    if kind == "short":
        return [f"{SHORT[i % len(SHORT)]} ({i // len(SHORT) + 1})" if i >= len(SHORT) else SHORT[i] for i in range(n)]
    if kind == "long":
        return [f"{_paragraph(i, 3)} {SHORT[i % len(SHORT)]}" for i in range(n)]
    if kind == "xlong":
        return [_paragraph(i, 28) for i in range(n)]
    raise ValueError(f"unknown document kind {kind!r}: short, long or xlong")
