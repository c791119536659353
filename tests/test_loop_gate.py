"""The gate's arithmetic: character F1 and the promotion decision, on numbers (no model)."""
from __future__ import annotations

import pytest

from bot.learning.evaluation import char_f1, gate, normalize


def test_char_f1_ignores_citations_and_whitespace():
    assert normalize("边缘计算 在数据源 附近[1][2]。\n") == "边缘计算在数据源附近。"
    assert char_f1("边缘计算在数据源附近[1]。", "边缘计算 在数据源附近。") == 1.0
    assert char_f1("完全不同", "边缘计算") == 0.0
    assert char_f1("", "") == 1.0 and char_f1("", "x") == 0.0
    # precision 2/4, recall 2/2 -> F1 2/3
    assert char_f1("数据无关", "数据") == pytest.approx(2 / 3)


def _m(cur: tuple, cand: tuple, n: int = 10) -> dict:
    return {"current": {"n": n, "f1": cur[0], "nll": cur[1]}, "candidate": {"n": n, "f1": cand[0], "nll": cand[1]}}


TOL = {"min_gain": 0.05, "f1_tol": 0.02, "nll_tol": 0.05}


def test_promotes_an_improvement_that_holds_elsewhere():
    verdict, reasons = gate({"learned": _m((0.1, 5.0), (0.9, 1.5)), "heldout": _m((0.5, 2.0), (0.49, 2.04)),
                             "golden": _m((0.6, 1.8), (0.61, 1.79))}, **TOL)
    assert verdict == "promoted"
    assert [r.split(":")[0] + ":" + r.split(":")[1].split("(")[0] for r in reasons] == [
        "learned: improves ", "replayed: no questions, not checked", "heldout: holds ", "golden: holds "]


@pytest.mark.parametrize("learned,golden,why", [
    (_m((0.1, 5.0), (0.12, 4.97)), _m((0.6, 1.8), (0.6, 1.8)), "learned: no improvement"),
    (_m((0.1, 5.0), (0.9, 1.5)), _m((0.6, 1.8), (0.55, 1.8)), "golden: regresses"),   # F1 down 0.05
    (_m((0.1, 5.0), (0.9, 1.5)), _m((0.6, 1.8), (0.6, 1.9)), "golden: regresses"),    # NLL up 0.1
    (_m((0.1, 5.0), (0.9, 1.5), n=0), _m((0.6, 1.8), (0.6, 1.8)), "nothing to check"),
])
def test_rejects(learned, golden, why):
    verdict, reasons = gate({"learned": learned, "golden": golden}, **TOL)
    assert verdict == "rejected" and any(r.startswith(why) for r in reasons), reasons


def test_a_candidate_that_unlearns_what_the_adapter_in_service_knew_is_rejected():
    # Junk trained over: the new examples are learned perfectly, the replayed ones are lost.
    verdict, reasons = gate({"learned": _m((0.05, 7.4), (1.0, 1.9)), "replayed": _m((1.0, 1.6), (0.2, 2.3)),
                             "golden": _m((0.1, 6.0), (0.09, 6.02))}, **TOL)
    assert verdict == "rejected" and any(r.startswith("replayed: regresses") for r in reasons), reasons


def test_nll_alone_counts_as_improvement_and_empty_guards_are_reported():
    verdict, reasons = gate({"learned": _m((0.2, 3.0), (0.2, 2.9)), "heldout": _m((0, 0), (0, 0), n=0)}, **TOL)
    assert verdict == "promoted"
    assert "heldout: no questions, not checked" in reasons and "golden: no questions, not checked" in reasons
