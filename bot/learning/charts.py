"""The adapter chart: each version's gate decision and loss curve as one PNG, for people who would rather look.

Built from the versions' `card.json` (nothing is re-measured). One row per
evaluation set (the learned corrections, then the guards: replayed, heldout,
golden), with character F1 on the left and the reference's NLL on the right:
for each version, the adapter it was compared to (hollow) and the candidate
(filled, green where the set passed, red where it failed), joined by an
arrow, with the bar the candidate had to reach. The metric that decided the
set is drawn solid, the other faint; nothing joins different versions, since
each was measured on its own examples. Each version's column is shaded by its
verdict. The bottom row is the training loss: the raw curve faint, its
moving average solid.

Cards written before the gate recorded its per-set decision (`decision`)
still draw: their sets are marked "decision not recorded" and both metrics
are drawn alike; a card without the baseline's figures draws the candidate
alone. `chart_data` returns what is drawn, so it can be checked as numbers.
matplotlib with its non-interactive Agg backend, so it works on a server
without a display; imported only when a chart is drawn.
"""
from __future__ import annotations

import io
from pathlib import Path

from bot.learning import registry

SETS = ("learned", "replayed", "heldout", "golden")  # the gate's order: what it learned, then the guards
METRICS = ("f1", "nll")
VERDICT_COLOURS = {"promoted": "#2e7d32", "rejected": "#c62828"}
UNKNOWN = "#757575"
LAST = 12  # versions drawn: beyond a dozen columns the labels and figures run into each other


