"""Compare strategies on the default non-IID config, mean over seeds; writes docs/results.md and docs/results.png.

Usage: .venv/bin/python benchmarks/compare.py [--seeds 0 1 2] [--strategies ...] [--out runs/compare]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from fedpilot.config import load_config
from fedpilot.simulation import run_simulation

STRATEGIES = ["fedpilot", "fedpilot-noig", "fedpilot-nostagg", "fedpilot-additive", "exclusive", "fedavg"]
COMMAND = "make install && .venv/bin/python " + " ".join(sys.argv)


def summarise(results: dict) -> dict[str, float]:
    rounds = results["rounds"]
    trained = [r for r in rounds[1:]]
    ratios = [c["peak_bytes"] / c["budget_bytes"] for r in trained for c in r["clients"] if c["budget_bytes"]]
    return {
        "final": rounds[-1]["accuracy"],
        "best": max(r["accuracy"] for r in rounds),
        "f1": rounds[-1]["macro_f1"],
        "clients": statistics.mean(len(r["clients"]) for r in trained),
        "modules": statistics.mean(len(c["modules"]) for r in trained for c in r["clients"]),
        "violations": len(results["budget_violations"]),
        "worst_ratio": max(ratios, default=0.0),
        "upload_mib": statistics.mean(r["upload_bytes"] for r in trained) / 2**20,
        "seconds": results["wall_seconds"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES)
    parser.add_argument("--out", type=Path, default=Path("runs/compare"))
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    parser.add_argument("--clients-per-round", type=int, help="sample this many clients a round (default: all)")
    args = parser.parse_args()

    base = load_config()
    if args.clients_per_round:
        base = base.model_copy(
            update={"federation": base.federation.model_copy(update={"clients_per_round": args.clients_per_round})}
        )
    summaries: dict[str, list[dict[str, float]]] = {}
    curves: dict[str, list[list[float]]] = {}
    for strategy in args.strategies:
        for seed in args.seeds:
            config = base.model_copy(update={"strategy": strategy, "seed": seed})
            result = run_simulation(config, args.out / f"{strategy}-seed{seed}", progress=False)
            summary = summarise(result.results)
            summaries.setdefault(strategy, []).append(summary)
            curves.setdefault(strategy, []).append([r["accuracy"] for r in result.rounds])
            print(f"{strategy:18s} seed {seed}: final {summary['final']:.3f}, best {summary['best']:.3f}, "
                  f"violations {summary['violations']}, {summary['seconds']:.0f} s", flush=True)

    args.docs.mkdir(parents=True, exist_ok=True)
    write_table(args.docs / "results.md", base, summaries, args.seeds)
    plot_curves(args.docs / "results.png", curves)
    print(f"wrote {args.docs / 'results.md'} and {args.docs / 'results.png'}")
    return 0


BEGIN, END = "<!-- results:begin (written by benchmarks/compare.py) -->", "<!-- results:end -->"


def write_table(path: Path, base, summaries: dict[str, list[dict[str, float]]], seeds: list[int]) -> None:
    """Write the generated block of ``path``; text outside its markers (the findings) is kept."""
    tiers = ", ".join(f"{t.fraction:.0%} at {t.memory >> 20} MiB" for t in base.federation.budgets.tiers)
    lines = [
        BEGIN,
        f"Default config (`fedpilot/configs/default.yaml`): {base.model.name}, LoRA r={base.model.lora.rank} on "
        f"{'/'.join(base.model.lora.targets)}, BBC News, {base.federation.num_clients} clients, "
        f"Dirichlet({base.data.partition.alpha}) labels, {base.federation.rounds} rounds x {base.train.local_steps} "
        f"local steps, batch {base.train.batch_size}, sequence {base.data.max_length}; memory tiers {tiers}; "
        f"{base.federation.clients_per_round or base.federation.num_clients} clients sampled per round. "
        f"Mean over seeds {', '.join(map(str, seeds))} (± is the standard deviation).",
        "",
        f"Made by: `{COMMAND}` (2 CPU cores).",
        "",
        "| strategy | final accuracy | best accuracy | final macro-F1 | clients / round | modules / client | budget violations | worst peak / budget | upload MiB / round | wall s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for strategy, runs in summaries.items():
        def mean(key: str) -> float:
            return statistics.mean(r[key] for r in runs)

        spread = statistics.stdev(r["final"] for r in runs) if len(runs) > 1 else 0.0
        lines.append(
            f"| `{strategy}` | {mean('final'):.3f} ± {spread:.3f} | {mean('best'):.3f} | {mean('f1'):.3f} | {mean('clients'):.1f} | "
            f"{mean('modules'):.1f} | {sum(r['violations'] for r in runs)} | {max(r['worst_ratio'] for r in runs):.2f} | "
            f"{mean('upload_mib'):.2f} | {mean('seconds'):.0f} |"
        )
    lines += [
        "",
        "Budget violations count client-rounds whose measured peak (read at the allocator) exceeded the client's budget;",
        "`fedavg` is the memory-unaware reference: every client trains full LoRA whatever its budget.",
        "",
        "![accuracy per round](results.png)",
        END,
    ]
    block = "\n".join(lines)
    text = path.read_text() if path.is_file() else f"# Strategy comparison\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = f"{text.rstrip()}\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    path.write_text(head + block + rest.split(END, 1)[1])


def plot_curves(path: Path, curves: dict[str, list[list[float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(8, 4.5))
    for strategy, runs in curves.items():
        mean = [statistics.mean(values) for values in zip(*runs)]
        axis.plot(range(len(mean)), mean, marker="o", label=strategy, linestyle="--" if strategy in ("fedavg", "exclusive") else "-")
    axis.set(xlabel="round", ylabel="test accuracy (mean over seeds)", ylim=(0, 1.02), title="Strategies on heterogeneous-memory clients")
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
