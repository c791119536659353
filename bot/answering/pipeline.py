"""A question in, a cited answer out: retrieve, prompt, generate, post-process, record.

Every transport (CLI, terminal chat, Slack, Discord) calls `Answerer.ask`.
When no model can be had (offline, out of memory, bad preset) or the model
fails mid-answer, the answer is the best passages with their sources and a
notice saying why: it never crashes and never hangs. When the best passages
do not cover the question (abstention.py), the answer says so and lists the
closest matches instead; without a model the answer leads with the sentences
that best answer (extract.py).
"""
from __future__ import annotations

import re
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

from bot.answering import abstention, condense, extract, prompts
from bot.answering.searcher import Searcher
from bot import store
from bot.llm.generator import EngineBusy, EngineUnavailable, Generator, is_out_of_memory
from bot.knowledge.textproc import is_mostly_english


@dataclass
class Context:
    """Where a question came from; `thread` groups the turns of one conversation."""

    platform: str = "cli"
    user: str = ""
    channel: str = ""
    thread: str = ""


@dataclass
class Citation:
    n: int
    doc: str
    heading: str
    text: str


@dataclass
class Answer:
    id: str
    answer: str
    citations: list[Citation]
    mode: str  # "llm" | "retrieval-only"
    model: str | None
    adapter: str | None
    ms: float
    notice: str = ""
    passages: list = field(default_factory=list, repr=False)
    query: condense.Query | None = field(default=None, repr=False)  # what retrieval searched for
    # The passages the answer rests on, cited ones first (for an LLM answer, every passage the model
    # was given; for an abstention, the closest matches): what a transport lists as sources.
    sources: list[Citation] = field(default_factory=list)
    abstained: bool = False  # the knowledge base does not answer this (abstention.py, or the model said so)
    extract: str = ""  # a retrieval-only answer's lead sentences (extract.py); empty for a model's answer

    @property
    def in_english(self) -> bool:
        """Whether the answer reads as English: a transport labels its sources in the answer's language."""
        return is_mostly_english(self.answer)

    def as_json(self) -> dict:
        return {
            "id": self.id,
            "answer": self.answer,
            "citations": [asdict(c) for c in self.citations],
            "sources": [asdict(c) for c in self.sources],
            "abstained": self.abstained,
            "extract": self.extract,
            "mode": self.mode,
            "model": self.model,
            "adapter": self.adapter,
            "ms": round(self.ms, 1),
            "query": self.query and {"text": self.query.text, "route": self.query.route, "note": self.query.note},
        }


def _notice(question: str, en: str, zh: str) -> str:
    return en if is_mostly_english(question) else zh


def postprocess(text: str, shown: list) -> tuple[str, list[Citation], str]:
    """Map [n] to the passages shown; drop citations to passages that do not exist.

    Returns the cleaned answer, the cited passages (by their original n) and a
    notice for the reader, empty when all is well.
    """
    valid = set(range(1, len(shown) + 1))
    bogus = sorted({n for n in prompts.cited_numbers(text) if n not in valid})
    if bogus:
        text = prompts.CITATION_RE.sub(lambda m: m.group(0) if int(m.group(1)) in valid else "", text)
        text = re.sub(r"[ \t]+([。，.,])", r"\1", text).strip()
    cited = [n for n in prompts.cited_numbers(text) if n in valid]
    citations = [Citation(n, shown[n - 1].doc, shown[n - 1].heading, shown[n - 1].text) for n in cited]
    notices = []
    if bogus:
        notices.append("removed citations to passages that do not exist: " + ", ".join(f"[{n}]" for n in bogus))
    if not citations:
        notices.append("this answer cites no passage from the knowledge base")
    return text, citations, "; ".join(notices)


def _sources_text(question: str, shown: list) -> str:
    """Compact sources: `[n] doc › the last two heading levels`."""
    label = _notice(question, "Sources:", "来源：")
    return label + "\n" + "\n".join(f"[{n}] {p.doc} › {extract.short_heading(p.heading)}"
                                     for n, p in enumerate(shown, 1))


def _judge_for(shown: list, judge: abstention.Judge | None) -> abstention.Judge:
    # Without the index's statistics (a restart's answer), the shown passages stand in for the corpus.
    return judge or abstention.Judge([{"doc": p.doc, "heading": p.heading, "text": p.text} for p in shown])


def retrieval_answer(question: str, shown: list, reason: str,
                     judge: abstention.Judge | None = None, about: str | None = None) -> tuple[str, str]:
    """(answer text, extract) without a model: the lead sentences that best answer, quoted with
    their [n], then compact sources, then why there is no model. The reply is in `question`'s
    language; the sentences are chosen for `about` (a follow-up's standalone query) when given."""
    note = _notice(question, f"(The language model is unavailable: {reason}.)", f"（语言模型暂不可用：{reason}。）")
    if not shown:
        return _notice(question, "(nothing in the knowledge base matches)", "（知识库中没有相关内容）") + "\n" + note, ""
    lead = extract.lead(extract.select(about or question, shown, _judge_for(shown, judge)))
    head = lead or _notice(question, "The most relevant passages:", "知识库中最相关的段落：")
    return f"{head}\n\n{_sources_text(question, shown)}\n{note}", lead


