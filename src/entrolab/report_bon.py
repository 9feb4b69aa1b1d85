"""The report's best-of-N section: each method's measured KL to the base model against best-of-N's.

Yang et al. (arXiv:2404.01730) show that best-of-N sampling from the base model and the KL-regularised RL
optimum are asymptotically equivalent; BoN's KL to the base is at most log N - (N-1)/N (Beirami et al.) and its
win rate over a base sample is N/(N+1) for a continuous reward. For each method the section places the trained
policy's measured sequence-level KL (``kl/seq_to_base``, logged with ``--set base_kl=True``) next to the N of
best-of-N with that KL bound, BoN's win rate at that N, and the policy's own win rate over the base model on the
test problems (per problem p(1 - q) + (pq + (1 - p)(1 - q)) / 2 from the final and the base evaluations'
per-problem counts; a binary verifier ties often, so this is not the continuous N/(N+1)).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from entrolab.bon import bon_kl_bound, bon_win_rate, equivalent_n

KEY = "kl/seq_to_base"


def win_rate(base_right: list[int], base_n: int, right: list[int], n: int) -> float:
    """P(a trained sample scores above a base sample) + half the ties, averaged over problems (binary rewards)."""
    rates = []
    for b, r in zip(base_right, right, strict=True):
        q, p = b / base_n, r / n
        rates.append(p * (1 - q) + 0.5 * (p * q + (1 - p) * (1 - q)))
    return float(np.mean(rates)) if rates else float("nan")


def final_kl(rows: list[dict[str, Any]], last: int = 3) -> float:
    """Mean of the last ``last`` logged ``kl/seq_to_base`` values (nan when the run did not log it)."""
    values = [float(r[KEY]) for r in rows if KEY in r and math.isfinite(float(r[KEY]))]
    return float(np.mean(values[-last:])) if values else float("nan")


def bon_rows(cmp: Any, aligned: Any, mean_ci: Any) -> list[dict[str, Any]]:
    """Per method: KL (mean, half-width), the BoN N at that KL, BoN's win rate there, and the measured win rate."""
    out = []
    for method, runs in cmp.runs.items():
        kls = [k for k in (final_kl(r.rows) for r in runs) if math.isfinite(k)]
        if not kls:
            continue
        wins = []
        for run in runs:
            if cmp.base and run.detail:
                b, d = aligned(cmp.base, run.detail)
                if b is not None:
                    wins.append(win_rate(b, int(cmp.base["samples"]), d, int(run.detail["samples"])))
        kl, kl_half = mean_ci(kls)
        n_eq = equivalent_n(max(kl, 0.0))
        win, win_half = mean_ci(wins) if wins else (float("nan"), float("nan"))
        out.append(
            dict(
                method=method,
                kl=kl,
                kl_half=kl_half,
                n=n_eq,
                bon_win=bon_win_rate(n_eq),
                win=win,
                win_half=win_half,
                points=[(k, w) for k, w in zip(kls, wins, strict=False)],
            )
        )
    return out


def bon_section(cmp: Any, colors: dict[str, Any], aligned: Any, mean_ci: Any, table: Any, pm: Any):
    """(figure, html, notes) of the section; a note only when no run logged ``kl/seq_to_base``."""
    rows = bon_rows(cmp, aligned, mean_ci)
    if not rows:
        return None, "", [f"No run logged {KEY}: compare with --set base_kl=True to measure the KL to the base."]
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    ns = np.unique(np.round(np.logspace(0, 3, 60)))
    ax.plot([bon_kl_bound(n) for n in ns], [bon_win_rate(n) for n in ns], "k--", lw=1, label="best-of-N (bound)")
    for row in rows:
        pts = [p for p in row["points"] if math.isfinite(p[1])]
        if pts:
            ax.scatter(*zip(*pts, strict=True), color=colors.get(row["method"]), label=row["method"], s=22)
    ax.set_xlabel("KL(π ‖ base) per sequence (nats)")
    ax.set_ylabel("win rate over the base model")
    ax.legend(fontsize=7, frameon=False)
    header = ["method", "KL to base", "BoN N at that KL", "BoN win rate (continuous)", "measured win rate"]
    body = [
        [
            r["method"],
            pm(r["kl"], r["kl_half"]),
            f"{r['n']:.2f}",
            f"{r['bon_win']:.3f}",
            pm(r["win"], r["win_half"]),
        ]
        for r in rows
    ]
    return fig, table(header, body), []


__all__ = ["bon_rows", "bon_section", "final_kl", "win_rate"]
