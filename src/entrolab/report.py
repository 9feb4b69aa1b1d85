"""A self-contained HTML report of a comparison: ``render_report(CMP) -> CMP/report.html`` (+ ``CMP/plots/*.png``).

What it reads (a folder written by ``entrolab compare``; nothing else is needed, every file but the metrics
is optional, and a section whose inputs are missing is skipped with a note in the report)::

    CMP/
      base_eval.json                 optional: EVAL DETAIL of the base model (pass@k curve, support, answers)
      <method>/                      one folder per method (any name; folders without seed*/ are ignored)
        seed<k>/                     k an integer; one folder per seed
          metrics.jsonl              the trainer's: one JSON object per line with "step" (docs/metrics.md)
          summary.json               the trainer's: {"base_eval": {...}, "final_eval": {...}, "config": ...};
                                     while it is missing the last eval/... row of metrics.jsonl stands in
          eval_detail.json           optional: EVAL DETAIL of the run's final model

    EVAL DETAIL, a JSON object:
      "samples": n                   int, samples per problem (the same for every problem)
      "right":   [c_1, ..., c_P]     int 0..n, number of right samples of each test problem
      "answers": [[a, ...], ...]     optional, P lists of n extracted final answers (task.extract_answer),
                                     null for a format error
      "ids":     [id_1, ..., id_P]   optional, Example.id of each problem. When the base file and a run's file
                                     both have ids, problems are matched by id (the common ones); otherwise
                                     by position, and their numbers must be equal.

Written: ``CMP/report.html`` (PNG plots embedded as base64, no external resource) and ``CMP/plots/<name>.png``.

Statistics: every "mean ± h" is over seeds, h the half-width of the 95 % Student-t interval
t_{0.975, n−1}·s/√n (s the sample standard deviation; no interval with one seed). Curves over steps use,
at each step, the seeds that logged it. Colours are fixed per method (sorted by name) in every plot.
Plots are drawn on matplotlib ``Figure`` objects with the Agg canvas (pyplot's global state is not touched).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from entrolab.diagnostics import (
    fit_entropy_law,
    mean_answer_entropy,
    metric_series,
    passk_from_counts,
    support_change,
)
from entrolab.report_bon import bon_section

# t_{0.975, df} for df = 1..30; beyond, the Cornish-Fisher expansion (error < 1e-4).
_T975 = (
    12.7062,
    4.3027,
    3.1824,
    2.7764,
    2.5706,
    2.4469,
    2.3646,
    2.3060,
    2.2622,
    2.2281,
    2.2010,
    2.1788,
    2.1604,
    2.1448,
    2.1314,
    2.1199,
    2.1098,
    2.1009,
    2.0930,
    2.0860,
    2.0796,
    2.0739,
    2.0687,
    2.0639,
    2.0595,
    2.0555,
    2.0518,
    2.0484,
    2.0452,
    2.0423,
)


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (df ≥ 1)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963984540054
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of the 95 % t-interval) of the finite values; half-width NaN with fewer than two."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    if v.size == 1:
        return float(v[0]), math.nan
    return float(v.mean()), t_quantile_975(v.size - 1) * float(v.std(ddof=1)) / math.sqrt(v.size)


# ----------------------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One (method, seed) run of a comparison, as read from its folder."""

    method: str
    seed: int
    rows: list[dict[str, Any]]
    summary: dict[str, Any] | None = None
    detail: dict[str, Any] | None = None

    @property
    def final_eval(self) -> dict[str, float]:
        """summary.json's final_eval, else the last eval/... row after step 0 (prefix stripped), else {}."""
        if self.summary and self.summary.get("final_eval"):
            return self.summary["final_eval"]
        for row in reversed(self.rows):
            if row.get("step", 0) > 0 and "eval/pass@1" in row:
                return {k[5:]: v for k, v in row.items() if k.startswith("eval/")}
        return {}

    @property
    def base_eval(self) -> dict[str, float]:
        if self.summary and self.summary.get("base_eval"):
            return self.summary["base_eval"]
        row = next((r for r in self.rows if r.get("step") == 0), {})
        return {k[5:]: v for k, v in row.items() if k.startswith("eval/")}


@dataclass
class Comparison:
    root: Path
    runs: dict[str, list[Run]]  # method -> runs sorted by seed; methods sorted by name
    base: dict[str, Any] | None = None  # base_eval.json


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _read_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill: the run is still being written
                continue
    return rows


