"""The search seam: what answering may ask of the knowledge base, typed so that the caller never probes.

`Answerer` (pipeline.py) and `Query.search` (condense.py) see the knowledge
base only through the `Searcher` protocol. `bot.knowledge.retrieval.Searcher`
satisfies it; so must anything a test or a future engine puts in its place
(tests/test_architecture.py checks the real one against this list).

It lives here, beside its consumer, rather than in knowledge/: it states what
answering needs (not everything retrieval offers), and knowledge sits below
answering in the layers, so it satisfies the protocol by shape, without
importing it. Every member is required.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # annotations only: the seam itself costs no numpy, no index
    from bot.knowledge.retrieval import Hit


@runtime_checkable
class Searcher(Protocol):
    """The knowledge base as served.

    `rows` are the passages served now (dicts with at least `doc`, `heading`,
    `text`), read by the abstention judge; a re-index replaces the list, so
    its identity tells the judge to rebuild. `reranks` says whether a hit's
    `score` is the re-ranker's probability (comparable across questions)
    rather than a score comparable only within one question.
    """

    @property
    def rows(self) -> list[dict]: ...

    @property
    def reranks(self) -> bool: ...

    def search(self, question: str, k: int = 5) -> list[Hit]: ...

    def search_parts(self, parts: list[tuple[str, float]], k: int = 5) -> list[Hit]: ...