def retrieval_only_text(question: str, shown: list, reason: str, judge: abstention.Judge | None = None) -> str:
    return retrieval_answer(question, shown, reason, judge)[0]


CLOSEST_CHARS = 80  # each closest match shows its best sentence, cut to this


def abstention_text(question: str, shown: list, judge: abstention.Judge | None = None,
                    about: str | None = None) -> str:
    """The knowledge base does not answer this: said plainly (in `question`'s language), then the
    closest matches, each with its sentence nearest to `about` (or the question)."""
    head = _notice(question, "The knowledge base does not cover this question.", "知识库中没有能回答这个问题的内容。")
    if not shown:
        return head
    judge = _judge_for(shown, judge)
    lines = [head, _notice(question, "Closest matches:", "最接近的段落：")]
    for n, p in enumerate(shown, 1):
        best = extract.select(about or question, [p], judge, limit=CLOSEST_CHARS)
        quote = f"「{best[0].text}」" if best else ""
        lines.append(f"[{n}] {p.doc} › {extract.short_heading(p.heading)} {quote}".rstrip())
    return "\n".join(lines)


def _sources(shown: list, citations: list[Citation]) -> list[Citation]:
    """Every passage shown, the cited ones first (in citation order), then the rest in rank order."""
    cited = {c.n for c in citations}
    return list(citations) + [Citation(n, p.doc, p.heading, p.text) for n, p in enumerate(shown, 1) if n not in cited]


