"""A feedback burst with kill -9 in the middle, then a restart and a count.

    python tests/reliability/feedback_burst.py [--ops 1000] [--threads 8] [--seed 6] [--db PATH]

prints the figures as JSON (acknowledged, present after the restart, missing,
damaged, timings). `tests/reliability/test_durability.py` runs the same.

Op `i` is fully determined by its number: even ones are votes, odd ones
corrections, each by its own user `W0007` on answer `i mod answers`; every
third correction comes from a trusted reviewer (accepted at once: stored
pending, then reviewed, two commits). The writer (`writer` mode, a child
process) runs ops from several threads through the real `feedback.vote` /
`feedback.correct` on one database file, and prints `ok <i> ...` to stdout,
flushed, only after the function returned: that line is the acknowledgement
a user would have seen. The driver kills the writer with SIGKILL after a
seeded number of acknowledgements, opens the database again as a restarted
process would, checks that every acknowledged op is there and intact, then
runs the ops whose rows are absent in a second writer to reach the total.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ANSWERS = 50


def answer_id(n: int) -> str:
    return f"{n:012x}"


def expected(i: int) -> dict:
    """What op `i` writes."""
    base = {"i": i, "answer_id": answer_id(i % ANSWERS), "user": f"W{i:04d}"}
    if i % 2 == 0:
        return {**base, "kind": "vote", "value": 1 if i % 4 == 0 else -1}
    text = f"更正 {i}: " + "边缘计算在靠近数据源的地方处理数据[1]。" * (1 + i % 5) + f" (op {i})"
    return {**base, "kind": "correction", "text": text, "trusted": i % 3 == 0}


# -- the child: concurrent writers --------------------------------------------------


def writer(db_path: str, ops: list[int], threads: int) -> int:
    sys.path.insert(0, str(ROOT))
    from bot.learning import feedback
    from bot import store

    db = store.connect(db_path)  # one connection per thread (store.ThreadLocalDatabase)
    work: queue.Queue = queue.Queue()
    for i in ops:
        work.put(i)
    say = threading.Lock()

    def ack(line: str) -> None:
        with say:  # one whole line per write: lines from threads never interleave
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def run() -> None:
        while True:
            try:
                i = work.get_nowait()
            except queue.Empty:
                return
            op = expected(i)
            try:
                if op["kind"] == "vote":
                    feedback.vote(db, op["answer_id"], "slack", op["user"], op["value"])
                    ack(f"ok {i} vote")
                else:
                    reviewers = [f"slack:{op['user']}"] if op["trusted"] else []
                    done = feedback.correct(db, op["answer_id"], op["text"], "slack", op["user"],
                                            reviewers=reviewers)
                    ack(f"ok {i} correction {done['id']} {done['status']}")
            except Exception as e:  # "database is locked", say: not acknowledged, and counted
                ack(f"err {i} {type(e).__name__}: {e}".replace("\n", " "))

    pool = [threading.Thread(target=run, name=f"writer-{n}") for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return 0


# -- the driver ---------------------------------------------------------------------


def _seed_answers(db_path: Path) -> None:
    from bot import store

    db = store.connect(db_path)
    for n in range(ANSWERS):
        store.record_answer(db, {"id": answer_id(n), "created_at": time.time(), "platform": "slack",
                                 "channel": "C0BURST", "thread": f"1700000000.{n:06d}", "user": f"U{n:04d}",
                                 "question": f"问题 {n}", "passages": [], "answer": f"回答 {n}", "citations": [],
                                 "mode": "llm"})
    db.conn.close()  # nothing of the driver's stays open: the check after the kill opens the file afresh


def _spawn(db_path: Path, ops: list[int], threads: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "writer", "--db", str(db_path),
                             "--threads", str(threads)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            stderr=open(db_path.with_suffix(".writer.log"), "a"),
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _acks(proc: subprocess.Popen, ops: list[int], kill_after: int | None,
          errors: list[str]) -> tuple[dict[int, list[str]], bool]:
    """Feed the ops, read acknowledgements; SIGKILL the writer after `kill_after` of them."""
    proc.stdin.write(" ".join(map(str, ops)) + "\n")
    proc.stdin.close()
    acked: dict[int, list[str]] = {}
    killed = False
    for line in proc.stdout:
        words = line.split()
        if len(words) >= 3 and words[0] == "ok":
            acked[int(words[1])] = words[2:]
        elif words[:1] == ["err"]:
            errors.append(line.strip())
        if kill_after is not None and not killed and len(acked) >= kill_after:
            os.kill(proc.pid, signal.SIGKILL)
            killed = True  # lines already in the pipe are still read: they were acknowledged
    proc.wait(30)
    return acked, killed


def _check(db, ops: range, acked: dict[int, list[str]]) -> dict:
    """Per op: present and intact, absent, or damaged; acknowledged ops must all be present and intact."""
    votes = {(r["answer_id"], r["user"]): r for r in db.query("select * from votes")}
    fixes: dict[str, list[dict]] = {}
    for r in db.query("select * from corrections order by id"):
        fixes.setdefault(r["user"], []).append(r)
    present, absent, damaged, stuck_pending = set(), set(), [], []
    for i in ops:
        op = expected(i)
        if op["kind"] == "vote":
            row = votes.get((op["answer_id"], op["user"]))
            if row is None:
                absent.add(i)
            elif (row["value"], row["platform"]) != (op["value"], "slack"):
                damaged.append({"op": i, "row": row})
            else:
                present.add(i)
            continue
        rows = fixes.get(op["user"], [])
        if not rows:
            absent.add(i)
            continue
        row = rows[0]
        ok = len(rows) == 1 and (row["answer_id"], row["text"], row["platform"]) == (op["answer_id"], op["text"], "slack")
        if i in acked:  # the id and status the writer reported are the ones stored
            cid, status = int(acked[i][1]), acked[i][2]
            ok = ok and row["id"] == cid and row["status"] == status
            ok = ok and status == ("accepted" if op["trusted"] else "pending")
        elif op["trusted"] and row["status"] == "pending":
            stuck_pending.append(i)  # killed between storing and reviewing: waits for review, never unvetted
        ok = ok and row["status"] in ("pending", "accepted")
        (present.add(i) if ok else damaged.append({"op": i, "rows": rows}))
    return {"present": present, "absent": absent, "damaged": damaged, "stuck_pending": stuck_pending}


def burst(db_path: Path, ops: int = 1000, threads: int = 8, seed: int = 6) -> dict:
    """Run the burst, the kill, the restart check and the rest; the figures."""
    sys.path.insert(0, str(ROOT))
    from bot import store

    rng = random.Random(seed)
    kill_after = rng.randint(ops * 3 // 10, ops * 6 // 10)
    order = list(range(ops))
    rng.shuffle(order)
    _seed_answers(db_path)

    t0 = time.monotonic()
    first = _spawn(db_path, order, threads)
    errors: list[str] = []
    acked, killed = _acks(first, order, kill_after, errors)
    burst_s = time.monotonic() - t0

    db = store.connect(db_path)  # the restart: a fresh open, SQLite recovers the WAL
    integrity = db.execute("pragma integrity_check").fetchone()[0]
    after_kill = _check(db, range(ops), acked)
    lost = sorted(set(acked) - after_kill["present"])
    db.conn.close()

    rest = [i for i in order if i in after_kill["absent"]]
    t1 = time.monotonic()
    second = _spawn(db_path, rest, threads)
    acked_rest, _ = _acks(second, rest, None, errors)
    rest_s = time.monotonic() - t1

    db = store.connect(db_path)
    final = _check(db, range(ops), {**acked, **acked_rest})
    totals = {"votes": db.execute("select count(*) from votes").fetchone()[0],
              "corrections": db.execute("select count(*) from corrections").fetchone()[0]}
    final_integrity = db.execute("pragma integrity_check").fetchone()[0]
    db.conn.close()
    return {
        "ops": ops, "threads": threads, "seed": seed, "kill_after_acks": kill_after, "killed": killed,
        "writer_exit": first.returncode, "writer_errors": errors,
        "acknowledged_before_kill": len(acked),
        "present_after_restart": len(after_kill["present"]),
        "acknowledged_and_present": len(set(acked) & after_kill["present"]),
        "acknowledged_but_missing_or_damaged": lost,
        "present_but_unacknowledged": len(after_kill["present"] - set(acked)),
        "damaged_after_restart": after_kill["damaged"],
        "trusted_corrections_left_pending_by_the_kill": after_kill["stuck_pending"],
        "integrity_after_kill": integrity,
        "rerun_ops": len(rest), "rerun_acknowledged": len(acked_rest), "rerun_exit": second.returncode,
        "final_present": len(final["present"]), "final_absent": sorted(final["absent"]),
        "final_damaged": final["damaged"], "final_rows": totals, "final_integrity": final_integrity,
        "burst_s": round(burst_s, 2), "rerun_s": round(rest_s, 2),
        "acks_per_s_before_kill": round(len(acked) / burst_s, 1) if burst_s else None,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", nargs="?", choices=["burst", "writer"], default="burst")
    p.add_argument("--db", help="database file (default: a new temporary one)")
    p.add_argument("--ops", type=int, default=1000, help="votes and corrections in all (default 1000)")
    p.add_argument("--threads", type=int, default=8, help="writer threads (default 8)")
    p.add_argument("--seed", type=int, default=6, help="seeds the order of the ops and the kill point")
    args = p.parse_args(argv)
    if args.mode == "writer":
        return writer(args.db, [int(w) for w in sys.stdin.read().split()], args.threads)
    with tempfile.TemporaryDirectory(prefix="feedback-burst-") as tmp:
        out = burst(Path(args.db or Path(tmp) / "bot.db"), args.ops, args.threads, args.seed)
    print(json.dumps(out, ensure_ascii=False))
    bad = (out["acknowledged_but_missing_or_damaged"] or out["final_absent"] or out["final_damaged"]
           or out["writer_errors"])
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
