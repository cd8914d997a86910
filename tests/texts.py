"""Small texts for tests: paragraphs on distinct topics, so similarity search has an answer."""

from __future__ import annotations

TOPICS = [
    "The lighthouse keeper polished the great lens every evening before the storm.",
    "Merchants in the spice market argued over saffron prices and copper coins.",
    "The orchestra tuned violins while the conductor studied the symphony score.",
    "Glaciers carved the valley as ice sheets retreated over thousands of years.",
    "The chess champion sacrificed her queen to trap the opposing king.",
    "Bakers kneaded sourdough at dawn while ovens warmed the narrow bakery.",
]


def story(repeats: int = 4, separator: str = "\n") -> str:
    """One paragraph per topic, each its sentence ``repeats`` times."""
    return separator.join(" ".join([topic] * repeats) for topic in TOPICS)
