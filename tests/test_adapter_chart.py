"""The adapter chart: the gate's per-set decision as data, the series drawn, and the PNG, on real card files.

Cards are written with the gate's own functions (`evaluation.gate`, `evaluation.decide`), as
`retrain.run` writes them; a real training run reaching the chart is tests/test_loop_cli.py's.
"""
from __future__ import annotations

import json

import pytest

from bot.learning import charts, evaluation
from bot.llm import hotswap

TOL = {"min_gain": 0.05, "f1_tol": 0.02, "nll_tol": 0.05}


def _m(cur: tuple, cand: tuple, n: int = 10) -> dict:
    return {"current": {"n": n, "f1": cur[0], "nll": cur[1]}, "candidate": {"n": n, "f1": cand[0], "nll": cand[1]}}


def _folder(root, version: str, card: dict) -> None:
    folder = root / version
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 1}')
    (folder / "card.json").write_text(json.dumps(card), encoding="utf-8")


def _card(root, version: str, parent: str | None, metrics: dict, loss: list[float]) -> dict:
    """A card as `retrain.run` writes it today: the gate's verdict and its per-set decision."""
    verdict, reasons = evaluation.gate(metrics, **TOL)
    card = {"version": version, "parent": parent, "metrics": metrics, "loss_curve": loss,
            "gate": {"min_gain": 0.05, "f1_tolerance": 0.02, "nll_tolerance": 0.05},
            "decision": evaluation.decide(metrics, **TOL), "verdict": verdict, "reasons": reasons}
    _folder(root, version, card)
    return card


# --- what the gate records -----------------------------------------------------------------------

def test_decide_names_the_metric_that_settled_each_set_and_the_bar():
    d = evaluation.decide({"learned": _m((0.2, 3.0), (0.2, 2.9)),          # NLL alone improves
                           "replayed": _m((0.9, 1.6), (0.6, 1.62)),        # F1 falls past its tolerance
                           "heldout": _m((0.5, 2.0), (0.5, 2.2)),          # NLL rises past its tolerance
                           "golden": _m((0.6, 1.8), (0.61, 1.79))}, **TOL)  # holds on both
    assert d["learned"] == {"role": "learned", "outcome": "improves", "passed": True, "decided_by": ["nll"],
                            "bar": {"f1": 0.25, "nll": 2.95}}
    assert (d["replayed"]["outcome"], d["replayed"]["decided_by"], d["replayed"]["bar"]) == (
        "regresses", ["f1"], {"f1": 0.88, "nll": 1.65})
    assert (d["heldout"]["outcome"], d["heldout"]["decided_by"]) == ("regresses", ["nll"])
    assert (d["golden"]["outcome"], d["golden"]["passed"], d["golden"]["decided_by"]) == ("holds", True, ["f1", "nll"])


def test_decide_marks_an_empty_set_not_checked_and_a_failed_improvement_on_both_metrics():
    d = evaluation.decide({"learned": _m((0.1, 5.0), (0.12, 4.97)), "heldout": _m((0, 0), (0, 0), n=0)}, **TOL)
    assert (d["learned"]["outcome"], d["learned"]["passed"], d["learned"]["decided_by"]) == (
        "no improvement", False, ["f1", "nll"])
    assert d["heldout"] == d["golden"] == d["replayed"] == {
        "role": "guard", "outcome": "not checked", "passed": None, "decided_by": [], "bar": {}}