class Answerer:
    """Answers questions against one knowledge base, one generator and one database.

    `generator` is a zero-argument factory returning a `Generator`
    (bot/llm/generator.py), called on first use so that start-up stays fast;
    if it raises, the answerer keeps the reason and answers retrieval-only.
    None means retrieval-only from the start.
    """

    def __init__(self, db, searcher: Searcher, generator: Callable[[], Generator] | None = None, *, k: int = 5,
                 context_budget: int = 1536, history_budget: int = 512, max_new_tokens: int = 384,
                 timeout_s: float = 300.0, condense_timeout_s: float = condense.DEFAULT_TIMEOUT_S):
        self.db, self.searcher = db, searcher
        self._generator_source = generator
        self._generator: Generator | None = None
        self._unavailable: str | None = None if generator is not None else "no model configured"
        self._load_lock = threading.Lock()
        self.k, self.context_budget, self.history_budget = k, context_budget, history_budget
        self.max_new_tokens, self.timeout_s = max_new_tokens, timeout_s
        self.condense_timeout_s = condense_timeout_s
        self._in_flight = 0  # questions between `ask` and their recorded answer
        self._judge: tuple[int, abstention.Judge] | None = None
        self._count_lock = threading.Lock()

    def queue_depth(self) -> int:
        """Questions in the pipeline now (retrieving, waiting for the model, generating): the admission
        bound (bot/guard.py) and /healthz read it."""
        return self._in_flight

    def generator(self) -> Generator | None:
        """The generator, loading it on first use; None (with the reason kept) if it cannot be had."""
        with self._load_lock:
            if self._generator is None and self._unavailable is None:
                try:
                    self._generator = self._generator_source()
                except Exception as e:  # ModelUnavailable, or anything a broken install throws
                    self._unavailable = str(e) or type(e).__name__
            return self._generator

    def judge(self) -> abstention.Judge:
        """The abstention judge over the rows the searcher serves now (a new one after a re-index)."""
        rows = self.searcher.rows
        held = self._judge
        if held is None or held[0] != id(rows):
            held = self._judge = (id(rows), abstention.Judge(rows, store.lexicon(self.db)))
        return held[1]

    def verdict(self, question: str, hits: list) -> abstention.Verdict:
        """Whether `hits` support an answer to `question` (abstention.py), with the re-ranker's
        probabilities when the searcher has one."""
        return self.judge().verdict(question, hits, scored=self.searcher.reranks)

    def warm(self) -> None:
        """Pay at start what the first question would: the judge's dictionaries (jieba, CC-CEDICT)
        and its view of the passages, about 3 s."""
        self.verdict("融资 funding", self.searcher.search("融资 funding", k=1))

    @property
    def generator_loaded(self) -> bool:
        return self._generator is not None

    @property
    def unavailable_reason(self) -> str | None:
        return self._unavailable

    def ask(self, question: str, ctx: Context | None = None, on_token: Callable[[str], None] | None = None) -> Answer:
        with self._count_lock:
            self._in_flight += 1
        try:
            return self._ask(question, ctx or Context(), on_token)
        finally:
            with self._count_lock:
                self._in_flight -= 1

    def _ask(self, question: str, ctx: Context, on_token: Callable[[str], None] | None) -> Answer:
        t0 = time.perf_counter()
        history = [prompts.Turn(q, a) for q, a in store.thread_turns(self.db, ctx.platform, ctx.channel, ctx.thread)]
        gen = self.generator()  # first: a follow-up or an English question is rewritten by the model
        t_search = time.perf_counter()
        query = condense.standalone(question, history, gen, timeout_s=self.condense_timeout_s)
        hits = query.search(self.searcher, self.k)
        # A passage of a converted file is cited with its place in it (`report.pdf p. 12`): from here on,
        # prompt, citations and the stored answer name the document that way.
        hits = [replace(h, doc=h.source, location="") if h.location else h for h in hits]
        retrieval_ms = (time.perf_counter() - t_search) * 1000

        count = gen.count_tokens if gen else len
        shown = prompts.fit_passages(hits, self.context_budget, count)
        model, revision = (gen.model_id, gen.revision) if gen else (None, None)
        adapter, prompt_tokens, completion_tokens = None, 0, 0
        mode, notice, lead = "llm", "", ""
        judge = self.judge()
        # A follow-up ("它有什么好处？") is judged, and its extract chosen, on what retrieval searched
        # for (the standalone question, or the question with its thread's earlier questions), not on
        # its own words, which need not name the topic.
        asked = query.plain
        verdict = self.verdict(asked, hits)
        abstained = verdict.abstain
        if abstained:
            # Nothing retrieved supports an answer: say so rather than have the model (or the
            # extract) make one from unrelated passages.
            mode, model, revision = "retrieval-only", None, None
            text, citations = abstention_text(question, shown, judge, about=asked), []
            notice = f"abstained: the best passage holds {verdict.coverage:.0%} of the question's weighted terms" + (
                f" (missing: {', '.join(verdict.missing[:5])})" if verdict.missing else "")
        elif gen is None:
            mode, reason = "retrieval-only", self._unavailable or "no model"
            text, lead = retrieval_answer(question, shown, reason, judge, about=asked)
            citations = [Citation(n, p.doc, p.heading, p.text) for n, p in enumerate(shown, 1)]
            notice = f"model unavailable: {reason}"
        else:
            messages = prompts.build_messages(question, shown, history, count=count,
                                              context_budget=self.context_budget, history_budget=self.history_budget)
            try:
                # Through `submit` even for an in-process model: the wait is bounded the same way for all.
                result = gen.submit(messages, self.max_new_tokens, on_token).result(timeout=self.timeout_s)
                adapter = result.adapter
                prompt_tokens, completion_tokens = result.prompt_tokens, result.completion_tokens
                text, citations, notice = postprocess(result.text, shown)
                if prompts.is_abstention(text):
                    abstained = True
                    notice = "; ".join(x for x in ("the model found no answer in the passages", notice) if x)
            except Exception as e:  # OOM, CUDA error, timeout: the user still gets the passages
                # Tokens may have streamed already: the final text replaces them, apology first.
                if is_out_of_memory(e):
                    reason = _notice(question, "the model ran out of memory while answering", "模型在生成回答时内存不足")
                elif isinstance(e, EngineBusy):  # a remote engine shed load: the phrase of bot/guard.py's Busy
                    reason = _notice(question, f"the model server is busy, try again in {e.retry_after} s",
                                     f"模型服务器繁忙，请 {e.retry_after} 秒后再试")
                elif isinstance(e, EngineUnavailable):
                    reason = _notice(question, "the model server cannot be reached", "无法连接模型服务器")
                else:
                    reason = _notice(question, "the model failed while answering", "模型在生成回答时出错")
                mode = "retrieval-only"
                text, lead = retrieval_answer(question, shown, reason, judge, about=asked)
                text = _notice(question, "Sorry, something went wrong. ", "抱歉，出了点问题。") + text
                citations = [Citation(n, p.doc, p.heading, p.text) for n, p in enumerate(shown, 1)]
                notice = f"model error: {type(e).__name__}: {e}"[:500]
        ms = (time.perf_counter() - t0) * 1000
        answer = Answer(uuid.uuid4().hex[:12], text, citations, mode, model, adapter, ms, notice, shown,
                        sources=_sources(shown, citations), abstained=abstained, extract=lead, query=query)
        store.record_answer(self.db, {
            "id": answer.id, "created_at": time.time(), "platform": ctx.platform, "channel": ctx.channel,
            "thread": ctx.thread, "user": ctx.user, "question": question, "query": query.stored,
            "passages": [{"id": p.passage_id, "doc": p.doc, "heading": p.heading, "text": p.text}
                         for p in shown],
            "answer": text, "citations": [asdict(c) for c in citations], "mode": mode, "notice": notice,
            "model": model, "revision": revision, "adapter": adapter, "latency_ms": ms,
            "retrieval_ms": retrieval_ms, "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "abstained": int(abstained),
        })
        return answer
