"""Retrieval quality and speed on a question set: `python -m bot eval-retrieval [FILE]`.

A hit is correct when it comes from the expected document and its text
contains the `evidence` span verbatim. Unanswerable questions (no `doc`) are
left out of recall and MRR; they only count towards latency.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


class BadQuestionFile(ValueError):
    """A question file that cannot be read as one JSON object with a question per line: says where."""


def load_questions(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadQuestionFile(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not str(row.get("question", "")).strip():
            raise BadQuestionFile(f"{path}:{n}: each line needs a non-empty \"question\"")
        rows.append(row)
    return rows


def correct(hit, row: dict) -> bool:
    return Path(hit.doc).name == row["doc"] and row["evidence"] in hit.text


def evaluate(searcher, rows: list[dict], k: int = 5) -> dict:
    """Recall@1, recall@k and MRR per language, plus latency percentiles and misses."""
    searcher.search("warm-up 预热", k)  # first call pays for lazy imports and caches
    per_lang: dict[str, dict] = {}
    latencies, misses = [], []
    for row in rows:
        t0 = time.perf_counter()
        hits = searcher.search(row["question"], k)
        latencies.append((time.perf_counter() - t0) * 1000)
        if not row.get("doc"):
            continue
        rank = next((i + 1 for i, h in enumerate(hits) if correct(h, row)), None)
        s = per_lang.setdefault(row.get("lang", "?"), {"n": 0, "r1": 0, "rk": 0, "rr": 0.0})
        s["n"] += 1
        s["r1"] += rank == 1
        s["rk"] += rank is not None
        s["rr"] += 1 / rank if rank else 0.0
        if rank != 1:
            misses.append({"id": row.get("id"), "lang": row.get("lang"), "rank": rank, "question": row["question"]})
    report = {
        lang: {"n": s["n"], "recall@1": s["r1"] / s["n"], f"recall@{k}": s["rk"] / s["n"], "mrr": s["rr"] / s["n"]}
        for lang, s in sorted(per_lang.items())
    }
    lat = np.array(latencies or [0.0])
    return {
        "k": k,
        "by_lang": report,
        "latency_ms": {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)), "n": len(latencies)},
        "misses": misses,
    }


def format_report(result: dict, path: Path) -> str:
    k = result["k"]
    lines = [f"{path}", f"{'lang':<6}{'n':>4}{'recall@1':>10}{f'recall@{k}':>10}{'MRR':>8}"]
    for lang, s in result["by_lang"].items():
        lines.append(f"{lang:<6}{s['n']:>4}{s['recall@1']:>10.3f}{s[f'recall@{k}']:>10.3f}{s['mrr']:>8.3f}")
    lat = result["latency_ms"]
    lines.append(f"latency over {lat['n']} queries: p50 {lat['p50']:.2f} ms, p95 {lat['p95']:.2f} ms")
    if result.get("load_ms") is not None:
        lines.append(f"index load {result['load_ms']:.0f} ms")
    for m in result["misses"]:
        where = f"rank {m['rank']}" if m["rank"] else f"not in top {k}"
        lines.append(f"  miss {m['id']} ({m['lang']}, {where}): {m['question']}")
    return "\n".join(lines)


class _Variant:
    """A stripped-down searcher over (doc, heading, text, tokens) units, for comparisons."""

    def __init__(self, units: list[dict], tokenize, lexicon=None):
        from bot.knowledge.retrieval import Hit, LexicalRetriever

        self.units, self.tokenize, self._hit = units, tokenize, Hit
        self.lex = LexicalRetriever([u["tokens"] for u in units], lexicon or {})
        if lexicon is None:  # no query translation: plain bag of query tokens
            self.lex.query_weights = lambda q: {t: 1.0 for t in self.tokenize(q)}

    def search(self, question: str, k: int):
        return [self._hit(0, self.units[i]["doc"], self.units[i]["heading"], self.units[i]["text"], s)
                for i, s in self.lex.rank(question, k)]


class _Fts5Variant:
    """SQLite FTS5's bm25() over the same tokens as ours (space-joined)."""

    def __init__(self, units: list[dict]):
        import sqlite3

        from bot.knowledge.retrieval import Hit

        self.units, self._hit = units, Hit
        self.conn = sqlite3.connect(":memory:")
        self.conn.execute("create virtual table f using fts5(body, tokenize=\"unicode61 tokenchars '~'\")")
        self.conn.executemany("insert into f(rowid, body) values (?, ?)",
                              [(i, " ".join(u["tokens"])) for i, u in enumerate(units)])

    def search(self, question: str, k: int):
        from bot.knowledge import textproc

        terms = {t.replace('"', "") for t in textproc.tokens(question)}
        if not terms:
            return []
        match = " OR ".join(f'"{t}"' for t in terms)
        rows = self.conn.execute("select rowid, -bm25(f) from f where f match ? order by bm25(f) limit ?", [match, k])
        return [self._hit(0, self.units[i]["doc"], self.units[i]["heading"], self.units[i]["text"], s) for i, s in rows]


def compare(db, rows: list[dict], k: int = 5) -> dict[str, dict]:
    """The lexical designs we measured before choosing, on the same questions."""
    from bot import store
    from bot.knowledge import textproc
    from bot.knowledge.retrieval import Searcher

    passages = store.passages(db)
    for p in passages:
        p["tokens"] = p["tokens"].split(" ") if p["tokens"] else []
    sections: dict[tuple[str, str], dict] = {}
    for p in passages:
        s = sections.setdefault((p["doc"], p["heading"]), {"doc": p["doc"], "heading": p["heading"], "text": ""})
        s["text"] += p["text"] + "\n\n"

    def char_bigrams(text):
        return ["~" + b for m in textproc.CJK_RE.findall(text) for b in textproc.bigrams(m)] + textproc.english_words(text)

    def jieba_only(text):
        return [t for t in textproc.tokens(text) if not t.startswith("~")]

    def units(items, tokenize):
        return [{**u, "tokens": tokenize(f"{u['heading']}\n{u['text']}")} for u in items]

    variants = {
        "bigram BM25, heading sections": _Variant(units(sections.values(), char_bigrams), char_bigrams),
        "bigram BM25, passages": _Variant(units(passages, char_bigrams), char_bigrams),
        "jieba BM25, passages": _Variant(units(passages, jieba_only), jieba_only),
        "jieba+bigram BM25, passages": _Variant(passages, textproc.tokens),
        "jieba+bigram FTS5, passages": _Fts5Variant(passages),
        "+ named docs, neighbours": Searcher(db, "none", rerank=False),
        "default (+ learned re-ranker)": Searcher(db, "none"),
    }
    return {name: evaluate(v, rows, k) for name, v in variants.items()}


def format_comparison(results: dict[str, dict], k: int = 5) -> str:
    langs = sorted({lang for r in results.values() for lang in r["by_lang"]})
    head = f"{'variant':<40}" + "".join(f"{lang + ' r@1':>9}{lang + f' r@{k}':>9}" for lang in langs) + f"{'p95 ms':>9}"
    lines = [head]
    for name, r in results.items():
        cells = "".join(f"{r['by_lang'][lang]['recall@1']:>9.3f}{r['by_lang'][lang][f'recall@{k}']:>9.3f}"
                        if lang in r["by_lang"] else f"{'-':>9}{'-':>9}" for lang in langs)
        lines.append(f"{name:<40}{cells}{r['latency_ms']['p95']:>9.2f}")
    return "\n".join(lines)