def load_comparison(cmp_dir: str | Path) -> Comparison:
    """Read every ``<method>/seed<k>/`` of ``cmp_dir`` (see the module docstring)."""
    root = Path(cmp_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"comparison folder {root} does not exist")
    runs: dict[str, list[Run]] = {}
    for mdir in sorted(p for p in root.iterdir() if p.is_dir()):
        for sdir in mdir.iterdir():
            match = re.fullmatch(r"seed(\d+)", sdir.name)
            if not (match and (sdir / "metrics.jsonl").exists()):
                continue
            run = Run(
                mdir.name,
                int(match.group(1)),
                _read_rows(sdir / "metrics.jsonl"),
                _read_json(sdir / "summary.json"),
                _read_json(sdir / "eval_detail.json"),
            )
            runs.setdefault(mdir.name, []).append(run)
    if not runs:
        raise FileNotFoundError(f"no <method>/seed<k>/metrics.jsonl under {root}")
    runs = {m: sorted(rs, key=lambda r: r.seed) for m, rs in sorted(runs.items())}
    return Comparison(root, runs, _read_json(root / "base_eval.json"))


# ----------------------------------------------------------------------------------------------------------
# plotting helpers
# ----------------------------------------------------------------------------------------------------------
BASE_COLOR = "#222222"


def method_colors(methods: Sequence[str]) -> dict[str, Any]:
    """A fixed colour per method (tab10, tab20 beyond ten methods), in the given order."""
    cmap = colormaps["tab10" if len(methods) <= 10 else "tab20"]
    return {m: cmap(i % cmap.N) for i, m in enumerate(methods)}


def _figure(ncols: int, height: float = 3.6, width: float | None = None):
    fig = Figure(figsize=(width or 4.4 * ncols, height), layout="constrained", dpi=110)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig, axes


def _legend_top(fig, axes, ncol: int) -> None:
    """One legend for the figure above the panels (no legend over the data)."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(lab, h)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside upper center", ncol=max(1, min(ncol, len(seen))))


def _band(runs: Sequence[Run], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps, mean over seeds and 95 % half-width of ``key`` (at each step, the seeds that logged it)."""
    by_step: dict[float, list[float]] = {}
    for run in runs:
        for s, v in zip(*metric_series(run.rows, key), strict=True):
            by_step.setdefault(float(s), []).append(float(v))
    steps = np.array(sorted(by_step))
    stats = [mean_ci(by_step[s]) for s in steps]
    return steps, np.array([m for m, _ in stats]), np.array([h for _, h in stats])


def _bounds(key: str) -> tuple[float | None, float | None]:
    """The range a metric lives in, so that a wide interval is not drawn below 0 or above 1."""
    if key.startswith(("eval/pass@", "eval/accuracy", "reward/accuracy", "clip/frac", "len/truncated_frac")):
        return 0.0, 1.0
    if key.startswith(("entropy/token_mean", "eval/entropy", "len/")):
        return 0.0, None
    return None, None


