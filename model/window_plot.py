"""The precision-recall picture of ``glass-inspect evaluate-windows --plot``: each network's
curve (:func:`model.window_eval.pr_curve`) with its operating point marked, each baseline as the
one point its tuned rule gives, and the issue's targets as guides (recall 0.85; the F1 = 0.90
contour). A person comparing two classifiers sees at a glance whether one curve lies above the
other or both are one curve at two operating points."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TARGET_RECALL = 0.85
TARGET_F1 = 0.90


def plot_pr(results: dict[str, dict], path: str | Path, title: str = "") -> Path:
    """Write the picture of ``results`` (``evaluate_windows``' output) to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    try:
        r = np.linspace(0.5, 1.0, 200)
        p_f1 = TARGET_F1 * r / (2 * r - TARGET_F1)  # precision giving F1 = target at recall r
        ok = (p_f1 > 0) & (p_f1 <= 1)
        ax.plot(r[ok], p_f1[ok], ":", color="grey", lw=1, label=f"F1 = {TARGET_F1:.2f}")
        ax.axvline(TARGET_RECALL, ls="--", color="grey", lw=1, label=f"recall {TARGET_RECALL}")
        for name, res in results.items():
            pts = [c for c in res.get("curve", ()) if c["precision"] is not None]
            if pts:
                line, = ax.plot([c["recall"] for c in pts], [c["precision"] for c in pts],
                                "-", lw=1.5, label=name)
                ax.plot(res["recall"], res["precision"], "o", color=line.get_color(), ms=7)
            elif res.get("precision") is not None:  # a baseline, or a network without curve
                base = bool(res.get("baseline"))
                ax.plot(res["recall"], res["precision"], "s" if base else "o", ms=7,
                        label=f"{name} (baseline)" if base else name)
        ax.set_xlabel("recall (scratch windows found)")
        ax.set_ylabel("precision (flagged windows that hold a scratch)")
        ax.set_xlim(0.5, 1.0)
        ax.set_ylim(0.4, 1.005)
        ax.grid(alpha=0.3)
        ax.set_title(title or "windows: precision against recall (dot: operating point)",
                     fontsize=10)
        ax.legend(fontsize=8, loc="lower left")
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110, bbox_inches="tight")
        return out
    finally:
        plt.close(fig)
