"""Loop parity: ``hf-freqkd distill`` against a plain PyTorch loop written to the research code's recipe.

    python benchmarks/bench_loop_parity.py --dataset ../shared/data/cifar10 --output-dir runs/bench/loop_parity

The same student architecture and initialisation (the CIFAR zoo's resnet8, timm's registry), the
same teacher (a resnet20 trained here with cross-entropy, once, by ``hf-freqkd train-teacher``),
the same images, schedule (SGD momentum 0.9, cosine per step, no warm-up), batch, weight decay and
losses, for ``ce`` (the student alone) and ``kd`` (0.1 CE + 0.9 KD at T 4), over several seeds. The
loop is mdistiller's recipe written out: torchvision's RandomCrop(32, padding=4) and
RandomHorizontalFlip on the PIL image, ToTensor, Normalize; ``SGD(model.parameters(), ...)`` (weight
decay on every parameter); no gradient clipping; KD as mdistiller computes it
(``kl_div(log_softmax(s/T), softmax(t/T), reduction="none").sum(1).mean() * T**2``). The library
runs with the settings docs/recipes.md maps to that recipe (``max_grad_norm: 0``, ``weight_decay_on:
all``). Target: for each method, the two means within one standard deviation of each other.

Writes ``results.md`` and ``results.json`` in ``--output-dir``; finished runs are reused when the
command is run again (each run's accuracy is stored as it finishes).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import hf_freqkd  # noqa: F401  registers the CIFAR zoo in timm
from hf_freqkd.data import load_image_dataset
from hf_freqkd.models import load_model, resolve_input_config
from hf_freqkd.run import run

#: the losses both sides train with: (hf_freqkd methods, loop weights (ce, kd))
METHODS = {
    "ce": ({"ce": {"weight": 1.0}}, (1.0, 0.0)),
    "kd": ({"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "temperature": 4.0}}, (0.1, 0.9)),
}
TEMPERATURE = 4.0


def recipe(args) -> dict:
    """The schedule and optimiser both sides use (configs/bench/cifar10.yaml's student recipe)."""
    return {
        "per_device_train_batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "weight_decay": 5e-4,
        "num_train_epochs": args.epochs,
    }


def library_run(args, method: str, seed: int, teacher: str, folder: Path) -> float:
    """Top-1 (%) of an ``hf-freqkd distill`` run (``ce``: the student alone, through the same command)."""
    values = {
        "output_dir": str(folder), "student_model": "resnet8", "dataset": args.dataset, "image_column": "img",
        "label_column": "label", "eval_split": "test", "image_size": 32, "augmentation": "crop_flip",
        "methods": METHODS[method][0], "optim": "sgd", "optim_args": "momentum=0.9", "lr_scheduler_type": "cosine",
        "max_grad_norm": 0.0, "weight_decay_on": "all", "eval_strategy": "no", "save_strategy": "no",
        "report_to": "none", "disable_tqdm": True, "seed": seed, "per_device_eval_batch_size": 256,
        "max_train_samples": args.max_train_samples, **recipe(args),
    }
    if method != "ce":
        values["teacher_model"] = teacher
    result = run("distill", defaults=values)
    return 100 * result.metrics["eval_accuracy"]


def loop_run(args, method: str, seed: int, teacher_folder: str) -> float:
    """Top-1 (%) of the plain loop: mdistiller's data pipeline, optimiser and KD loss."""
    from torch.utils.data import DataLoader
    from torchvision import transforms

    torch.manual_seed(seed)
    student = load_model("resnet8", num_classes=10)
    config = resolve_input_config(student)
    normalize = transforms.Normalize(config["mean"], config["std"])
    train_transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize])
    test_transform = transforms.Compose([transforms.ToTensor(), normalize])
    data = load_image_dataset(args.dataset)
    train = data["train"]
    if args.max_train_samples:
        # the library's seeded subset draws stratified by class; the same rows here
        from hf_freqkd.data.loading import seeded_subset

        train = seeded_subset(train, args.max_train_samples, seed, "label")

    def batches(rows, transform, shuffle, batch_size, generator=None):
        def collate(items):
            return torch.stack([transform(item["img"].convert("RGB")) for item in items]), torch.tensor([item["label"] for item in items])

        return DataLoader(rows, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=generator, drop_last=False)

    generator = torch.Generator().manual_seed(seed)
    loader = batches(train, train_transform, True, args.batch_size, generator)
    teacher = load_model(teacher_folder).eval() if method != "ce" else None
    optimizer = torch.optim.SGD(student.parameters(), lr=args.learning_rate, momentum=0.9, weight_decay=5e-4)
    total_steps = args.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total_steps)))
    ce_weight, kd_weight = METHODS[method][1]
    student.train()
    for _ in range(args.epochs):
        for images, labels in loader:
            logits = student(images)
            loss = ce_weight * F.cross_entropy(logits, labels)
            if teacher is not None:
                with torch.no_grad():
                    teacher_logits = teacher(images)
                log_student = F.log_softmax(logits / TEMPERATURE, dim=1)
                kd = F.kl_div(log_student, F.softmax(teacher_logits / TEMPERATURE, dim=1), reduction="none").sum(1).mean()
                loss = loss + kd_weight * kd * TEMPERATURE**2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    student.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in batches(data["test"], test_transform, False, 256):
            correct += (student(images).argmax(1) == labels).sum().item()
    return 100 * correct / len(data["test"])


