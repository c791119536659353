"""The command line: `python -m bot COMMAND --help` for each command.

Every chat command gets a twin here, for operators and for tests. The
privileged twins (review, forget, train, jobs, adapters) are the chat
commands themselves: they build a `Caller` for the operator (platform `cli`,
an admin), call bot.commands, and render its `Reply`, so the permission
checks and the audit trail are the chat's own. Commands print human text by
default and JSON with `--json` (from the Reply's typed fields). Heavy modules
are imported inside each command so `--help` and light commands start fast.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bot import config, wiring


def cmd_ask(args) -> int:
    from bot.answering import pipeline as answering
    from bot import guard

    if not args.question.strip():
        print("ask: the question is empty", file=sys.stderr)
        return 2
    why = guard.check_question(args.question)  # too long, control characters, bytes that were not UTF-8
    if why:
        print(f"ask: {why}", file=sys.stderr)
        return 2
    if args.thread is not None and not (args.thread.strip() and len(args.thread) <= 200 and args.thread.isprintable()):
        print("ask: --thread needs an id of 1 to 200 printable characters", file=sys.stderr)
        return 2
    answerer = wiring.build_answerer(args.settings, wiring.connect_db(args.settings), args.model)
    stream = None if args.json or not sys.stdout.isatty() else (lambda piece: print(piece, end="", flush=True))
    # `--user slack:U1` asks as that person (so `forget slack:U1` finds it); a plain name is the operator's.
    platform, user = _who(args.user) if args.user else ("cli", "")
    # `--thread ID`: the earlier questions asked with the same id (and as the same platform) are the history.
    ctx = answering.Context(platform=platform, user=user, channel="cli" if args.thread else "", thread=args.thread or "")
    result = answerer.ask(args.question, ctx, on_token=stream)
    if args.json:
        print(json.dumps(result.as_json(), ensure_ascii=False))
        return 0
    from bot.chat import console

    if stream:
        print()
    print(console.render_answer(result, streamed=bool(stream)))
    return 0


def cmd_index(args) -> int:
    from bot.knowledge import ingest, retrieval
    from bot import store

    db = wiring.connect_db(args.settings)
    kdir = args.settings.knowledge_dir
    paths = [Path(p) for p in args.paths] or [kdir]
    t0 = time.perf_counter()
    reports = ingest.index_paths(db, paths, kdir, args.settings.chunk_chars, progress=not args.json,
                                 max_file_mb=args.settings.max_file_mb)
    embedder = args.settings.embedder
    if embedder.lower() != "none":
        model = retrieval.load_embedder(embedder)
        retrieval.ensure_embeddings(db, model, embedder, store.passages(db))
    if any(r.status in ("indexed", "removed") for r in reports):
        store.bump_index_generation(db)  # running `serve` replicas reload on their next question
    seconds = time.perf_counter() - t0
    errors = [r for r in reports if r.status in ("error", "skipped")]
    if args.json:
        out = {
            "seconds": round(seconds, 3),
            "passages": store.passage_count(db),
            "files": [{"doc": r.doc, "status": r.status, "message": r.message, "chunks": r.chunks} for r in reports],
        }
        print(json.dumps(out, ensure_ascii=False))
    else:
        for r in reports:
            if r.status in ("error", "skipped"):
                print(f"{r.doc}: {r.status}: {r.message}", file=sys.stderr)
            elif r.status == "removed":
                print(f"{r.doc}: {r.message}")
            elif r.status == "indexed":
                print(f"{r.doc}: {r.chunks} passages ({len(r.new_passages)} new)")
        counts = {s: sum(r.status == s for r in reports) for s in ("indexed", "unchanged", "removed", "skipped", "error")}
        summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        print(f"{summary or 'nothing to do'}; {store.passage_count(db)} passages in the index ({seconds:.2f} s)")
    # Bad files are reported, and the good ones indexed; the exit code tells scripts.
    return 1 if errors else 0


def _print_hits(hits, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"hits": [h.as_json() for h in hits]}, ensure_ascii=False))
        return
    if not hits:
        print("No passage matches that question.")
    for n, h in enumerate(hits, 1):
        print(f"[{n}] {h.source} › {h.heading}  (score {h.score:.3f})")
        print("    " + h.text.strip().replace("\n", "\n    "))
        print()


def _batch(searcher, path: str, k: int) -> int:
    fh = sys.stdin if path == "-" else None
    try:
        fh = fh or open(path, encoding="utf-8")
    except OSError as e:
        print(f"search --batch: cannot read {path}: {e.strerror}", file=sys.stderr)
        return 2
    bad = 0
    with fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                question = row["question"]
                if not isinstance(question, str) or not question.strip():
                    raise ValueError
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                print(f"{path}:{n}: skipped: expected {{\"id\": ..., \"question\": \"...\"}}", file=sys.stderr)
                bad += 1
                continue
            t0 = time.perf_counter()
            hits = searcher.search(question, k)
            ms = (time.perf_counter() - t0) * 1000
            out = {"id": row.get("id"), "ms": round(ms, 3), "hits": [h.as_json() for h in hits]}
            print(json.dumps(out, ensure_ascii=False), flush=True)
    return 1 if bad else 0


def cmd_search(args) -> int:
    k = args.k if args.k is not None else args.settings.search_k  # `--k 0` is an error, not the default
    if k < 1:
        print("search: --k must be at least 1", file=sys.stderr)
        return 2
    if not args.batch and not (args.question and args.question.strip()):
        print("search: give a question, or --batch FILE.jsonl", file=sys.stderr)
        return 2
    searcher = wiring.build_searcher(args.settings, wiring.connect_db(args.settings))
    if args.batch:
        return _batch(searcher, args.batch, k)
    _print_hits(searcher.search(args.question, k), args.json)
    return 0


def cmd_eval_retrieval(args) -> int:
    from bot.knowledge import retrieval_eval

    default = "knowledge/eval/followups.jsonl" if args.followups else "knowledge/eval/dev.jsonl"
    path = Path(args.file) if args.file else config.ROOT / default
    if not path.is_file():
        print(f"eval-retrieval: no such file: {path}", file=sys.stderr)
        return 2
    try:
        rows = retrieval_eval.load_questions(path)
    except retrieval_eval.BadQuestionFile as e:
        print(f"eval-retrieval: {e}", file=sys.stderr)
        return 2
    if args.followups:
        from bot.answering import condense

        bad = next((n for n, r in enumerate(rows, 1) if not isinstance(r.get("history"), list)
                    or not all(isinstance(q, str) and q.strip() for q in r["history"]) or not r.get("doc")), None)
        if bad:
            print(f"eval-retrieval: {path}: conversation {bad} needs \"history\" (a list of earlier questions), "
                  "\"question\", \"doc\" and \"evidence\"", file=sys.stderr)
            return 2
        searcher = wiring.build_searcher(args.settings, wiring.connect_db(args.settings), args.embedder)
        result = condense.evaluate(searcher, rows, args.k)
        print(json.dumps(result, ensure_ascii=False) if args.json else condense.format_report(result, path))
        return 0
    if args.compare:
        db = wiring.connect_db(args.settings)
        wiring.build_searcher(args.settings, db, "none")  # indexes a fresh database
        results = retrieval_eval.compare(db, rows, args.k)
        if args.json:
            print(json.dumps({name: {k: v for k, v in r.items() if k != "misses"} for name, r in results.items()}))
        else:
            print(path)
            print(retrieval_eval.format_comparison(results, args.k))
        return 0
    searcher = wiring.build_searcher(args.settings, wiring.connect_db(args.settings), args.embedder)
    result = retrieval_eval.evaluate(searcher, rows, args.k)
    result["load_ms"] = searcher.load_ms
    result["embedder"] = searcher.embedder_name
    print(json.dumps(result, ensure_ascii=False) if args.json else retrieval_eval.format_report(result, path))
    return 0


def cmd_eval_answers(args) -> int:
    from bot.answering import answer_eval
    from bot.knowledge import retrieval_eval

    paths = [Path(f) for f in args.files] or [config.ROOT / "knowledge/eval/dev.jsonl"]
    paths.append(Path(args.unanswerable) if args.unanswerable else config.ROOT / "knowledge/eval/unanswerable.jsonl")
    for path in paths:
        if not path.is_file():
            print(f"eval-answers: no such file: {path}", file=sys.stderr)
            return 2
    try:
        questions = {p.name: retrieval_eval.load_questions(p) for p in paths}
    except retrieval_eval.BadQuestionFile as e:
        print(f"eval-answers: {e}", file=sys.stderr)
        return 2
    answerer = wiring.build_answerer(args.settings, wiring.connect_db(args.settings), "none")
    judged = {name: answer_eval.judge_rows(answerer, rows) for name, rows in questions.items()}
    summary = answer_eval.summarise(judged)
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        print(answer_eval.format_report(summary))
        if args.sweep:
            print(answer_eval.format_sweep(judged))
    return 0


def cmd_chat(args) -> int:
    from bot.chat import console

    return console.run(wiring.build_answerer(args.settings, wiring.connect_db(args.settings), args.model))


def cmd_models(args) -> int:
    from bot.llm import presets

    if args.action == "list":
        rows = []
        for name in presets.names():
            p = presets.load(name)
            rows.append({"name": name, "hub_id": p.hub_id, "revision": p.revision, "dtype": p.dtype,
                         "4bit": p.quantization.load_in_4bit, "description": p.description})
        if args.json:
            print(json.dumps(rows, ensure_ascii=False))
        else:
            current = args.settings.model
            for r in rows:
                mark = "*" if r["name"] == current else " "
                print(f"{mark} {r['name']:<24} {r['hub_id']}@{r['revision'][:12]}  "
                      f"{'4-bit NF4' if r['4bit'] else r['dtype']}  {r['description']}")
        return 0
    if args.action == "build-tiny":
        t0 = time.perf_counter()
        folder = wiring.build_tiny_model(args.settings.cache_dir, args.settings.knowledge_dir,
                                         force=args.force, log=lambda msg: print(msg, file=sys.stderr))
        meta = json.loads((folder / "meta.json").read_text())
        if args.json:
            print(json.dumps({"path": str(folder), **meta}))
        else:
            print(f"tiny model at {folder} ({time.perf_counter() - t0:.1f} s; {meta.get('params', 0):,} parameters, "
                  f"final loss {meta.get('final_loss', float('nan')):.2f})")
        return 0
    if args.action == "bench-train":
        from bot.llm import bench as model_bench

        preset = args.preset or args.settings.model
        result = model_bench.run_train(preset, args.device, steps=args.steps, seq_len=args.seq_len,
                                       log=lambda msg: print(msg, file=sys.stderr))
        print(json.dumps(result) if args.json else model_bench.format_train_text(result))
        return 0
    if args.action == "bench":
        from bot.llm import bench as model_bench

        preset = args.preset or args.settings.model
        result = model_bench.run(preset, args.device, new_tokens=args.new_tokens, concurrency=args.concurrency,
                                 log=lambda msg: print(msg, file=sys.stderr))
        print(json.dumps(result) if args.json else model_bench.format_text(result))
        return 0
    return 2


def cmd_serve(args) -> int:
    from bot.ops import serve

    return serve.main(args.settings)


def cmd_discord_sync(args) -> int:
    import asyncio

    token = args.settings.discord_token
    if not token:
        print("discord-sync: DISCORD_TOKEN is not set", file=sys.stderr)
        return 2
    from bot.chat.discord import app as discord_app

    names = asyncio.run(discord_app.sync_commands(token, args.guild))
    print("registered: " + ", ".join("/" + n for n in names))
    return 0


def _out(args, data, text: str) -> None:
    print(json.dumps(data, ensure_ascii=False) if args.json else text)


def _who(spec: str | None) -> tuple[str, str]:
    """`slack:U123` -> ("slack", "U123"); a bare name is an operator at the CLI."""
    platform, sep, user = (spec or "operator").partition(":")
    return (platform, user) if sep and platform and user else ("cli", spec or "operator")


def _operator(user: str | None = None):
    """The operator at this terminal, as the command layer sees them: platform `cli` (an admin)."""
    from bot.commands import Caller

    return Caller("cli", user or "operator")


def _failed(prog: str, reply) -> int:
    """A refused or failed Reply on stderr as `prog: what went wrong` (exit 1)."""
    print(f"{prog}: {reply.text[:1].lower()}{reply.text[1:]}".rstrip("."), file=sys.stderr)
    return 1


def cmd_feedback(args) -> int:
    from bot.learning import feedback
    from bot import guard

    if args.target == "review":
        cmds = wiring.operator_commands(args.settings)
        if args.accept is not None or args.reject is not None:
            cid, action = (args.accept, "accept") if args.accept is not None else (args.reject, "reject")
            reply = cmds.review(_operator(args.user), action, cid)
            if not reply.ok:
                return _failed("feedback", reply)
            _out(args, reply.correction.as_json(), f"correction #{cid} {reply.correction.status}")
            return 0
        reply = cmds.review(_operator(args.user))
        if not reply.ok:
            return _failed("feedback", reply)
        _out(args, {"pending": reply.pending}, "\n".join(
            f"#{r['id']} {r['platform']}:{r['user']} on {r['question'][:60]!r}: {r['text'][:200]}"
            for r in reply.pending) or "no corrections are waiting for review")
        return 0
    # A vote or a correction is no privileged action: the operator records one on any answer, as any
    # person (`--user slack:U1`), and the learning layer takes it directly.
    db = wiring.connect_db(args.settings)
    try:
        if args.up == args.down and args.correction is None:
            print("feedback: give --up or --down, and/or --correction TEXT", file=sys.stderr)
            return 2
        # Every input is checked before anything is written: a bad correction must not leave its vote
        # behind, and an id that is not even text (a NUL, bytes that were not UTF-8) must not reach SQLite.
        why = guard.check_text(args.target, what="answer id", limit=64, empty="give an answer id") or (
            guard.check_correction(args.correction, args.settings.model) if args.correction is not None else None)
        if why:
            print(f"feedback: {why}", file=sys.stderr)
            return 1
        platform, user = _who(args.user)
        out = {"answer_id": args.target}
        if args.up or args.down:
            out["vote"] = feedback.vote(db, args.target, platform, user, 1 if args.up else -1)["value"]
        if args.correction is not None:
            fix = feedback.correct(db, args.target, args.correction, platform, user, args.settings.trusted_reviewers,
                                   model=args.settings.model)
            out["correction"] = fix
        text = [f"vote {'+1' if out.get('vote') == 1 else '-1'} recorded" if "vote" in out else "",
                f"correction #{out['correction']['id']} {out['correction']['status']}" if "correction" in out else ""]
        _out(args, out, "; ".join(t for t in text if t) + f" on answer {args.target}")
        return 0
    except feedback.FeedbackError as e:
        print(f"feedback: {e}", file=sys.stderr)
        return 1


def cmd_forget(args) -> int:
    from bot import guard

    why = guard.check_text(args.user, what="user", limit=200,
                           empty="give the person as platform:user, e.g. slack:U0123")
    if why:
        print(f"forget: {why}", file=sys.stderr)
        return 2
    platform, user = _who(args.user.strip())
    reply = wiring.operator_commands(args.settings).forget(_operator(), person=(platform, user))
    if not reply.ok:
        return _failed("forget", reply)
    counts = reply.forgotten
    files = counts["adapters"]
    retrain = (f"; retrain job #{files['retrain_job']} queued (their weights are deleted once it replaces them)"
               if files["retrain_job"] else "")
    _out(args, {"user": f"{platform}:{user}", **counts, "opted_out": True},
         f"{platform}:{user}: {files['rows']} copy(ies) removed from {files['files']} adapter file(s), "
         f"{len(files['marked'])} version(s) marked as trained on them{retrain}; "
         f"deleted {counts['answers']} question(s), {counts['votes']} vote(s), "
         f"{counts['corrections']} correction(s); opted out of training")
    return 0


def _follow(db, job_id: int, stop) -> None:
    """Print a job's state and step to stderr as they change, until `stop` is set."""
    from bot import store

    seen = None
    while not stop.wait(1.0):
        row = store.job(db, job_id) or {}
        now = (row.get("state"), row.get("step"))
        if now != seen and row:
            seen = now
            step = f" step {row['step']}/{row['steps']} loss {row['loss']:.3f}" if row.get("steps") and \
                row.get("loss") is not None else ""
            print(f"job #{job_id}: {row['state']}{step}", file=sys.stderr, flush=True)


