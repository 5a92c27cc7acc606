"""FiGKD ablation on the offline digits data: every option methods.md leaves open, against ce, kd, dkd.

    python scripts/ablate_figkd.py --output-dir runs/ablate_figkd --seeds 0 1 2

One teacher (CIFAR-form resnet20, trained once on the 1,347 training digits) and, per variant and
seed, the student of the demo (resnet8, 16 px) trained on a 200-image transfer set with the same
schedule. Writes ``ablation.md`` (mean +- std top-1 over seeds), ``ablation.csv`` (every run) and
``ablation.png`` (bar chart with error bars) into the output folder.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

from hf_freqkd.demo import COMMON, DEMO_STUDENT, DEMO_TEACHER, STUDENT_RUN, TEACHER_RUN
from hf_freqkd.run import run

# name -> methods; every FiGKD variant changes one option of the default.
VARIANTS: dict[str, dict] = {
    "ce (student alone)": {"ce": {}},
    "kd": {"ce": {"weight": 0.1}, "kd": {"weight": 0.9}},
    "dkd": {"ce": {}, "dkd": {}},
    "figkd (default: haar, J=1, high, highpass_kl)": {"ce": {}, "figkd": {}},
    "figkd bands=low": {"ce": {}, "figkd": {"bands": "low"}},
    "figkd bands=all (= KD)": {"ce": {}, "figkd": {"bands": "all"}},
    "figkd levels=2": {"ce": {}, "figkd": {"levels": 2}},
    "figkd levels=3": {"ce": {}, "figkd": {"levels": 3}},
    "figkd wavelet=db2": {"ce": {}, "figkd": {"wavelet": "db2"}},
    "figkd target=coef_kl": {"ce": {}, "figkd": {"target": "coef_kl"}},
    "figkd target=coef_mse": {"ce": {}, "figkd": {"target": "coef_mse"}},
    "figkd class_order=teacher_sorted": {"ce": {}, "figkd": {"class_order": "teacher_sorted"}},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="runs/ablate_figkd")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), metavar="NAME")
    parser.add_argument("--student-epochs", type=float, default=STUDENT_RUN["num_train_epochs"])
    parser.add_argument("--transfer-rows", type=int, default=STUDENT_RUN["max_train_samples"])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output = Path(args.output_dir)
    if output.exists() and any(output.iterdir()):
        print(f"error: output folder '{output}' is not empty; choose another --output-dir", file=sys.stderr)
        return 2
    teacher = run("teacher", defaults={**COMMON, **TEACHER_RUN, "seed": 0, "output_dir": str(output / "teacher")})
    print(f"teacher {DEMO_TEACHER}: top-1 {100 * teacher.metrics['eval_accuracy']:.2f}")

    rows = []
    for name in args.variants:
        for seed in args.seeds:
            start = time.perf_counter()
            result = run(
                "distill",
                defaults={
                    **COMMON,
                    **STUDENT_RUN,
                    "num_train_epochs": args.student_epochs,
                    "max_train_samples": args.transfer_rows,
                    "seed": seed,
                    "methods": VARIANTS[name],
                    "teacher_model": teacher.export_dir,
                    "output_dir": str(output / "runs" / f"{len(rows):03d}"),
                },
            )
            rows.append({"variant": name, "seed": seed, "top1": 100 * result.metrics["eval_accuracy"], "seconds": time.perf_counter() - start})
            print(f"{name:48s} seed {seed}: top-1 {rows[-1]['top1']:.2f}", flush=True)

    with open(output / "ablation.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["variant", "seed", "top1", "seconds"])
        writer.writeheader()
        writer.writerows(rows)
    summary = summarise(rows, args.variants)
    table = markdown_table(summary, teacher.metrics["eval_accuracy"], args)
    (output / "ablation.md").write_text(table + "\n")
    plot(summary, output / "ablation.png")
    print(table)
    return 0


def summarise(rows: list[dict], variants: list[str]) -> list[tuple[str, float, float, int]]:
    summary = []
    for name in variants:
        values = [row["top1"] for row in rows if row["variant"] == name]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        summary.append((name, statistics.mean(values), spread, len(values)))
    return summary


def markdown_table(summary, teacher_accuracy: float, args: argparse.Namespace) -> str:
    lines = [
        f"Digits, teacher {DEMO_TEACHER} ({100 * teacher_accuracy:.2f} % top-1), student {DEMO_STUDENT} on "
        f"{args.transfer_rows} transfer images, {args.student_epochs:g} epochs, seeds {' '.join(map(str, args.seeds))}.",
        "",
        "| variant | top-1 (%) mean +- std | runs |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {mean:.2f} +- {spread:.2f} | {count} |" for name, mean, spread, count in summary]
    return "\n".join(lines)


def plot(summary, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name, *_ in summary]
    means = [mean for _, mean, _, _ in summary]
    spreads = [spread for _, _, spread, _ in summary]
    colors = ["#999999" if not name.startswith("figkd") else "#1f77b4" for name in names]
    figure, axis = plt.subplots(figsize=(9, 0.45 * len(names) + 1.5))
    axis.barh(range(len(names)), means, xerr=spreads, color=colors, capsize=3)
    axis.set_yticks(range(len(names)), names)
    axis.invert_yaxis()
    low = min(m - s for m, s in zip(means, spreads))
    axis.set_xlim(max(0.0, low - 5), min(100.0, max(m + s for m, s in zip(means, spreads)) + 2))
    axis.set_xlabel("top-1 accuracy on the digits test split (%)")
    axis.set_title("FiGKD ablation (mean +- std over seeds)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
