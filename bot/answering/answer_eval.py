"""Abstention and extract quality on question sets: `python -m bot eval-answers [FILE ...]`.

For each question it does what the pipeline does without a model (retrieve,
fit the passages, judge, select the extract) and records nothing:

- abstention rate per set; with the unanswerable set (rows without `doc`) as
  the positive class, the precision and recall of abstaining;
- for answerable rows (with `doc` and `evidence`): the share whose evidence
  span is in the extract (an abstained answer has none), and the share whose
  evidence is in a shown passage at all (the extract's ceiling).

`--sweep` prints the rates over a range of MIN_COVERAGE values, to recalibrate
on dev sets (never on knowledge/eval/test.jsonl).
"""
from __future__ import annotations

from bot.answering import abstention, extract, prompts

SWEEP = (0.30, 0.35, 0.40, 0.45, 0.50, 0.55, 0.60)


def _flat(text: str) -> str:
    """Text as the extract shows it (bold marks dropped, extract.sentences), for finding evidence in it."""
    return " ".join(abstention.normalise(text).replace("**", "").split())


def judge_rows(answerer, rows: list[dict]) -> list[dict]:
    """Per question: its coverage, whether it is answerable, and where its evidence is."""
    judge = answerer.judge()
    out = []
    for row in rows:
        q = row["question"]
        hits = answerer.searcher.search(q, answerer.k)
        # As the pipeline shows them without a model: the passages are measured in characters.
        shown = prompts.fit_passages(hits, answerer.context_budget, len)
        verdict = answerer.verdict(q, hits)
        lead = extract.lead(extract.select(q, shown, judge))
        answerable = bool(row.get("doc"))
        ev = _flat(row.get("evidence", "")) if answerable else ""
        out.append({"id": row.get("id"), "lang": row.get("lang", "?"), "answerable": answerable,
                    "coverage": verdict.coverage, "support": verdict.support, "unknown": verdict.unknown, "extract": lead,
                    "evidence_shown": bool(ev) and any(ev in _flat(p.text) for p in shown),
                    "evidence_in_lead": bool(ev) and ev in _flat(lead)})
    return out


def summarise(judged: dict[str, list[dict]], threshold: float = abstention.MIN_COVERAGE) -> dict:
    """Rates per set at `threshold`, and abstention precision/recall over all sets together."""
    sets, tp, fp, positives = {}, 0, 0, 0
    for name, rows in _split(judged).items():
        n = len(rows)
        declined = {id(r) for r in rows if abstention.abstains(r["coverage"], r.get("support"), r.get("unknown", 0.0),
                                                           threshold)}
        abstained = [r for r in rows if id(r) in declined]
        s = {"n": n, "abstained": len(abstained), "abstention_rate": len(abstained) / n if n else 0.0}
        with_evidence = [r for r in rows if r["answerable"]]
        if with_evidence:
            m = len(with_evidence)
            s["evidence_in_extract"] = sum(r["evidence_in_lead"] and id(r) not in declined
                                           for r in with_evidence) / m
            s["evidence_shown"] = sum(r["evidence_shown"] for r in with_evidence) / m
            answered = [r for r in with_evidence if id(r) not in declined]
            s["evidence_in_extract_answered"] = (sum(r["evidence_in_lead"] for r in answered) / len(answered)
                                                 if answered else None)
        sets[name] = s
        tp += sum(not r["answerable"] for r in abstained)
        fp += sum(r["answerable"] for r in abstained)
        positives += sum(not r["answerable"] for r in rows)
    return {"threshold": threshold, "sets": sets,
            "abstention_precision": tp / (tp + fp) if tp + fp else None,
            "abstention_recall": tp / positives if positives else None}


def _split(judged: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Each set's answerable and unanswerable rows apart (dev.jsonl holds both kinds)."""
    out = {}
    for name, rows in judged.items():
        kinds = {"answerable": [r for r in rows if r["answerable"]],
                 "unanswerable": [r for r in rows if not r["answerable"]]}
        for kind, part in kinds.items():
            if part:
                out[f"{name} ({kind})" if all(kinds.values()) else name] = part
    return out


def format_report(summary: dict) -> str:
    lines = [f"abstention threshold (MIN_COVERAGE) {summary['threshold']:.2f}, "
             f"unless the re-ranker's best probability is at least {abstention.MAX_SUPPORT:.2f} and under "
             f"{abstention.UNKNOWN_SHARE:.0%} of the question is words no passage has",
             f"{'question set':<40}{'n':>4}{'abstained':>11}{'evidence in extract':>21}{'(of answered)':>15}"
             f"{'evidence shown':>16}"]
    for name, s in summary["sets"].items():
        cell = lambda key: "-" if s.get(key) is None else f"{s[key]:.3f}"  # noqa: E731
        lines.append(f"{name:<40}{s['n']:>4}{s['abstention_rate']:>11.3f}{cell('evidence_in_extract'):>21}"
                     f"{cell('evidence_in_extract_answered'):>15}{cell('evidence_shown'):>16}")
    p, r = summary["abstention_precision"], summary["abstention_recall"]
    if p is not None or r is not None:
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(f"abstaining on unanswerable questions: precision {fmt(p)}, recall {fmt(r)}")
    return "\n".join(lines)


def format_sweep(judged: dict[str, list[dict]]) -> str:
    """Questions abstained on, per set, at each threshold of SWEEP."""
    names = list(_split(judged))
    lines = ["abstained at MIN_COVERAGE =", f"{'question set':<40}" + "".join(f"{t:>7.2f}" for t in SWEEP)]
    per = [summarise(judged, t)["sets"] for t in SWEEP]
    for n in names:
        lines.append(f"{n:<40}" + "".join(f"{s[n]['abstained']:>4}/{s[n]['n']:<2}" for s in per))
    return "\n".join(lines)