def cmd_train(args) -> int:
    import threading

    from bot.learning import jobs
    from bot import store

    db = wiring.connect_db(args.settings)
    wiring.build_searcher(args.settings, db)  # evaluation answers through the real index: make sure there is one
    alive = jobs.worker_alive(db)
    # Queued for the worker, unless --wait finds none: then it runs here, below.
    reply = wiring.operator_commands(args.settings, db, enqueue=alive or not args.wait).train(_operator(args.user))
    if not reply.ok:
        return _failed("train", reply)
    job_id = reply.job.id
    if not args.wait:
        note = "" if alive else " (no worker is running: start `python -m bot worker`, or use --wait)"
        _out(args, {"job": job_id, "state": "queued"}, f"job #{job_id} queued{note}")
        return 0
    stop = threading.Event()
    if not args.json or sys.stderr.isatty():
        threading.Thread(target=_follow, args=(db, job_id, stop), daemon=True).start()
    try:
        if alive:
            print(f"job #{job_id} queued for the worker; waiting", file=sys.stderr)
            row = jobs.wait(db, job_id, timeout=args.timeout)
        else:
            print(f"job #{job_id}: no worker is running, training in this process", file=sys.stderr)
            row = jobs.run_inline(db, job_id, args.settings)
    except jobs.JobError as e:
        print(f"train: {e}", file=sys.stderr)
        return 1
    finally:
        stop.set()
    row = store.job(db, job_id)
    verdict = row["verdict"] or row["state"]
    result = json.loads(row["result"] or "{}")
    if args.json:
        print(json.dumps({"job": job_id, "version": row["version"], "verdict": verdict}))
    else:
        print(f"job #{job_id}: {row['version'] or 'no version'} {verdict}")
        for reason in result.get("reasons", []) + ([row["error"]] if row.get("error") else []):
            print(f"    {reason}")
    return 0 if verdict in ("promoted", "rejected", "skipped") else 1


