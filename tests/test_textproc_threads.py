"""English stemming from many threads at once (the answer pool under concurrent questions, bot/knowledge/textproc.py).

Found by tools/replica_check.py: a snowballstemmer object keeps the word it is stemming in its own fields, so
one shared by the pool's threads raised IndexError (or returned another thread's word) under load."""
from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

from bot.knowledge import textproc

WORDS = ["computing", "generalization", "relational", "hopefulness", "organizational", "conditioning"]


def test_stemming_in_eight_threads_gives_what_one_thread_gives():
    alone = {w: textproc.stem(w) for w in WORDS}
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter allows: the race shows at once
    try:
        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(textproc.stem, WORDS * 3000))
    finally:
        sys.setswitchinterval(old)
    assert together == [alone[w] for w in WORDS * 3000]
    assert len(set(alone.values())) == len(WORDS) and alone["computing"] == "comput"