def _plot_band(ax, runs: Sequence[Run], key: str, color, label: str) -> bool:
    steps, mean, half = _band(runs, key)
    if steps.size == 0:
        return False
    sparse = steps.size <= 25
    ax.plot(steps, mean, color=color, label=label, marker="o" if sparse else None, ms=3.5, lw=1.6)
    ok = np.isfinite(half)
    if ok.any():
        lo, hi = _bounds(key)
        low, high = np.clip((mean - half)[ok], lo, hi), np.clip((mean + half)[ok], lo, hi)
        ax.fill_between(steps[ok], low, high, color=color, alpha=0.18, lw=0)
    return True


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------------
# sections: each returns (figure or None, html fragment below the figure, notes)
# ----------------------------------------------------------------------------------------------------------
def _curves_section(cmp: Comparison, colors, panels: Sequence[tuple[str, str]], what: str):
    """Panels of ``(key, y label)`` against step, mean and 95 % band over seeds per method."""
    logged = {k for k, _ in panels if any(metric_series(r.rows, k)[0].size for rs in cmp.runs.values() for r in rs)}
    present = [(k, y) for k, y in panels if k in logged]
    missing = [k for k, _ in panels if k not in logged]
    notes = (
        [f"{what}: no run logged {', '.join(f'<code>{k}</code>' for k in missing)}; panel skipped."] if missing else []
    )
    if not present:
        return None, "", notes
    fig, axes = _figure(len(present))
    for ax, (key, ylabel) in zip(axes, present, strict=True):
        for method, runs in cmp.runs.items():
            _plot_band(ax, runs, key, colors[method], method)
        ax.set_xlabel("training step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.set_title(key, fontsize=10)
    _legend_top(fig, axes, ncol=6)
    return fig, "", notes


def _detail_of(run_or_base: dict[str, Any] | None) -> tuple[list[int], int] | None:
    if not run_or_base or "right" not in run_or_base or "samples" not in run_or_base:
        return None
    return [int(c) for c in run_or_base["right"]], int(run_or_base["samples"])


def _passk_points(detail: dict[str, Any] | None, eval_: dict[str, float]) -> dict[int, float]:
    """k -> pass@k: from per-problem counts (every power of two up to n, and n) or from the eval's pass@k keys."""
    counts = _detail_of(detail)
    if counts:
        right, n = counts
        ks = sorted({2**i for i in range(int(math.log2(n)) + 1)} | {n})
        return {int(k[5:]): v for k, v in passk_from_counts(right, n, ks).items()}
    return {int(k[5:]): float(v) for k, v in eval_.items() if re.fullmatch(r"pass@\d+", k)}


def _passk_section(cmp: Comparison, colors):
    """pass@k vs k: the evals' own pass@k keys (the numbers of the summary table), per-problem counts as fallback."""
    fig, (ax,) = _figure(1, height=3.8, width=8.5)
    notes = []
    base_pts = [p for p in (_passk_points(None, r.base_eval) for rs in cmp.runs.values() for r in rs) if p]
    if not base_pts and _detail_of(cmp.base):
        base_pts = [_passk_points(cmp.base, {})]
    curves = {"base": base_pts}
    curves.update(
        {
            m: [_passk_points(None, r.final_eval) or _passk_points(r.detail, {}) for r in rs]
            for m, rs in cmp.runs.items()
        }
    )
    for i, (name, pts) in enumerate(curves.items()):
        ks = sorted(set().union(*[set(p) for p in pts])) if pts else []
        if not ks:
            notes.append(f"pass@k: no pass@k for {html.escape(name)}.")
            continue
        stats = [mean_ci([p[k] for p in pts if k in p]) for k in ks]
        mean, half = np.array([s[0] for s in stats]), np.array([s[1] for s in stats])
        half = np.where(np.isfinite(half), half, 0.0)
        yerr = [mean - np.clip(mean - half, 0, 1), np.clip(mean + half, 0, 1) - mean]  # a probability stays in [0, 1]
        dodge = 2.0 ** (0.04 * (i - (len(curves) - 1) / 2))  # side by side, so the interval bars do not overlap
        color = BASE_COLOR if name == "base" else colors[name]
        ax.errorbar(
            np.array(ks) * dodge,
            mean,
            yerr=yerr,
            color=color,
            marker="o",
            ms=4,
            capsize=3,
            ls="--" if name == "base" else "-",
            label=name,
        )
    if not ax.lines:
        return None, "", notes
    ax.set_xscale("log", base=2)
    all_ks = sorted({k for pts in curves.values() for p in pts for k in p})
    ax.set_xticks(all_ks, [str(k) for k in all_ks])
    ax.minorticks_off()
    ax.set_xlabel("k (samples per problem)")
    ax.set_ylabel("pass@k (unbiased)")
    ax.set_title("pass@k of the final models vs the base", fontsize=10)
    fig.legend(loc="outside right upper", fontsize=9)
    return fig, "", notes


def _law_section(cmp: Comparison, colors):
    """Entropy vs accuracy per method with the fitted R = −a e^H + b."""

    def eval_steps(runs: Sequence[Run]) -> int:
        return len({row["step"] for r in runs for row in r.rows if "eval/pass@1" in row and "eval/entropy" in row})

    use_eval = all(eval_steps(rs) >= 3 for rs in cmp.runs.values())
    hkey, rkey = ("eval/entropy", "eval/pass@1") if use_eval else ("entropy/token_mean", "reward/accuracy")
    fig, (ax,) = _figure(1, height=4.0, width=8.5)
    rows, notes = [], []
    for method, runs in cmp.runs.items():
        h, r = [], []
        for run in runs:
            rs = [row for row in run.rows if hkey in row and rkey in row]
            h += [row[hkey] for row in rs]
            r += [row[rkey] for row in rs]
        if not h:
            continue
        ax.scatter(h, r, s=14, color=colors[method], alpha=0.6, label=method)
        try:
            law = fit_entropy_law(h, r)
        except ValueError as exc:
            notes.append(f"entropy law, {html.escape(method)}: not fitted ({html.escape(str(exc))}).")
            continue
        grid = np.linspace(min(h), max(h), 100)
        ax.plot(grid, law.predict(grid), color=colors[method], lw=1.6)
        rows.append((method, law))
    if not ax.collections:
        return None, "", [f"entropy law: no run logged <code>{hkey}</code> with <code>{rkey}</code>."]
    ax.set_xlabel(f"entropy H (nats), {hkey}")
    ax.set_ylabel(f"accuracy R, {rkey}")
    ax.set_title("entropy–performance: points and fitted R = −a·exp(H) + b", fontsize=10)
    fig.legend(loc="outside right upper", fontsize=9)
    table = _table(
        ["method", "a", "b", "R²", "ceiling b − a", "points"],
        [[m, f"{x.a:.3f}", f"{x.b:.3f}", _fmt(x.r2), f"{x.ceiling:.3f}", str(x.n)] for m, x in rows],
    )
    source = (
        "evaluation points (<code>eval/entropy</code>, <code>eval/pass@1</code>)"
        if use_eval
        else "training rollouts (<code>entropy/token_mean</code>, <code>reward/accuracy</code>), every step"
        " (some method has fewer than three eval steps)"
    )
    return fig, f"<p>Points: {source}, pooled over seeds. Least squares on (e<sup>H</sup>, 1).</p>{table}", notes


def _cov_section(cmp: Comparison, colors):
    has = any(metric_series(r.rows, "cov/logp_adv")[0].size for rs in cmp.runs.values() for r in rs)
    if not has:
        return None, "", ["Cov(log π, A): no run logged <code>cov/logp_adv</code>; section skipped."]
    has_pred = any(metric_series(r.rows, "entropy/predicted_delta")[0].size for rs in cmp.runs.values() for r in rs)
    fig, axes = _figure(2 if has_pred else 1)
    for method, runs in cmp.runs.items():
        _plot_band(axes[0], runs, "cov/logp_adv", colors[method], method)
    axes[0].axhline(0, color="grey", lw=0.8)
    axes[0].set_xlabel("training step")
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("Cov(log π, A) over tokens")
    axes[0].set_title("cov/logp_adv", fontsize=10)
    rows, notes = [], []
    if has_pred:
        ax = axes[1]
        preds = [v for rs in cmp.runs.values() for r in rs for v in metric_series(r.rows, "entropy/predicted_delta")[1]]
        scale_exp = math.floor(math.log10(max(abs(v) for v in preds))) if any(preds) else 0
        scale = 10.0**scale_exp  # the x values are drawn in units of 10^scale_exp, written in the axis label
        same_states = False
        for method, runs in cmp.runs.items():
            pred, obs = [], []
            for run in runs:
                p = dict(zip(*metric_series(run.rows, "entropy/predicted_delta"), strict=True))
                o = dict(zip(*metric_series(run.rows, "entropy/observed_delta"), strict=True))
                if o:  # re-measured on the same sequences after the update (what the prediction is about)
                    same_states = True
                    pairs = [(p[s], o[s]) for s in p if s in o]
                else:  # older runs: the next step's batch, which holds other prompts
                    h = dict(zip(*metric_series(run.rows, "entropy/token_mean"), strict=True))
                    pairs = [(p[s], h[s + 1] - h[s]) for s in p if s in h and s + 1 in h]
                pred += [a for a, _ in pairs]
                obs += [b for _, b in pairs]
            if not pred:
                continue
            ax.scatter(np.array(pred) / scale, obs, s=14, color=colors[method], alpha=0.6, label=method)
            corr = (
                float(np.corrcoef(pred, obs)[0, 1])
                if len(pred) > 2 and np.std(pred) > 0 and np.std(obs) > 0
                else math.nan
            )
            sign = float(np.mean(np.sign(pred) == np.sign(obs)))
            rows.append([method, str(len(pred)), _fmt(corr), f"{sign:.2f}"])
        ax.axhline(0, color="grey", lw=0.8)
        ax.axvline(0, color="grey", lw=0.8)
        unit = f" (×1e{scale_exp})" if scale_exp else ""
        ax.set_xlabel(f"predicted ΔH = −η·Cov(log π, A) at step t{unit}")
        ax.set_ylabel("observed ΔH, same sequences" if same_states else "ΔH = H(t+1) − H(t), next batch")
        ax.set_title("predicted vs observed entropy change", fontsize=10)
    else:
        notes.append("entropy change: no run logged <code>entropy/predicted_delta</code>; panel skipped.")
    _legend_top(fig, axes, ncol=6)
    text = ""
    if rows:
        text = (
            "<p>Observed ΔH pairs step t's prediction with the change of <code>entropy/token_mean</code> from the "
            "rollout of step t to that of step t + 1. The prediction uses the parameter learning rate as η, so "
            "its scale is arbitrary: read the sign and the correlation.</p>"
            + _table(["method", "pairs", "Pearson r", "sign agreement"], rows)
        )
    return fig, text, notes


def _support_section(cmp: Comparison, colors):
    base = _detail_of(cmp.base)
    if base is None:
        return None, "", ["Support change: no <code>base_eval.json</code> with per-problem right counts; skipped."]
    per_method: dict[str, list[Any]] = {}
    notes = []
    for method, runs in cmp.runs.items():
        for run in runs:
            if _detail_of(run.detail) is None:
                continue
            b_right, t_right = _aligned(cmp.base, run.detail)
            if b_right is None:
                notes.append(
                    f"support: {html.escape(method)} seed {run.seed} has other problems than the base; skipped."
                )
                continue
            nb, nt = int(cmp.base["samples"]), int(run.detail["samples"])
            per_method.setdefault(method, []).append(
                [support_change(b_right, t_right, nb, nt, k) for k in _ks(min(nb, nt))]
            )
    if not per_method:
        return None, "", [*notes, "Support change: no run has an <code>eval_detail.json</code>; skipped."]
    fig, (ax_bar, ax_k) = _figure(2, height=4.0, width=11.0)
    methods = list(per_method)
    x = np.arange(len(methods))
    rows = []
    for i, method in enumerate(methods):
        finals = [curve[-1] for curve in per_method[method]]
        e_mean, e_half = mean_ci([s.expanded for s in finals])
        s_mean, s_half = mean_ci([s.shrunk for s in finals])
        ax_bar.bar(i - 0.2, e_mean, 0.38, color=colors[method], yerr=_nz(e_half), capsize=3, label=method)
        ax_bar.bar(i + 0.2, -s_mean, 0.38, color=colors[method], alpha=0.45, hatch="//", yerr=_nz(s_half), capsize=3)
        ax_bar.scatter([i - 0.2] * len(finals), [s.expanded for s in finals], s=10, color="black", zorder=3)
        ax_bar.scatter([i + 0.2] * len(finals), [-s.shrunk for s in finals], s=10, color="black", zorder=3)
        ks = [s.k for s in per_method[method][0]]
        ax_k.plot(
            ks,
            [np.mean([c[j].expanded for c in per_method[method]]) for j in range(len(ks))],
            color=colors[method],
            marker="o",
            ms=3.5,
            label=method,
        )
        ax_k.plot(
            ks,
            [-np.mean([c[j].shrunk for c in per_method[method]]) for j in range(len(ks))],
            color=colors[method],
            marker="s",
            ms=3.5,
            ls="--",
        )
        rows.append(
            [method, str(finals[0].k)]
            + [
                _pm(*mean_ci([getattr(s, f) for s in finals]), digits=1)
                for f in ("preserved", "expanded", "shrunk", "out_of_support")
            ]
            + [_pm(*mean_ci([getattr(s, f) for s in finals])) for f in ("srr", "ndr", "nscr")]
        )
    ax_bar.axhline(0, color="grey", lw=0.8)
    long_names = len(methods) > 4 or sum(len(m) for m in methods) > 30
    ax_bar.set_xticks(x, methods, rotation=20 if long_names else 0, ha="right" if long_names else "center")
    ax_bar.set_ylabel("problems: expanded (+), shrunk (−)")
    ax_bar.set_title("at k = n; solid E, hatched S", fontsize=10)
    ax_k.axhline(0, color="grey", lw=0.8)
    ax_k.set_xscale("log", base=2)
    ax_k.set_xticks(ks, [str(k) for k in ks])
    ax_k.minorticks_off()
    ax_k.set_xlabel("budget k")
    ax_k.set_ylabel("expected problems: E (+), S (−)")
    ax_k.set_title("vs budget k; solid E, dashed S", fontsize=10)
    _legend_top(fig, [ax_bar], ncol=6)
    table = _table(["method", "k", "P", "E", "S", "O", "SRR", "NDR", "NSCR"], rows)
    text = (
        "<p>Per problem, at budget k: P both solve, E only the trained model, S only the base, O neither "
        "(“solves” = at least one of k samples right; expected counts from the unbiased pass@k, exact at k = n). "
        "SRR = P/(P+S), NDR = E/(P+E), NSCR = (E−S)/(P+E+S) (Wu et al., arXiv:2507.14843). Dots: seeds.</p>" + table
    )
    return fig, text, notes


def _aligned(base: dict[str, Any], detail: dict[str, Any]) -> tuple[list[int] | None, list[int] | None]:
    if "ids" in base and "ids" in detail:
        pos = {pid: i for i, pid in enumerate(detail["ids"])}
        common = [(i, pos[pid]) for i, pid in enumerate(base["ids"]) if pid in pos]
        return [base["right"][i] for i, _ in common], [detail["right"][j] for _, j in common]
    if len(base["right"]) != len(detail["right"]):
        return None, None
    return list(base["right"]), list(detail["right"])


def _ks(n: int) -> list[int]:
    return sorted({2**i for i in range(int(math.log2(n)) + 1)} | {n})


def _nz(half: float) -> float:
    return half if math.isfinite(half) else 0.0


# ----------------------------------------------------------------------------------------------------------
# summary table
# ----------------------------------------------------------------------------------------------------------
def _fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if x is not None and math.isfinite(x) else "–"


def _pm(mean: float, half: float, digits: int = 3) -> str:
    """ "m ± h" (just "m" without an interval)."""
    if not math.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f} ± {half:.{digits}f}" if math.isfinite(half) else f"{mean:.{digits}f}"