def cmd_jobs(args) -> int:
    from bot import commands

    cmds = wiring.operator_commands(args.settings)
    if args.action == "cancel":
        if args.id is None:
            print("jobs cancel: which job? `jobs cancel ID`", file=sys.stderr)
            return 2
        reply = cmds.cancel_job(_operator(), args.id)
        if not reply.ok:
            return _failed("jobs cancel", reply)
        done = reply.job
        _out(args, {"job": done.id, "state": done.state, "message": done.message}, done.message)
        return 0
    reply = cmds.jobs(_operator(), limit=args.limit)
    _out(args, {"jobs": reply.jobs}, "\n".join(map(commands.job_line, reply.jobs)) or "no training jobs yet")
    return 0


def cmd_adapters(args) -> int:
    from bot import commands

    cmds, me = wiring.operator_commands(args.settings), _operator()
    if args.action == "list":
        info = cmds.adapter_list(me).adapters
        # The same lines as the chat's /adapter list (one renderer: ▶ marks the version in service).
        lines = [commands.version_line(v, info["in_service"]) for v in info["versions"]]
        _out(args, info, "\n".join(lines) + f"\nin service: {info['in_service'] or 'the base model'}")
        return 0
    if args.action == "chart":
        reply = cmds.adapter_chart(me)
        if reply.attachment is None:
            print("adapters chart: no adapter version with a card yet", file=sys.stderr)
            return 1
        png = reply.attachment.content
        out = Path(args.out or "adapters.png")
        out.write_bytes(png)
        _out(args, {"path": str(out), "bytes": len(png)}, f"chart written to {out}")
        return 0
    if args.action == "promote":
        if not args.version:
            print("adapters promote: which version? `adapters promote V`", file=sys.stderr)
            return 2
        reply = cmds.adapter_promote(me, args.version)
    else:
        reply = cmds.adapter_rollback(me)
    if not reply.ok:
        return _failed(f"adapters {args.action}", reply)
    now = reply.in_service
    _out(args, {"in_service": now}, f"in service: {now or 'the base model'} (the next answer uses it)")
    return 0