def train_teacher(args, folder: Path) -> str:
    if not (folder / "student" / "config.json").is_file():
        values = {
            "output_dir": str(folder), "student_model": "resnet20", "dataset": args.dataset, "image_column": "img",
            "label_column": "label", "eval_split": "test", "image_size": 32, "augmentation": "crop_flip",
            "optim": "sgd", "optim_args": "momentum=0.9", "lr_scheduler_type": "cosine", "max_grad_norm": 0.0,
            "weight_decay_on": "all", "eval_strategy": "no", "save_strategy": "no", "report_to": "none",
            "disable_tqdm": True, "seed": 0, "per_device_eval_batch_size": 256, "max_train_samples": args.max_train_samples,
            **recipe(args), "num_train_epochs": args.teacher_epochs,
        }
        print(f"teacher: training resnet20 for {args.teacher_epochs} epochs", flush=True)
        run("teacher", defaults=values)
    return str(folder / "student")


def table(results: dict) -> str:
    lines = ["| method | hf-freqkd top-1 (%) | plain loop top-1 (%) | difference | within one std |", "|---|---:|---:|---:|---|"]
    for method in METHODS:
        library = [results[f"{method}/library/{seed}"] for seed in results["seeds"] if f"{method}/library/{seed}" in results]
        loop = [results[f"{method}/loop/{seed}"] for seed in results["seeds"] if f"{method}/loop/{seed}" in results]
        if len(library) < 2 or len(loop) < 2:
            continue
        mean_library, mean_loop = statistics.mean(library), statistics.mean(loop)
        std = max(statistics.stdev(library), statistics.stdev(loop))
        lines.append(
            f"| {method} | {mean_library:.2f} +- {statistics.stdev(library):.2f} | {mean_loop:.2f} +- {statistics.stdev(loop):.2f} "
            f"| {mean_library - mean_loop:+.2f} | {'yes' if abs(mean_library - mean_loop) <= std else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="uoft-cs/cifar10", help="a Hub id or a local copy in its parquet layout")
    parser.add_argument("--output-dir", default="runs/bench/loop_parity")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--teacher-epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--max-train-samples", type=int, default=None)
    args = parser.parse_args(argv)

    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    results_file = output / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    results["seeds"] = args.seeds
    teacher = train_teacher(args, output / "teacher") if any(m != "ce" for m in args.methods) else ""
    for seed in args.seeds:
        for method in args.methods:
            for side in ("library", "loop"):
                key = f"{method}/{side}/{seed}"
                if key in results:
                    continue
                start = time.perf_counter()
                if side == "library":
                    accuracy = library_run(args, method, seed, teacher, output / f"{method}_seed{seed}")
                else:
                    accuracy = loop_run(args, method, seed, teacher)
                results[key] = accuracy
                results_file.write_text(json.dumps(results, indent=2))
                print(f"{key}: {accuracy:.2f} % ({time.perf_counter() - start:.0f} s)", flush=True)
    report = table(results)
    (output / "results.md").write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
