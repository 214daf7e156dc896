"""Run every benchmark and rewrite benchmarks/RESULTS.md.

    python benchmarks/run_all.py --repeats 3 --e2e-repeats 1  # full sizes
    python benchmarks/run_all.py --quick    # small sizes, a smoke test of the machinery

Each benchmark runs in a fresh Python process (TensorFlow and coffea keep process-wide state,
and peak memory must be measured per process) and returns a JSON dict; every comparison inside
a benchmark measures both sides in the same run, so the ratios are what to read: absolute times
vary from machine to machine. Each figure is the median over ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

CHILD = """
import json, sys
sys.path.insert(0, {here!r})
import {module} as bench
result = bench.run(**json.loads(sys.argv[1]))
print("@@RESULT@@" + json.dumps(result, default=float))
"""


def run_child(module: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Run ``module.run(**kwargs)`` in a fresh interpreter and return its dict."""
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD.format(here=str(HERE), module=module), json.dumps(kwargs)],
        capture_output=True, text=True, env=env, cwd=REPO,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            return json.loads(line[len("@@RESULT@@"):])
    raise RuntimeError(f"benchmark {module} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def repeated(module: str, kwargs: dict[str, Any], repeats: int) -> list[dict[str, Any]]:
    return [run_child(module, kwargs) for _ in range(repeats)]


def median_of(results: list[dict[str, Any]], *keys: str) -> float:
    values = []
    for r in results:
        node: Any = r
        for k in keys:
            node = node[k]
        values.append(float(node))
    return statistics.median(values)


def end_to_end(repeats: int, epochs: int | None) -> dict[str, Any]:
    """Wall time of ``fedhex-hep run`` on the shipped demo grid with the default config."""
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "fedhex_hep.cli", "run", "--output-dir", tmp, "--no-progress"]
            if epochs:
                cmd += ["--epochs", str(epochs)]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            times.append(time.perf_counter() - t0)
            if proc.returncode != 0:
                raise RuntimeError(f"fedhex-hep run failed:\n{proc.stderr[-3000:]}")
    return {"seconds": statistics.median(times), "all_seconds": times, "epochs": epochs}


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("fedhex-hep", "tensorflow", "tensorflow-probability", "tf-keras", "coffea", "uproot", "awkward", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        import psutil

        mem = f", {psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    except ImportError:
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def _header(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Title, provenance, machine, load and versions, then the table's head."""
    e2e = results["e2e"]
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `python benchmarks/run_all.py{' --quick' if args.quick else ''} --repeats {args.repeats}"
        f"{f' --e2e-repeats {args.e2e_repeats}' if args.e2e_repeats else ''}` "
        f"on {results.get('measured_utc', f'{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M}')} UTC. Each figure is the median over "
        f"{args.repeats} run(s) ({len(e2e['all_seconds'])} for the end-to-end run); both sides of every "
        "comparison ran in the same run, so read the ratios."
        + (" Rendered with `--from-raw` from a raw results file; the stages it held were not rerun." if args.from_raw else ""),
        "",
        f"Machine: {machine()}",
        "",
        "Load average (1 min) when each stage started: "
        + ", ".join(f"{k} {v:.1f}" for k, v in results.get("load", {}).items())
        + f" (on {os.cpu_count()} cores: other jobs shared the machine; timings are noisy, the ratios less so).",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
        "",
        "| stage | measure | ours | baseline | ratio (ours / baseline) | goal | met |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    return lines

def _extract_rows(ex: list[dict[str, Any]]) -> list[str]:
    """Extraction speed per executor against a plain uproot read."""
    lines = []
    raw = median_of(ex, "events_per_s", "raw_uproot")
    for executor in ("iterative", "futures"):
        ours = median_of(ex, "events_per_s", executor)
        ratio = median_of(ex, f"ratio_{executor}_vs_raw")
        lines.append(
            f"| extract ({ex[0]['events']:,} events, {executor}) | events/s | {ours:,.0f} | {raw:,.0f} (plain uproot read + selection) "
            f"| {ratio:.2f}x | >= 0.5x | {'yes' if ratio >= 0.5 else 'no'} |"
        )
    return lines

def _train_rows(tr: list[dict[str, Any]], td: list[dict[str, Any]] | None) -> list[str]:
    """Training speed and loss against the Keras reference implementation."""
    lines = []
    arch = f"{tr[0]['architecture']}, {tr[0]['events_train']:,} events, {tr[0]['epochs']} epochs"
    ours = median_of(tr, "ours_events_per_s_per_epoch")
    keras = median_of(tr, "keras_fit_events_per_s_per_epoch")
    ratio = median_of(tr, "ratio")
    lines.append(
        f"| train ({arch}) | events/s per epoch, steady state (after the first epoch) "
        f"| {ours:,.0f} | {keras:,.0f} (reference implementation (unfused): Keras `model.fit` on the same flow, TFP's `log_prob`) "
        f"| {ratio:.2f}x | >= 2x | {'yes' if ratio >= 2 else 'no'} |"
    )
    same = median_of(tr, "keras_fit_same_log_prob_events_per_s_per_epoch")
    ratio_same = median_of(tr, "ratio_vs_keras_same_log_prob")
    lines.append(
        f"| train | events/s per epoch, steady state | {ours:,.0f} | {same:,.0f} (Keras `model.fit` given our one-pass "
        f"`ConditionalFlow.log_prob`: the training loop alone) | {ratio_same:.2f}x | (for information) | |"
    )
    ours_all = median_of(tr, "ours_events_per_s_incl_first_epoch")
    keras_all = median_of(tr, "keras_fit_events_per_s_incl_first_epoch")
    lines.append(
        f"| train | events/s over all epochs, first epoch (graph tracing) included "
        f"| {ours_all:,.0f} | {keras_all:,.0f} (reference implementation) | {median_of(tr, 'ratio_incl_first_epoch'):.2f}x | (for information) | |"
    )
    lines.append(
        f"| train | first epoch (graph tracing) | {median_of(tr, 'ours_first_epoch_s'):.2f} s "
        f"| {median_of(tr, 'keras_fit_first_epoch_s'):.2f} s (reference implementation) | | | |"
    )
    lines.append(
        f"| train | whole call: `train()` with its model files and plot vs `model.fit()` alone | {median_of(tr, 'ours_total_s'):.1f} s "
        f"| {median_of(tr, 'keras_fit_total_s'):.1f} s (reference implementation) | {median_of(tr, 'ratio_whole_call'):.2f}x (speed) | (for information) | |"
    )
    if td:
        n_threads = td[0]["intra_op_threads_both_sides"]
        r_ref, r_same = median_of(td, "ratio"), median_of(td, "ratio_vs_keras_same_log_prob")
        lines.append(
            f"| train, both sides with {n_threads} intra-op threads (TensorFlow's default here) | events/s per epoch, steady state "
            f"| {median_of(td, 'ours_events_per_s_per_epoch'):,.0f} | {median_of(td, 'keras_fit_events_per_s_per_epoch'):,.0f} (reference implementation); "
            f"{median_of(td, 'keras_fit_same_log_prob_events_per_s_per_epoch'):,.0f} (`model.fit`, one-pass log_prob) "
            f"| {r_ref:.2f}x; {r_same:.2f}x | >= 2x (reference implementation) | {'yes' if r_ref >= 2 else 'no'} |"
        )
    vo, vk = median_of(tr, "ours_val_loss"), median_of(tr, "keras_fit_val_loss")
    lines.append(
        f"| train | validation loss after {tr[0]['epochs']} epochs | {vo:.4f} | {vk:.4f} (reference implementation) | {vo - vk:+.4f} (difference) "
        f"| equal or better | {'yes' if vo <= vk + 0.01 else 'no'} |"
    )
    return lines

def _generate_rows(ge: list[dict[str, Any]]) -> list[str]:
    """Generation time and memory per sample size; working memory must not grow with N."""
    lines = []
    by_n: dict[int, list[dict[str, Any]]] = {}
    for run in ge:
        for r in run["results"]:
            by_n.setdefault(int(r["n"]), []).append(r)
    ns = sorted(by_n)
    for n in ns:
        secs = statistics.median(float(r["wall_s"]) for r in by_n[n])
        rss = statistics.median(float(r["peak_rss_mb"]) for r in by_n[n])
        work = statistics.median(float(r["growth_mb"]) - float(r["output_arrays_mb"]) for r in by_n[n])
        goal = "<= 5 s" if n == 1_000_000 else ""
        met = ("yes" if secs <= 5 else "no") if n == 1_000_000 else ""
        lines.append(
            f"| generate {n:,} events ({ge[0]['architecture']}, batch {ge[0]['batch_size']:,}) | wall time; peak RSS; working memory beyond the returned arrays "
            f"| {secs:.2f} s; {rss:,.0f} MB; {work:,.0f} MB | | | {goal} | {met} |"
        )
    if len(ns) >= 2:
        small, large = ns[0], ns[-1]

        def working(n: int) -> float:
            return statistics.median(float(r["growth_mb"]) - float(r["output_arrays_mb"]) for r in by_n[n])

        grow = working(large) - working(small)
        lines.append(
            f"| generate | working memory at {large:,} minus at {small:,} events | {grow:+,.0f} MB | | (N grew {large / small:.0f}x) "
            f"| bounded by the batch, not N | {'yes' if grow < 200 else 'no'} |"
        )
    return lines

def _end_to_end_row(e2e: dict[str, Any]) -> list[str]:
    """The end-to-end `fedhex-hep run` against the 5-minute goal."""
    e2e_epochs = f", {e2e['epochs']} epochs" if e2e.get("epochs") else ""
    return [
        f"| end to end (`fedhex-hep run`, demo data, default config{e2e_epochs}) "
        f"| wall time | {e2e['seconds']:.0f} s | | {e2e['seconds'] / 300:.2f}x of the 5-minute goal | <= 300 s | {'yes' if e2e['seconds'] <= 300 else 'no'} |"
    ]


def _notes() -> list[str]:
    """How the comparisons were made."""
    return [
        "",
        "Notes:",
        "",
        "- Training, reference implementation (unfused): a Keras functional model wrapping the flow's TFP `TransformedDistribution.log_prob`,",
        "  trained with `model.fit` (same architecture on a standard normal base, which TFP's density assumes; same",
        "  batch size, data, Adam schedule and gradient clipping). TFP's",
        "  masked autoregressive flow evaluates each MADE network twice per `log_prob`; our `ConditionalFlow.log_prob`",
        "  evaluates it once. The second training row gives `model.fit` our one-pass density as well, so it shows",
        "  what the training loop alone (one compiled graph per epoch, fused Adam, XLA validation pass) gains.",
        "- Both training sides run with the intra-op thread count that `train()` uses (see `fedhex_hep/model/training.py`);",
        "  the row 'both sides with N intra-op threads' repeats the comparison at TensorFlow's default, so the",
        "  reference implementation is also measured at its own default setting.",
        "- Steady state is the median epoch after the first; each epoch covers its training and validation passes on",
        "  both sides. The first epoch holds graph tracing on both sides. The whole-call row includes what `train()`",
        "  writes per epoch (checkpoints `best`/`last`, history) and the loss plot, against `model.fit()` alone.",
        "- Validation loss is compared after 20 epochs: after only a few epochs it depends on when a run leaves its",
        "  initial plateau, which varies with the shuffle by up to ~0.15 nats.",
        "- The end-to-end run trains the default model of `fedhex_hep/default.toml`; training is most of its time.",
    ]


def render(results: dict[str, Any], args: argparse.Namespace) -> str:
    """RESULTS.md: the table of every stage, the notes, and the raw results."""
    lines = _header(results, args)
    lines += _extract_rows(results["extract"])
    lines += _train_rows(results["train"], results.get("train_default_threads"))
    lines += _generate_rows(results["generate"])
    lines += _end_to_end_row(results["e2e"])
    lines += _notes()
    lines += ["", "Raw results (JSON):", "", "```json", json.dumps(results, indent=1, default=float), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: check the machinery, not the goals")
    parser.add_argument("--repeats", type=int, default=3, help="runs per benchmark; medians are reported")
    parser.add_argument("--e2e-repeats", type=int, default=None,
                        help="runs of the end-to-end `fedhex-hep run` (default: --repeats)")
    parser.add_argument("--epochs", type=int, default=None, help="override the epochs of the end-to-end run")
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--raw", type=Path, default=Path(tempfile.gettempdir()) / "fedhex_bench_raw.json",
                        help="raw results so far, rewritten after each stage (a late failure loses nothing)")
    parser.add_argument("--from-raw", type=Path, default=None,
                        help="render RESULTS.md from a raw results file; run only the stages it lacks")
    args = parser.parse_args(argv)

    if args.quick:
        sizes = {
            "extract": {"n_events": 100_000, "repeats": 1},
            "train": {"events": 5000, "epochs": 2, "blocks": 2, "units": 16},
            "generate": {"ns": [100_000, 400_000]},
        }
    else:
        sizes = {
            "extract": {"n_events": 1_000_000, "repeats": 1},
            "train": {"events": 50_000, "epochs": 20},
            "generate": {"ns": [1_000_000, 10_000_000]},
        }
    from fedhex_hep.io.atomic import atomic_write_text

    results: dict[str, Any] = json.loads(args.from_raw.read_text()) if args.from_raw else {}
    results.setdefault("measured_utc", f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M}")
    sizes["train_default_threads"] = {**sizes["train"], "threads": os.cpu_count() or 1}
    stages = (("extract", "bench_extract"), ("train", "bench_train"), ("train_default_threads", "bench_train"),
              ("generate", "bench_generate"))
    for name, module in stages:
        if name in results:
            continue
        print(f"running {name} ...", flush=True)
        results.setdefault("load", {})[name] = os.getloadavg()[0]
        t0 = time.perf_counter()
        results[name] = repeated(module, sizes[name], args.repeats)
        print(f"  {name}: {time.perf_counter() - t0:.0f} s", flush=True)
        atomic_write_text(args.raw, json.dumps(results, default=float), overwrite=True)
    if "e2e" not in results:
        print("running end to end ...", flush=True)
        results.setdefault("load", {})["e2e"] = os.getloadavg()[0]
        e2e_repeats = 1 if args.quick else (args.e2e_repeats or args.repeats)
        results["e2e"] = end_to_end(e2e_repeats, 2 if args.quick and not args.epochs else args.epochs)
        atomic_write_text(args.raw, json.dumps(results, default=float), overwrite=True)

    text = render(results, args)
    atomic_write_text(args.output, text, overwrite=True)
    print(text.split("Raw results")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
