"""Agents over memory and the LLM boundary: the writer, HiAgent, the document reader.

Public API: :class:`DocumentReader` (ingest, ask with citations, hierarchical summaries) with
its :class:`ReaderConfig` and result types :class:`Answer`, :class:`Citation`, :class:`Summary`.
"""

from agents.reader import (
    NOTHING_RELEVANT,
    Answer,
    Citation,
    DocumentReader,
    ReaderConfig,
    Summary,
    SummaryProgress,
)

__all__ = [
    "NOTHING_RELEVANT",
    "Answer",
    "Citation",
    "DocumentReader",
    "ReaderConfig",
    "Summary",
    "SummaryProgress",
]