def smoothing_window(length: int) -> int:
    """A tenth of the run, at least one step: wide enough to flatten the step-to-step sawtooth
    of small batches, narrow enough to keep the curve's shape."""
    return max(1, length // 10)


def moving_average(values: list[float], window: int) -> list[float]:
    """The trailing mean of the last `window` values at each step (fewer at the start, so the
    smoothed curve starts at step 1 like the raw one)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _figure(block: dict, metric: str) -> float | None:
    return block.get(metric) if isinstance(block, dict) and block.get("n") else None


def _version(name: str, card: dict, in_service: str | None) -> dict:
    recorded = isinstance(card.get("decision"), dict)
    decision = card.get("decision") or {}
    sets = {}
    metrics = card.get("metrics") or {}
    for set_name, pair in metrics.items():
        if not isinstance(pair, dict):  # a card written by hand, or by an older version
            continue
        cand, base = pair.get("candidate") or {}, pair.get("current") or {}
        if not cand.get("n"):
            continue  # not checked: nothing to draw
        d = decision.get(set_name) or {}
        decided_by = d.get("decided_by") if recorded else None
        sets[set_name] = {
            "n": cand["n"],
            "role": d.get("role") or ("learned" if set_name == "learned" else "guard"),
            "outcome": d.get("outcome") if recorded else None,
            "passed": d.get("passed") if recorded else None,
            "decided_by": decided_by,
            **{m: {"candidate": _figure(cand, m), "baseline": _figure(base, m),
                   "bar": (d.get("bar") or {}).get(m) if recorded else None,
                   "decided": (m in decided_by) if decided_by is not None else None} for m in METRICS}}
    curve = [float(x) for x in card.get("loss_curve") or []]
    window = smoothing_window(len(curve))
    parent = card.get("parent", "?")  # None: the base model; absent: not recorded
    return {"version": name, "verdict": card.get("verdict"), "in_service": name == in_service,
            "baseline": "base model" if parent is None else parent, "recorded": recorded, "sets": sets,
            "loss": {"raw": curve, "smoothed": moving_average(curve, window), "window": window}}


def chart_data(adapters_dir: Path, last: int = LAST) -> dict:
    """`{"sets": [names], "total": N, "versions": [{"version", "verdict", "in_service", "baseline", "recorded", "sets":
    {set: {"n", "role", "outcome", "passed", "decided_by", "f1": {"candidate", "baseline", "bar", "decided"},
    "nll": {...}}}, "loss": {"raw", "smoothed", "window"}}]}`: what the chart draws, for every version
    with a card, the `last` newest of `total`. None stands for what the card does not record (`recorded`:
    False for a card from before the gate wrote its per-set decision; `baseline` "?" when it does not
    name its parent)."""
    listing = registry.listing(Path(adapters_dir))
    versions = []
    for v in listing["versions"]:
        card = registry.card(Path(adapters_dir), v["version"])
        if card:
            versions.append(_version(v["version"], card, listing["in_service"]))
    total, versions = len(versions), versions[-last:]
    present = {s for v in versions for s in v["sets"]}
    order = [s for s in SETS if s in present] + sorted(present - set(SETS))
    return {"sets": order, "total": total, "versions": versions}


def _legend(fig) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Line2D([], [], marker="o", ls="", mfc="white", mec="black", label="adapter compared to (baseline)"),
               Line2D([], [], marker="o", ls="", color=VERDICT_COLOURS["promoted"], label="candidate: set passed"),
               Line2D([], [], marker="o", ls="", color=VERDICT_COLOURS["rejected"], label="candidate: set failed"),
               Line2D([], [], marker="o", ls="", color=UNKNOWN, label="candidate: decision not recorded"),
               Line2D([], [], ls="--", color="black", label="bar the candidate had to reach"),
               Line2D([], [], color="black", alpha=0.25, label="faint: metric that did not decide"),
               Patch(color=VERDICT_COLOURS["promoted"], alpha=0.12, label="version promoted"),
               Patch(color=VERDICT_COLOURS["rejected"], alpha=0.12, label="version rejected")]
    fig.legend(handles=handles, loc="outside upper center", ncols=4, fontsize=8, frameon=False)


def _limit(versions: list[dict], set_name: str, metric: str) -> float:
    """The top of a panel's y axis: F1 is 0..1; NLL is scaled to the measured figures (and the bars
    near them), with headroom for the outcome written along the top. A bar far beyond the figures
    (a gate opened wide) is noted in words instead of flattening them."""
    if metric == "f1":
        return 1.25
    figures = [x for v in versions if set_name in v["sets"] for who in ("candidate", "baseline")
               if (x := v["sets"][set_name][metric][who]) is not None]
    top = max(figures or [1.0])
    bars = [b for v in versions if set_name in v["sets"]
            if (b := v["sets"][set_name][metric]["bar"]) is not None and 0 <= b <= 2 * top]
    return max([top, *bars, 0.1]) * 1.25


def _panel(ax, data: dict, set_name: str, metric: str, labels: list[str]) -> None:
    versions = data["versions"]
    top = _limit(versions, set_name, metric)
    for i, v in enumerate(versions):
        colour = VERDICT_COLOURS.get(v["verdict"])
        if colour:
            ax.axvspan(i - 0.45, i + 0.45, color=colour, alpha=0.07, lw=0)
        s = v["sets"].get(set_name)
        if s is None:
            ax.text(i, 0.5, "not checked", transform=ax.get_xaxis_transform(), ha="center", va="center",
                    fontsize=7, color=UNKNOWN)
            continue
        m = s[metric]
        alpha = 0.25 if m["decided"] is False else 1.0
        cand_colour = {True: VERDICT_COLOURS["promoted"], False: VERDICT_COLOURS["rejected"]}.get(s["passed"], UNKNOWN)
        if m["baseline"] is not None:
            ax.plot([i - 0.15], [m["baseline"]], "o", mfc="white", mec="black", alpha=alpha, zorder=3)
            if m["candidate"] is not None:
                ax.annotate("", xy=(i + 0.15, m["candidate"]), xytext=(i - 0.15, m["baseline"]),
                            arrowprops={"arrowstyle": "->", "color": cand_colour, "alpha": alpha, "shrinkA": 4,
                                        "shrinkB": 4})
        if m["candidate"] is not None:
            ax.plot([i + 0.15], [m["candidate"]], "o", color=cand_colour, alpha=alpha, zorder=3)
            ax.annotate(f"{m['candidate']:.2f}", (i + 0.15, m["candidate"]), xytext=(5, 0),
                        textcoords="offset points", va="center", fontsize=7, alpha=alpha)
        if m["bar"] is not None and 0 <= m["bar"] <= top:
            ax.hlines(m["bar"], i - 0.35, i + 0.35, colors="black", linestyles="--", lw=1, alpha=alpha)
        elif m["bar"] is not None:
            ax.text(i, 0.86, f"bar {m['bar']:.2f}, off the scale", transform=ax.get_xaxis_transform(),
                    ha="center", va="top", fontsize=6, alpha=alpha)
        if not v["recorded"]:
            ax.text(i, 0.97, "decision not recorded", transform=ax.get_xaxis_transform(), ha="center", va="top",
                    fontsize=6, color=UNKNOWN)
        elif metric == "f1":
            ax.text(i, 0.97, s["outcome"] or "", transform=ax.get_xaxis_transform(), ha="center", va="top",
                    fontsize=7, color=cand_colour)
    ax.set_xlim(-0.5, len(versions) - 0.5)
    ax.set_xticks(range(len(versions)), labels, fontsize=7)
    role = "must improve on F1 or NLL" if set_name == "learned" else "guard: may not regress on either"
    ax.set_ylim(0, top)
    if metric == "f1":
        ax.set_ylabel("character F1\n(higher is better)", fontsize=8)
        ax.set_title(f"{set_name} ({role}): F1", fontsize=9)
    else:
        ax.set_ylabel("NLL, nats per token\n(lower is better)", fontsize=8)
        ax.set_title(f"{set_name}: NLL of the reference answer", fontsize=9)
    ax.grid(axis="y", alpha=0.3)


def figure(data: dict):
    """The matplotlib Figure of `chart_data`'s result (at least one version)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a server; must precede pyplot's import
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rows = len(data["sets"]) + 1
    fig = Figure(figsize=(12, 2.4 * rows + 1.2), dpi=100, layout="constrained")
    grid = fig.add_gridspec(rows, 2)
    labels = [f"{v['version']}\n{v['verdict'] or 'verdict ?'}\nvs {v['baseline']}"
              f"{chr(10) + '(in service)' if v['in_service'] else ''}" for v in data["versions"]]
    for row, set_name in enumerate(data["sets"]):
        for col, metric in enumerate(METRICS):
            _panel(fig.add_subplot(grid[row, col]), data, set_name, metric, labels)
    loss = fig.add_subplot(grid[rows - 1, :])
    for v in data["versions"]:
        raw, smooth = v["loss"]["raw"], v["loss"]["smoothed"]
        if raw:
            steps = range(1, len(raw) + 1)
            window = v["loss"]["window"]
            label = (f"{v['version']} (moving average over {window} steps)" if window > 1
                     else f"{v['version']} ({len(raw)} steps: too few to smooth)")
            (line,) = loss.plot(steps, smooth, lw=1.6, label=label)
            loss.plot(steps, raw, lw=0.8, alpha=0.25, color=line.get_color(), label=f"_{v['version']} raw")
    loss.set_xlabel("training step")
    loss.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss.set_ylabel("training loss\n(nats per answer token)", fontsize=8)
    loss.set_title("training loss: raw (faint) and its moving average", fontsize=9)
    if loss.lines:
        loss.legend(fontsize=8)
    else:
        loss.text(0.5, 0.5, "no loss curve recorded", transform=loss.transAxes, ha="center", color=UNKNOWN)
    loss.grid(alpha=0.3)
    _legend(fig)
    if data["total"] > len(data["versions"]):
        fig.suptitle(f"the newest {len(data['versions'])} of {data['total']} versions "
                     "(`adapters list` shows them all)", fontsize=9)
    return fig


def render(data: dict) -> bytes:
    """PNG bytes of `chart_data`'s result (at least one version)."""
    buf = io.BytesIO()
    figure(data).savefig(buf, format="png")
    return buf.getvalue()


def adapter_chart(adapters_dir: Path) -> bytes | None:
    """PNG bytes of the chart, or None when there is no version with a card to draw."""
    data = chart_data(adapters_dir)
    return render(data) if data["versions"] else None
