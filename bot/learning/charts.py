"""The adapter chart: each version's metrics and loss curve as one PNG, for people who would rather look.

Built from the versions' `card.json` (nothing is re-measured): on the left,
each version's character F1 on the golden set and on the corrections it
learned, with the adapter in service marked; on the right, each version's
training loss curve. matplotlib with its non-interactive Agg backend, so it
works on a server without a display; imported only when a chart is drawn.
"""
from __future__ import annotations

import io
from pathlib import Path

from bot.learning import registry


def _series(cards: dict[str, dict], set_name: str) -> list[float | None]:
    out = []
    for card in cards.values():
        cand = (card.get("metrics") or {}).get(set_name, {}).get("candidate", {})
        out.append(cand.get("f1") if cand.get("n") else None)
    return out


def adapter_chart(adapters_dir: Path) -> bytes | None:
    """PNG bytes of the chart, or None when there is no version with a card to draw."""
    listing = registry.listing(Path(adapters_dir))
    cards = {v["version"]: registry.card(Path(adapters_dir), v["version"]) for v in listing["versions"]}
    cards = {v: c for v, c in cards.items() if c}
    if not cards:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on a server; must precede pyplot's import
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100)
    left, right = fig.subplots(1, 2)
    names = list(cards)
    x = range(len(names))
    for set_name, marker in (("golden", "o"), ("learned", "s"), ("replayed", "^"), ("heldout", "d")):
        ys = _series(cards, set_name)
        if any(y is not None for y in ys):
            left.plot([i for i, y in zip(x, ys) if y is not None], [y for y in ys if y is not None],
                      marker=marker, label=f"{set_name} F1")
    labels = [f"{name}\n{cards[name].get('verdict') or '?'}"
              f"{' (in service)' if name == listing['in_service'] else ''}" for name in names]
    left.set_xticks(list(x), labels, fontsize=8)
    left.set_ylim(0, 1.05)
    left.set_title("character F1 per version (candidate)")
    left.legend(fontsize=8, loc="upper left")
    for name, card in cards.items():
        curve = card.get("loss_curve") or []
        if curve:
            right.plot(range(1, len(curve) + 1), curve, label=name, linewidth=1)
    right.set_xlabel("step")
    right.set_title("training loss")
    if right.lines:
        right.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