def summary_rows(cmp: Comparison) -> tuple[list[str], list[list[str]], list[list[bool]]]:
    """(header, rows, bold flags) of the summary table: base first, then each method."""
    finals = {m: [r.final_eval for r in rs] for m, rs in cmp.runs.items()}
    all_evals = [e for es in finals.values() for e in es]
    big_k = next((k for k in (16, 8, 4, 2) if all(f"pass@{k}" in e for e in all_evals)), None)
    maj = sorted({k for e in all_evals for k in e if k.startswith("maj@")}, key=lambda k: int(k[4:]))
    cols = ["pass@1", *([f"pass@{big_k}"] if big_k else []), *maj[-1:], "entropy"]
    labels = {"entropy": "token entropy (nats)"}
    has_answers = any(r.detail and "answers" in r.detail for rs in cmp.runs.values() for r in rs)
    header = ["method", "seeds"] + [labels.get(c, c) for c in cols] + (["answer entropy (nats)"] if has_answers else [])

    base_evals = [r.base_eval for rs in cmp.runs.values() for r in rs]
    base_row = ["base", "–"] + [_pm(*mean_ci([e.get(c, math.nan) for e in base_evals])) for c in cols]
    if has_answers:
        base_row.append(_fmt(mean_answer_entropy(cmp.base["answers"])) if cmp.base and "answers" in cmp.base else "–")
    rows, means = [base_row], []
    for method, evals in finals.items():
        stats = [mean_ci([e.get(c, math.nan) for e in evals]) for c in cols]
        row = [method, str(len(evals))] + [_pm(*s) for s in stats]
        if has_answers:
            ent = [
                mean_answer_entropy(r.detail["answers"]) for r in cmp.runs[method] if r.detail and "answers" in r.detail
            ]
            row.append(_pm(*mean_ci(ent)))
        rows.append(row)
        means.append([s[0] for s in stats])
    bold = [[False] * len(header) for _ in rows]
    for j, c in enumerate(cols):
        if c == "entropy":
            continue  # more entropy is not better in itself: not ranked
        col = [m[j] for m in means]
        if any(math.isfinite(v) for v in col):
            best = max(v for v in col if math.isfinite(v))
            for i, v in enumerate(col):
                bold[i + 1][j + 2] = v == best
    return header, rows, bold


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], bold: Sequence[Sequence[bool]] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cells = []
        for j, cell in enumerate(row):
            text = html.escape(cell)
            cells.append(f"<td><b>{text}</b></td>" if bold and bold[i][j] else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


# ----------------------------------------------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------------------------------------------
_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1280px; margin: 1.5em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; height: auto; display: block; margin: 0.4em 0; }
.note { color: #8a5300; font-size: 0.9em; margin: 0.2em 0; } .meta { color: #555; font-size: 0.9em; }
code { background: #f5f5f5; padding: 0 0.2em; }
"""


_CURVES = (  # (panels of (metric key, y label), section name) of the step-curve sections
    (
        [
            ("eval/pass@1", "pass@1 (test)"),
            ("reward/accuracy", "accuracy (train rollouts)"),
            ("entropy/token_mean", "token entropy (nats)"),
        ],
        "curves",
    ),
    ([("clip/frac_low", "fraction of tokens"), ("clip/frac_high", "fraction of tokens")], "clip"),
    ([("len/mean", "tokens"), ("len/truncated_frac", "fraction of samples")], "length"),
)
AGENT = (  # runs on a multi-turn environment (--env)
    [
        ("env/turns_mean", "model turns per episode"),
        ("env/tool_calls_mean", "tool calls per episode"),
        ("env/parse_errors_mean", "parse errors per episode"),
    ],
    "turns and tool calls",
)
HACKING = (  # runs trained on a reward model (--reward-model): the proxy against the gold verifier
    [
        ("reward/proxy_mean", "reward-model score"),
        ("reward/gold_mean", "verifier score (gold)"),
        ("reward/spurious_rate", "fraction with the spurious feature"),
        ("reward/starc_proxy_gold", "STARC distance proxy–gold"),
    ],
    "reward hacking",
)


def _grid_html(root: Path) -> str:
    """The grid's shared recipe, what was applied to every run, the fields that differ, and scale warnings."""
    info = _read_json(root / "grid.json")
    if not info:
        return ""
    out = f"<h3>Recipe</h3><p>Every run shares the recipe of <code>{html.escape(str(info['recipe']))}</code>.</p>"
    out += "".join(f'<p class="note">{html.escape(n)}</p>' for n in info.get("notes", []))
    diff = info.get("differences") or {}
    if diff:
        methods = list(next(iter(diff.values())))
        rows = [
            [k.removeprefix("options:"), *("–" if v[m] is None else str(v[m]) for m in methods)]
            for k, v in diff.items()
        ]
        out += "<p>Config fields that differ between runs (each from a method's own part):</p>"
        out += _table(["field", *methods], rows)
    warnings = []
    for sdir in sorted(root.glob("*/seed*")):
        for w in (_read_json(sdir / "scale_warnings.json") or {}).get("warnings", []):
            warnings.append(f"{sdir.parent.name}: {w}")
    for w in dict.fromkeys(warnings):  # once per method and text
        out += f'<p class="note">scale warning, {html.escape(w)}</p>'
    return out


def render_report(cmp_dir: str | Path, *, title: str | None = None) -> Path:
    """Render ``cmp_dir/report.html`` and ``cmp_dir/plots/*.png`` from a comparison folder; returns the HTML path.

    Sections: summary table · accuracy and entropy vs step · pass@k vs k · entropy–performance law ·
    Cov(log π, A) and predicted vs observed entropy change · clip fractions · response length · support change ·
    best-of-N vs the measured KL to the base (when the runs logged ``kl/seq_to_base``).
    A section whose inputs are missing is replaced by a note. See the module docstring for the files read.
    """
    cmp = load_comparison(cmp_dir)
    colors = method_colors(list(cmp.runs))
    plots = cmp.root / "plots"
    plots.mkdir(exist_ok=True)
    curves, clip, length = _CURVES
    sections = [
        (
            "curves",
            "Accuracy and entropy during training",
            lambda: _curves_section(cmp, colors, *curves),
            "Mean over seeds, shaded: 95 % t-interval. eval/pass@1 is measured every eval step on the test set "
            "(step 0 = base model); reward/accuracy and entropy on each step's training rollouts.",
        ),
        (
            "passk",
            "pass@k vs k",
            lambda: _passk_section(cmp, colors),
            "Unbiased pass@k of the final models (mean over seeds, bars: 95 % t-interval); dashed: the base model.",
        ),
        (
            "entropy_law",
            "Entropy–performance law",
            lambda: _law_section(cmp, colors),
            "Cui et al. (arXiv:2505.22617): R = −a·exp(H) + b, fitted per method; the ceiling is R at H = 0.",
        ),
        (
            "covariance",
            "Cov(log π, A) and the entropy change it predicts",
            lambda: _cov_section(cmp, colors),
            "First-order, natural policy gradient: ΔH ≈ −η·Cov(log π, A) (Cui et al., arXiv:2505.22617, Theorem 1).",
        ),
        (
            "clip",
            "Clip fractions",
            lambda: _curves_section(cmp, colors, *clip),
            "Fraction of tokens whose lower (A < 0) or upper (A > 0) ratio clip is active.",
        ),
        (
            "length",
            "Response length",
            lambda: _curves_section(cmp, colors, *length),
            "Mean response length (EOS included) and fraction of samples truncated at max_new_tokens.",
        ),
        ("support", "Support: expansion and shrinkage against the base", lambda: _support_section(cmp, colors), ""),
        (
            "best_of_n",
            "Best-of-N vs KL-regularised RL",
            lambda: bon_section(cmp, colors, _aligned, mean_ci, _table, _pm),
            "Yang et al. (arXiv:2404.01730): best-of-N from the base model has KL at most log N − (N−1)/N and "
            "win rate N/(N+1) (continuous reward). Dots: each run's final measured KL and its win rate over the "
            "base on the test problems (ties count half); dashed: best-of-N.",
        ),
    ]
    if any("reward/proxy_mean" in row for rs in cmp.runs.values() for r in rs for row in r.rows):
        sections.insert(
            1,
            (
                "hacking",
                "Reward hacking: proxy against gold",
                lambda: _curves_section(cmp, colors, *HACKING),
                "Runs trained on a reward model: its score (the proxy), the task's verifier on the same rollouts "
                "(gold) and the share of rollouts carrying the reward model's spurious feature.",
            ),
        )
    if any("env/turns_mean" in row for rs in cmp.runs.values() for r in rs for row in r.rows):
        sections.insert(
            1,
            (
                "agent",
                "Turns and tool calls",
                lambda: _curves_section(cmp, colors, *AGENT),
                "Multi-turn episodes (--env): model turns, valid tool calls (or moves) and turns whose action did "
                "not parse, per episode of each step's training rollouts.",
            ),
        )
    parts = []
    header, rows, bold = summary_rows(cmp)
    parts.append(
        "<h2>Summary (final evaluation)</h2><p>Mean ± half-width of the 95 % t-interval over seeds. "
        "Bold: the highest mean among the methods (entropy is not ranked). Answer entropy: Shannon entropy of the "
        "extracted final answers per prompt (format errors one shared answer), next to the token entropy.</p>"
        + _table(header, rows, bold)
        + _grid_html(cmp.root)
    )
    for name, heading, build, caption in sections:
        fig, text, sec_notes = build()
        body = "".join(f'<p class="note">{n}</p>' for n in sec_notes)
        if fig is not None:
            png = _png(fig)
            (plots / f"{name}.png").write_bytes(png)
            img = base64.b64encode(png).decode("ascii")
            body += f'<img id="plot-{name}" alt="{html.escape(heading)}" src="data:image/png;base64,{img}">'
        parts.append(f"<h2>{html.escape(heading)}</h2>" + (f"<p>{caption}</p>" if caption else "") + body + text)
    n_runs = sum(len(r) for r in cmp.runs.values())
    meta = f"{len(cmp.runs)} methods, {n_runs} runs: " + "; ".join(
        f"{html.escape(m)} (seeds {', '.join(str(r.seed) for r in rs)})" for m, rs in cmp.runs.items()
    )
    title = title or f"entrolab comparison: {cmp.root.name}"
    doc = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1><p class='meta'>{meta}</p>"
        + "".join(parts)
        + "</body></html>"
    )
    out = cmp.root / "report.html"
    out.write_text(doc, encoding="utf-8")
    return out


__all__ = ["Comparison", "Run", "load_comparison", "mean_ci", "render_report", "summary_rows", "t_quantile_975"]