def cmd_worker(args) -> int:
    from bot.ops import worker

    return worker.main()


def cmd_purge(args) -> int:
    from bot.ops import retention

    days = args.days if args.days is not None else args.settings.retention_days
    if days < 0 or (args.days is not None and days == 0):
        print("purge: --days must be at least 1", file=sys.stderr)
        return 2
    if days == 0:  # the setting's 0 means keep everything: nothing to purge
        _out(args, {"days": 0, "answers": 0, "votes": 0, "corrections": 0},
             "BOT_RETENTION_DAYS=0 keeps everything; nothing purged (give --days N to purge anyway)")
        return 0
    done = retention.purge(wiring.connect_db(args.settings), days, by=("cli", "operator"),
                           adapters_dir=args.settings.adapters_dir)
    _out(args, done, f"deleted {done['answers']} question(s), {done['votes']} vote(s) and "
                     f"{done['corrections']} correction(s) older than {days} days")
    return 0


def cmd_dashboard(args) -> int:
    from bot.ops import dashboard

    return dashboard.serve(args.settings.db, host=args.host, port=args.port, allow=args.allow_host)


def cmd_settings(args) -> int:
    def shown(s):  # secrets are never printed, only whether they are set
        value = args.settings.value(s.name)
        value = list(value) if isinstance(value, tuple) else value  # a list setting prints as it always has
        if value is None and s.default == config.PRESET:
            return config.PRESET  # not set: the model preset's value applies
        return ("(set)" if value else "(not set)") if s.kind == "secret" else str(value)

    rows = [{"name": s.name, "value": shown(s), "default": s.default, "help": s.help} for s in config.SETTINGS]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
    else:
        for r in rows:
            print(f"{r['name']}={r['value']}\n    {r['help']}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bot", description="Knowledge-base assistant for startup teams.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("index", help="index the knowledge base (or the given files and folders), incrementally")
    s.add_argument("paths", nargs="*", help="Markdown/text files or folders (default: BOT_KNOWLEDGE_DIR)")
    s.add_argument("--json", action="store_true", help="print a JSON report")
    s.set_defaults(fn=cmd_index)

    s = sub.add_parser("search", help="find the passages that answer a question")
    s.add_argument("question", nargs="?", help="the question, in Chinese or English")
    s.add_argument("--k", type=int, default=None, help="how many passages (default: BOT_SEARCH_K)")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("--batch", metavar="FILE.jsonl", help='read {"id", "question"} lines ("-" for stdin); print one JSON line each')
    s.set_defaults(fn=cmd_search)

    s = sub.add_parser("eval-retrieval", help="recall@1, recall@k, MRR per language and latency on a question set")
    s.add_argument("file", nargs="?", help="question set (default: knowledge/eval/dev.jsonl)")
    s.add_argument("--k", type=int, default=5)
    s.add_argument("--embedder", default=None, help="override BOT_EMBEDDER for this run")
    s.add_argument("--compare", action="store_true", help="compare the lexical designs we chose between")
    s.add_argument("--followups", action="store_true",
                   help="FILE holds two-turn conversations (default knowledge/eval/followups.jsonl): recall of the "
                        "second turn searched alone and with its thread")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_eval_retrieval)

    s = sub.add_parser("eval-answers", help="abstention rates and evidence-in-extract share on question sets")
    s.add_argument("files", nargs="*", help="answerable question sets (default: knowledge/eval/dev.jsonl)")
    s.add_argument("--unanswerable", metavar="FILE",
                   help="questions the knowledge base does not answer (default: knowledge/eval/unanswerable.jsonl)")
    s.add_argument("--sweep", action="store_true", help="also print abstentions over a range of thresholds")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_eval_answers)

    s = sub.add_parser("ask", help="answer a question with the model and numbered sources")
    s.add_argument("question")
    s.add_argument("--model", default=None, help="model preset (default: BOT_MODEL); `none` for retrieval-only")
    s.add_argument("--user", default=None,
                   help="who is asking (recorded with the answer): `platform:user` for that person, else an operator name")
    s.add_argument("--thread", metavar="ID", default=None,
                   help="a conversation id: earlier questions asked with the same id are the history (follow-ups)")
    s.add_argument("--json", action="store_true",
                   help='print {"id", "answer", "citations", "sources", "abstained", "extract", "mode", "model", "adapter", "ms", "query"}')
    s.set_defaults(fn=cmd_ask)

    s = sub.add_parser("chat", help="terminal chat with history: answers with sources")
    s.add_argument("--model", default=None, help="model preset (default: BOT_MODEL); `none` for retrieval-only")
    s.set_defaults(fn=cmd_chat)

    s = sub.add_parser("models", help="model presets: list, build-tiny (offline), bench (4-bit vs bf16), bench-train (QLoRA)")
    s.add_argument("action", choices=["list", "build-tiny", "bench", "bench-train"])
    s.add_argument("preset", nargs="?", help="bench: the preset whose architecture to measure (default: BOT_MODEL)")
    s.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="bench: where to run")
    s.add_argument("--new-tokens", type=int, default=32, help="bench: tokens generated per timing")
    s.add_argument("--concurrency", type=int, default=None,
                   help="bench: questions timed batched vs one by one (default 8 on cuda, none on cpu)")
    s.add_argument("--steps", type=int, default=10, help="bench-train: timed training steps")
    s.add_argument("--seq-len", type=int, default=512, help="bench-train: tokens per training sequence")
    s.add_argument("--force", action="store_true", help="build-tiny: rebuild even if it exists")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_models)

    s = sub.add_parser("serve", help="run the assistant: Slack (HTTP or Socket Mode) and Discord, one process")
    s.set_defaults(fn=cmd_serve)

    s = sub.add_parser("discord-sync", help="register the Discord slash commands (once, or after changing them)")
    s.add_argument("--guild", type=int, default=None, help="only this guild: shows up at once, for development")
    s.set_defaults(fn=cmd_discord_sync)

    s = sub.add_parser("feedback", help="rate or correct an answer; `feedback review` for pending corrections")
    s.add_argument("target", metavar="ANSWER_ID|review", help="the answer's id (from `ask --json`), or `review`")
    s.add_argument("--up", action="store_true", help="👍")
    s.add_argument("--down", action="store_true", help="👎")
    s.add_argument("--correction", metavar="TEXT", help="the right answer (from the CLI: accepted at once)")
    s.add_argument("--user", metavar="U", help="who gives it: `U` (an operator) or `platform:user`")
    s.add_argument("--accept", type=int, metavar="ID", help="review: accept correction ID")
    s.add_argument("--reject", type=int, metavar="ID", help="review: reject correction ID")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_feedback)

    s = sub.add_parser("forget", help="delete a person's questions, votes and corrections; opt them out")
    s.add_argument("user", metavar="USER", help="`platform:user`, e.g. slack:U0123 or discord:4567")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_forget)

    s = sub.add_parser("train", help="queue a fine-tuning job on accepted feedback; --wait for its verdict")
    s.add_argument("--wait", action="store_true",
                   help="wait for the verdict (trains in this process when no worker is running)")
    s.add_argument("--timeout", type=float, default=None, help="--wait: give up waiting after this many seconds")
    s.add_argument("--user", default=None, help="recorded as who asked")
    s.add_argument("--json", action="store_true", help='print {"job", "version", "verdict"} (with --wait)')
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("jobs", help="training jobs and their state; `jobs cancel ID`")
    s.add_argument("action", nargs="?", choices=["list", "cancel"], default="list")
    s.add_argument("id", nargs="?", type=int)
    s.add_argument("--limit", type=int, default=20)
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_jobs)

    s = sub.add_parser("adapters", help="adapter versions: list, promote V, rollback, chart")
    s.add_argument("action", choices=["list", "promote", "rollback", "chart"])
    s.add_argument("version", nargs="?")
    s.add_argument("--out", metavar="FILE.png", help="chart: where to write the PNG (default adapters.png)")
    s.add_argument("--json", action="store_true",
                   help='list: print {"in_service", "versions": [{"version", "verdict", "metrics"}]}')
    s.set_defaults(fn=cmd_adapters)

    s = sub.add_parser("worker", help="run the training worker (huey): jobs, the nightly retrain, recovery")
    s.set_defaults(fn=cmd_worker)

    s = sub.add_parser("purge", help="delete questions, answers and their feedback older than the retention period")
    s.add_argument("--days", type=int, default=None, help="older than this many days (default: BOT_RETENTION_DAYS)")
    s.add_argument("--json", action="store_true", help='print {"days", "cutoff", "answers", "votes", "corrections"}')
    s.set_defaults(fn=cmd_purge)

    s = sub.add_parser("dashboard", help="browse the database read-only in Datasette, with canned queries")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    s.add_argument("--port", type=int, default=8001, help="port to listen on (default: 8001)")
    s.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also serve requests for this host name (a reverse proxy's); repeatable. "
                        "Any other Host gets 421 (DNS rebinding)")
    s.set_defaults(fn=cmd_dashboard)

    s = sub.add_parser("settings", help="show every setting, its current value and what it does")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_settings)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if not getattr(args, "fn", None):
        p.print_help()
        return 2
    try:
        # Read once per invocation, here at the entry point, and handed to whatever the command builds.
        args.settings = config.Settings.load()
        return args.fn(args)
    except config.SettingError as e:  # a bad setting (or one a builder refuses): its name, on one line
        print(e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