@pytest.mark.parametrize("metrics", [
    {"learned": _m((0.1, 5.0), (0.9, 1.5)), "golden": _m((0.6, 1.8), (0.55, 1.8))},
    {"learned": _m((0.1, 5.0), (0.9, 1.5)), "golden": _m((0.6, 1.8), (0.6, 1.9))},
    {"learned": _m((0.2, 3.0), (0.2, 2.9)), "golden": _m((0.6, 1.8), (0.59, 1.84))},
    {"learned": _m((0.1, 5.0), (0.12, 4.97)), "golden": _m((0.6, 1.8), (0.6, 1.8))},
    # At the boundary: 0.6 - 0.58 and 1.85 - 1.8 are a hair over their tolerances in floats, so golden
    # regresses though it sits on its rounded bars; the record follows the gate's arithmetic.
    {"learned": _m((0.6, 3.0), (0.65, 3.0)), "golden": _m((0.6, 1.8), (0.58, 1.85))},
])
def test_the_recorded_decision_agrees_with_the_verdict(metrics):
    verdict, reasons = evaluation.gate(metrics, **TOL)
    d = evaluation.decide(metrics, **TOL)
    assert (verdict == "promoted") == all(s["passed"] is not False for s in d.values())
    for name, s in d.items():  # each set's outcome is the one the reasons state
        assert any(r.startswith(f"{name}: {s['outcome'] if s['outcome'] != 'not checked' else 'no questions'}")
                   for r in reasons), (name, s, reasons)


# --- smoothing -----------------------------------------------------------------------------------

def test_moving_average_is_the_trailing_mean_and_flattens_a_sawtooth():
    assert charts.moving_average([1.0, 2.0, 3.0, 4.0, 5.0], 2) == [1.0, 1.5, 2.5, 3.5, 4.5]
    assert charts.moving_average([1.0, 2.0, 3.0, 4.0, 5.0], 3) == pytest.approx([1.0, 1.5, 2.0, 3.0, 4.0])
    assert charts.moving_average([4.0, 2.0], 1) == [4.0, 2.0] and charts.moving_average([], 5) == []
    saw = [3.0, 1.0] * 10
    assert charts.moving_average(saw, 2)[1:] == [2.0] * 19
    # Over a long run, each value is the mean of the `window` raw values that end at its step.
    raw = [float((i * 7) % 5) for i in range(200)]
    w = charts.smoothing_window(len(raw))
    assert w == 20 and charts.smoothing_window(3) == 1
    smooth = charts.moving_average(raw, w)
    assert all(smooth[i] == pytest.approx(sum(raw[i - w + 1:i + 1]) / w) for i in range(w - 1, 200))


# --- the data the chart draws ----------------------------------------------------------------------

@pytest.fixture
def two_versions(tmp_path):
    root = tmp_path / "adapters"
    promoted = _card(root, "v0001", None, {"learned": _m((0.06, 5.83), (0.94, 1.58)),
                                           "golden": _m((0.08, 5.81), (0.1, 5.83))}, [3.0, 1.0, 3.0, 1.0, 2.0])
    rejected = _card(root, "v0002", "v0001", {"learned": _m((0.05, 7.4), (1.0, 1.9)),
                                              "replayed": _m((0.94, 1.6), (0.58, 2.3)),
                                              "golden": _m((0.1, 6.3), (0.1, 6.6))}, [2.0] * 30)
    hotswap.set_pointer(root, "v0001")
    assert (promoted["verdict"], rejected["verdict"]) == ("promoted", "rejected")
    return root


def test_chart_data_is_candidate_against_baseline_per_set_with_the_deciding_metric(two_versions):
    data = charts.chart_data(two_versions)
    assert data["sets"] == ["learned", "replayed", "golden"]  # the gate's order; heldout had no questions
    v1, v2 = data["versions"]
    assert (v1["version"], v1["verdict"], v1["baseline"], v1["in_service"], v1["recorded"]) == (
        "v0001", "promoted", "base model", True, True)
    assert (v2["version"], v2["verdict"], v2["baseline"], v2["in_service"]) == ("v0002", "rejected", "v0001", False)
    assert "replayed" not in v1["sets"]  # not checked for v0001: nothing drawn, no line to the next version
    learned = v1["sets"]["learned"]
    assert learned["f1"] == {"candidate": 0.94, "baseline": 0.06, "bar": 0.11, "decided": True}
    assert learned["nll"] == {"candidate": 1.58, "baseline": 5.83, "bar": 5.78, "decided": True}
    replayed = v2["sets"]["replayed"]
    assert (replayed["outcome"], replayed["passed"], replayed["decided_by"]) == ("regresses", False, ["f1", "nll"])
    golden = v2["sets"]["golden"]  # F1 held, the NLL rise of 0.3 is what failed it
    assert (golden["outcome"], golden["f1"]["decided"], golden["nll"]["decided"]) == ("regresses", False, True)
    assert golden["nll"] == {"candidate": 6.6, "baseline": 6.3, "bar": 6.35, "decided": True}
    loss = v1["loss"]
    assert loss["raw"] == [3.0, 1.0, 3.0, 1.0, 2.0] and loss["window"] == 1 and loss["smoothed"] == loss["raw"]
    assert v2["loss"]["window"] == 3 and v2["loss"]["smoothed"] == [2.0] * 30


