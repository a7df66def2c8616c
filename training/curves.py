"""The training-curves figure curves.png, drawn from a run's metrics.jsonl alone (so it can be redrawn for
any run, finished or not): loss, FVU, L0, dead / dense latents, spliced fidelity, feature density."""
import json
import os


def plot_curves(run_dir, title=""):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))

    def curve(ax, rows, key, label, **kw):
        pts = [(r["tokens"], r[key]) for r in rows if r.get(key) is not None]
        if pts:  # a lone point (short runs log once) still shows: marker unless the caller chose one
            ax.plot(*zip(*pts), label=label, **({"marker": ".", **kw} if len(pts) == 1 else kw))

    ax = axes[0, 0]
    curve(ax, train, "loss", "train loss")
    curve(ax, train, "recon_mse", "train recon mse (normalised space)")
    ax.set_yscale("log"), ax.set_title("training loss")
    ax = axes[0, 1]
    curve(ax, evals, "fvu", "eval FVU", marker="o")
    ax.set_title("FVU (held-out, centred)")
    ax = axes[0, 2]
    curve(ax, train, "l0", "train L0")
    curve(ax, evals, "l0", "eval L0", marker="o")
    ax.set_title("L0 (active latents per token)")
    ax = axes[1, 0]
    curve(ax, evals, "dead_frac", "dead (training window)", marker="o")
    curve(ax, evals, "dense_frac", "dense (> 1% of tokens)", marker="o")
    ax.set_title("dead / dense latents (fraction)")
    ax = axes[1, 1]
    curve(ax, evals, "score_vs_clean", "vs clean output", marker="o")
    curve(ax, evals, "score_vs_gt", "vs ground truth", marker="o")
    ax.set_title("spliced fidelity (1 = clean, 0 = mean-ablated)")
    for ax in axes.flat[:5]:
        if ax.get_legend_handles_labels()[0]:  # no curves (e.g. fidelity=False): no empty-legend warning
            ax.legend(fontsize=8)
    ax = axes[1, 2]
    if evals:
        edges, counts = evals[-1]["density_edges"], evals[-1]["density_counts"]
        ax.stairs(counts, edges)
        ax.set_xlabel("log10 firing frequency (last eval; never-firing at the left edge)")
    ax.set_title("feature density")
    for ax in axes.flat[:5]:
        ax.set_xlabel("training tokens")
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))  # 4e7, not 40000000 run together
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(os.path.join(run_dir, "curves.png"), dpi=100)
    plt.close(fig)
