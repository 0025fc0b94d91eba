"""Where DebiasPL acts in a run, class by class over training: q_hat, the pseudo-labels' class shares
before and after debiasing, and the mask rate per pseudo-label class, against the true shares.

Reads what the drift hook logged (metrics.jsonl, and the TensorBoard histogram of the labels before
debiasing), so the runs need `hooks: [{name: drift}]`, as `experiments/cifar10lt_mini.yaml` has.

    python benchmarks/debiasing_trace.py RUN [RUN ...] [--every 1024] [--figure OUT.png] [--json OUT.json]

Prints one table per run and step; the figure has one row per run: q_hat per class over steps, the
shares at the last interval (truth, before, after debiasing), and the mask rate per class over steps.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from debiaspl.metrics.plots import save_figure  # noqa: E402


def read_trace(run: Path) -> dict:
    """{class_names, true_share [C], steps [S], q_hat [S, C], share [S, C], raw_share [S, C], mask_rate [S, C]}.

    q_hat at a drift step is the last value logged at or before it (it is logged every log_interval steps).
    """
    info = json.loads((run / "run_info.json").read_text())
    names, counts = info["class_names"], np.array(info["unlabeled_counts"], dtype=float)
    drift: dict[int, dict] = {}
    marginal: dict[int, list[float]] = {}  # logged every logging.log_interval steps
    for line in (run / "metrics.jsonl").read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if f"drift/pseudo_share/{names[0]}" in entry:
            drift.setdefault(entry["step"], {}).update(entry)
        if f"pseudo/class_marginal/{names[0]}" in entry:
            marginal[entry["step"]] = [entry[f"pseudo/class_marginal/{name}"] for name in names]
    steps = sorted(drift)
    if not steps:
        raise SystemExit(f"{run}: no drift statistics in metrics.jsonl (train with the drift hook)")
    raw = _raw_shares(run)
    logged = sorted(marginal)

    def latest_marginal(step: int) -> list[float]:
        before = [s for s in logged if s <= step]
        return marginal[before[-1]] if before else [np.nan] * len(names)

    def matrix(prefix: str) -> np.ndarray:
        return np.array([[drift[step].get(f"{prefix}/{name}", np.nan) for name in names] for step in steps])

    return {"run": str(run), "class_names": names, "true_share": counts / counts.sum(), "steps": steps,
            "q_hat": np.array([latest_marginal(step) for step in steps]), "share": matrix("drift/pseudo_share"),
            "raw_share": np.array([raw.get(step, [np.nan] * len(names)) for step in steps]),
            "mask_rate": matrix("drift/mask_rate")}


def _raw_shares(run: Path) -> dict[int, list[float]]:
    """step -> class shares of the argmax of the raw weak view over the drift interval ending there."""
    shares = {}
    for events in sorted(run.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"histograms": 0, "scalars": 1, "images": 1})
        accumulator.Reload()
        if "drift/pseudo_labels_before_debiasing" not in accumulator.Tags()["histograms"]:
            continue
        for event in accumulator.Histograms("drift/pseudo_labels_before_debiasing"):
            counts = np.array(event.histogram_value.bucket, dtype=float)
            shares[event.step] = (counts / max(counts.sum(), 1)).tolist()
    return shares


def print_trace(trace: dict, every: int) -> None:
    names = trace["class_names"]
    print(f"\n{trace['run']}")
    for row, step in enumerate(trace["steps"]):
        if step % every and row != len(trace["steps"]) - 1:
            continue
        print(f"  step {step}: {'class':>12s} {'true':>7s} {'q_hat':>7s} {'raw':>7s} {'debiased':>9s} {'mask':>7s}")
        for c, name in enumerate(names):
            print(f"  {'':{len(str(step)) + 6}s} {name[:12]:>12s} {trace['true_share'][c]:7.3f} {trace['q_hat'][row, c]:7.3f} "
                  f"{trace['raw_share'][row, c]:7.3f} {trace['share'][row, c]:9.3f} {trace['mask_rate'][row, c]:7.3f}")


def trace_figure(traces: list[dict]):
    figure, axes = plt.subplots(len(traces), 3, figsize=(15, 3.6 * len(traces)), squeeze=False)
    colours = plt.cm.viridis(np.linspace(0, 0.95, len(traces[0]["class_names"])))
    for row, trace in enumerate(traces):
        names, steps = trace["class_names"], trace["steps"]
        label = Path(trace["run"]).name
        for c, name in enumerate(names):
            axes[row, 0].plot(steps, trace["q_hat"][:, c], color=colours[c], label=name)
            axes[row, 0].axhline(trace["true_share"][c], color=colours[c], linestyle=":", linewidth=0.8)
            axes[row, 2].plot(steps, trace["mask_rate"][:, c], color=colours[c], label=name)
        axes[row, 0].set(title=f"{label}: q_hat per class (dotted: true share)", xlabel="step", yscale="log")
        x = np.arange(len(names))
        for offset, (values, what) in zip((-0.27, 0, 0.27), ((trace["true_share"], "true"),
                                                            (trace["raw_share"][-1], "raw weak-view argmax"),
                                                            (trace["share"][-1], "pseudo-labels (debiased)"))):
            axes[row, 1].bar(x + offset, values, width=0.27, label=what)
        axes[row, 1].set(title=f"class shares, drift interval ending at step {steps[-1]}", xticks=x)
        axes[row, 1].set_xticklabels(names, rotation=45, ha="right")
        axes[row, 1].legend(fontsize=8)
        axes[row, 2].set(title="mask rate per pseudo-label class", xlabel="step", ylim=(0, 1))
        axes[row, 2].legend(fontsize=7, ncol=2)
    figure.tight_layout()
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--every", type=int, default=1024, help="print the steps that are multiples of this (and the last)")
    parser.add_argument("--figure", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    traces = [read_trace(run) for run in args.runs]
    for trace in traces:
        print_trace(trace, args.every)
    if args.figure:
        save_figure(trace_figure(traces), args.figure)
    if args.json:
        args.json.write_text(json.dumps([{key: value.tolist() if isinstance(value, np.ndarray) else value
                                          for key, value in trace.items()} for trace in traces], indent=1) + "\n")


if __name__ == "__main__":
    main()