def test_a_card_from_before_the_decision_was_recorded_draws_with_the_unknown_marked(tmp_path):
    root = tmp_path / "adapters"
    # The card shape of the versions trained before: no decision, no parent; one set without the baseline.
    _folder(root, "v0001", {"verdict": "promoted", "loss_curve": [3.0, 2.0, 1.5], "metrics": {
        "golden": {"current": {"n": 2, "f1": 0.2, "nll": 3.0}, "candidate": {"n": 2, "f1": 0.4, "nll": 2.5}},
        "learned": {"candidate": {"n": 3, "f1": 0.9, "nll": 1.0}}, "note": "hand-written"}})
    data = charts.chart_data(root)
    (v,) = data["versions"]
    assert (v["recorded"], v["baseline"], v["in_service"]) == (False, "?", False)
    assert v["sets"]["golden"]["f1"] == {"candidate": 0.4, "baseline": 0.2, "bar": None, "decided": None}
    assert v["sets"]["golden"]["outcome"] is None and v["sets"]["golden"]["passed"] is None
    assert v["sets"]["learned"]["nll"] == {"candidate": 1.0, "baseline": None, "bar": None, "decided": None}
    fig = charts.figure(data)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts.count("decision not recorded") == 4  # each panel of both sets says so
    assert charts.render(data).startswith(b"\x89PNG\r\n\x1a\n")


# --- what is drawn -------------------------------------------------------------------------------

def test_the_figure_labels_every_axis_marks_verdicts_and_draws_the_loss_raw_and_smoothed(two_versions):
    data = charts.chart_data(two_versions)
    fig = charts.figure(data)
    panels, loss = fig.axes[:-1], fig.axes[-1]
    assert len(panels) == 2 * len(data["sets"])  # F1 and NLL for each set
    assert all(ax.get_ylabel() for ax in fig.axes) and loss.get_xlabel() == "training step"
    assert {ax.get_ylabel().split("\n")[0] for ax in panels} == {"character F1", "NLL, nats per token"}
    ticks = [t.get_text() for t in panels[0].get_xticklabels()]
    assert ticks[0].startswith("v0001\npromoted\nvs base model") and "(in service)" in ticks[0]
    assert ticks[1] == "v0002\nrejected\nvs v0001"
    # The learned F1 panel: per version a baseline and a candidate point, never a line across versions.
    learned_f1 = panels[0]
    points = [(ln.get_xdata()[0], ln.get_ydata()[0]) for ln in learned_f1.lines]
    assert points == [(pytest.approx(-0.15), 0.06), (pytest.approx(0.15), 0.94),
                      (pytest.approx(0.85), 0.05), (pytest.approx(1.15), 1.0)]
    # golden F1 of v0002 did not decide: drawn faint; its NLL, which did, solid.
    golden_f1, golden_nll = panels[4], panels[5]
    assert [ln.get_alpha() for ln in golden_f1.lines][2:] == [0.25, 0.25]
    assert [ln.get_alpha() for ln in golden_nll.lines][2:] == [1.0, 1.0]
    # Loss: per version the moving average (solid, in the legend) and the raw curve (faint, same colour).
    smooth, raw = loss.lines[2], loss.lines[3]
    assert list(raw.get_ydata()) == data["versions"][1]["loss"]["raw"] and raw.get_alpha() == 0.25
    assert list(smooth.get_ydata()) == data["versions"][1]["loss"]["smoothed"] and smooth.get_alpha() is None
    assert raw.get_color() == smooth.get_color()
    assert [t.get_text() for t in loss.get_legend().get_texts()] == [
        "v0001 (5 steps: too few to smooth)", "v0002 (moving average over 3 steps)"]


def test_png_for_one_version_and_none_without_a_card(tmp_path):
    import matplotlib.image

    root = tmp_path / "adapters"
    assert charts.adapter_chart(root) is None  # no folder at all
    (root / "v0001").mkdir(parents=True)
    (root / "v0001" / "adapter_config.json").write_text("{}")
    assert charts.adapter_chart(root) is None  # a version without a card: nothing to draw
    _card(root, "v0002", None, {"learned": _m((0.1, 5.0), (0.12, 4.97))}, [])
    png = charts.adapter_chart(root)
    (tmp_path / "one.png").write_bytes(png)
    pixels = matplotlib.image.imread(tmp_path / "one.png")
    assert pixels.shape[0] >= 300 and pixels.shape[1] >= 800 and pixels.std() > 0
    (v,) = charts.chart_data(root)["versions"]
    assert v["verdict"] == "rejected" and v["sets"]["learned"]["outcome"] == "no improvement"
    loss = charts.figure(charts.chart_data(root)).axes[-1]
    assert [t.get_text() for t in loss.texts] == ["no loss curve recorded"]


def test_a_bar_far_off_the_figures_is_noted_in_words_not_drawn_to_scale(tmp_path):
    # A gate opened wide (as tests and a forced promotion do): NLL may rise 100 nats. Drawn to scale,
    # its bar would squash the measured figures (5 to 7 nats) into the bottom of the panel.
    root = tmp_path / "adapters"
    metrics = {"learned": _m((0.02, 6.8), (0.0, 3.4), n=1), "golden": _m((0.04, 6.2), (0.0, 5.0), n=1)}
    d = evaluation.decide(metrics, min_gain=-100, f1_tol=1, nll_tol=100)
    _folder(root, "v0001", {"parent": None, "metrics": metrics, "decision": d, "verdict": "promoted",
                            "loss_curve": [6.8, 4.4]})
    data = charts.chart_data(root)
    assert data["versions"][0]["sets"]["golden"]["nll"]["bar"] == 106.2
    fig = charts.figure(data)
    golden_nll = fig.axes[3]
    assert golden_nll.get_ylim() == (0, pytest.approx(6.2 * 1.25))  # its own figures: 6.2 at most
    assert "bar 106.20, off the scale" in [t.get_text() for t in golden_nll.texts]
    assert not golden_nll.collections  # no dashed line drawn off the panel


def test_many_versions_draw_the_newest_and_say_how_many_there_are(tmp_path):
    root = tmp_path / "adapters"
    for i in range(1, charts.LAST + 4):
        _card(root, f"v{i:04d}", f"v{i - 1:04d}" if i > 1 else None,
              {"learned": _m((0.1, 5.0), (0.1 + i / 100, 5.0 - i / 10))}, [5.0 - i / 10])
    data = charts.chart_data(root)
    assert data["total"] == charts.LAST + 3 and len(data["versions"]) == charts.LAST
    assert data["versions"][0]["version"] == "v0004" and data["versions"][-1]["version"] == f"v{charts.LAST + 3:04d}"
    assert data["versions"][0]["sets"]["learned"]["nll"]["candidate"] == pytest.approx(4.6)
    fig = charts.figure(data)
    assert fig.get_suptitle() == f"the newest {charts.LAST} of {charts.LAST + 3} versions (`adapters list` shows them all)"
    assert charts.figure(charts.chart_data(root, last=100)).get_suptitle() == ""
