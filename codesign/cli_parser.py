"""The ``codesign`` subcommands and their options (contract: ../shared/CLI.md); options several
subcommands share come from ``cli_options.SHARED``, declared there once."""
from __future__ import annotations

import argparse

from codesign.cli_options import (COUNT, FRACTION, OPTIONAL_COUNT, Parser, add_candidate_timing,
                                  duration, integer, option, shared)

# QAT fine-tune steps per front member with the built-in evaluator (see BENCHMARKS.md)
DEFAULT_FINETUNE_STEPS = 20


def build_parser(description: str) -> argparse.ArgumentParser:
    parser = Parser(prog="codesign", description=description)
    sub = parser.add_subparsers(dest="command", parser_class=Parser, metavar="COMMAND")
    sub.required = True
    _add_predict(sub)
    _add_search(sub)
    _add_calibrate(sub)
    _add_measure_bundle_ingest(sub)
    _add_inspection(sub)
    _add_sweep(sub)
    _add_report(sub)
    return parser


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="price a PyTorch model on a device",
                       description="Lower a model (MODULE:FACTORY returning a torch.nn.Module) to "
                                   "the op list and price it on DEVICE.")
    shared(p, "--device")
    p.add_argument("--model", required=True, help="MODULE:FACTORY returning a torch.nn.Module")
    p.add_argument("--input-shape", default=None,
                   help="e.g. 1,3,224,224 (required unless --phase)")
    p.add_argument("--dtype", default="fp32", help="fp32, fp16 or int8 (default fp32; with "
                   "--phase: the residual stream's, fp32 or fp16)")
    # causal LMs (codesign.llm_predict): one generation phase with token ids and a KV cache
    p.add_argument("--phase", default=None, help="prefill or decode: price one generation "
                   "phase of a causal LM (--model returns one) instead of --input-shape")
    option(p, "--prompt-len", COUNT, default=None, help="prompt tokens (prefill: required)")
    option(p, "--context", COUNT, default=None,
           help="KV-cache length in tokens (decode: required; prefill: default --prompt-len)")
    option(p, "--weight-bits", COUNT, default=4, help="linear weights: 4 (group-wise) or 8 "
           "(per channel) with int8 dynamic activations, or 32 (not quantized; default 4)")
    option(p, "--group-size", COUNT, default=None, help="4-bit weights per scale (default 32)")
    shared(p, "--threads", default=None, help="threads (default: the device's)")
    shared(p, "--backend", help="one of the device's back-ends")
    shared(p, "--cost-model", "--cost-model-file", "--json")


def _add_search(sub) -> None:
    s = sub.add_parser("search", help="search model x kernel co-designs under a latency budget",
                       description="Optuna search over architecture x per-layer precision x "
                                   "sparsity x tile, priced on DEVICE, accuracy measured.")
    shared(s, "--device")
    s.add_argument("--budget", required=True, help="latency budget with unit: 10ms, 500us, 0.01s "
                   "(--space transformer: per decoded token)")
    option(s, "--ttft-budget", duration(), default=None,
           help="--space transformer: time-to-first-token budget, e.g. 500ms")
    shared(s, "--backend", "--space", "--trials")
    option(s, "--timeout", duration(bare_unit="s"), default=None,
           help="stop after this many seconds")
    shared(s, "--seed", "--sampler", "--cost-model", "--cost-model-file")
    option(s, "--workers", COUNT, default=1,
           help="trials evaluated in parallel on Ray (default 1: no Ray)")
    shared(s, "--ray-address", "--evaluator")
    s.add_argument("--baseline", default=None, help="PARAMS.json of your production model")
    s.add_argument("--out", default=None,
                   help="run directory (default runs/<time>-<device>-<budget>)")
    s.add_argument("--resume", default=None, help="continue the study in this run directory")
    shared(s, "--json", help="print pareto.json instead of the table")
    s.add_argument("--export", action="store_true", help="export the Pareto front at the end "
                   "(as codesign export RUN_DIR)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    option(s, "--min-accuracy", FRACTION, default=None,
           help="accuracy floor in [0, 1], a constraint like the budget (default: the "
                "task's reference model's val accuracy)")
    option(s, "--max-formats", COUNT, default=3,
           help="distinct (weight bits, activation bits, sparsity) formats per member "
                "(default 3)")
    option(s, "--predictor-trials", OPTIONAL_COUNT, default=None,
           help="trials proposed by the accuracy predictor + cost model stage after "
                "TPE (default: a fifth of --trials from 40 trials on)")
    option(s, "--finetune-steps", OPTIONAL_COUNT, default=None,
           help="QAT fine-tune steps for each front member (default: "
                f"{DEFAULT_FINETUNE_STEPS} with the built-in evaluator, 0 with --evaluator)")
    s.add_argument("--task", default=None, help="MODULE:FACTORY returning your data as a "
                   "codesign.search_spaces.tasks.TaskSplits (default: the built-in digits)")
    shared(s, "--threads", default=None,
           help="search every member at this thread count only (default: 1, half and all of "
                "the device's threads where the back-end lets threads be chosen)")


def _add_sweep(sub) -> None:
    w = sub.add_parser("sweep", help="one search per (device, budget), on Ray",
                       description="Run one search per (device, budget) as Ray tasks (a local "
                                   "Ray, or a cluster with --ray-address); writes DIR/<device>-"
                                   "<budget>/ run directories, DIR/sweep.json and "
                                   "DIR/summary.csv. Re-running it over DIR continues its runs.")
    w.add_argument("--devices", required=True, help="A,B,...: catalog names or device YAML paths")
    w.add_argument("--budgets", required=True, help="5ms,10ms,...: latency budgets with units")
    shared(w, "--trials", help="trials per run (default 50)")
    shared(w, "--backend", "--space")
    shared(w, "--seed", help="random seed of every run (default 0)")
    shared(w, "--sampler")
    shared(w, "--cost-model", help="analytic")
    shared(w, "--evaluator", "--ray-address")
    w.add_argument("--out", required=True, help="sweep directory")


def _add_calibrate(sub) -> None:
    c = sub.add_parser("calibrate",
                       help="fit the learned cost model for a device from measurements",
                       description="Fit the learned model for --target from N sampled rows (plus "
                                   "the prior columns), then predict every other row.")
    shared(c, "--space", default=None, required=True, help="nasbench201, fbnet or mbconv")
    c.add_argument("--measurements", required=True, help="CSV: architecture column, ms per device")
    c.add_argument("--target", required=True, help="the device column to predict")
    c.add_argument("--prior-columns", default=None, help="A,B,... (default: every other column)")
    # its range (2 to the rows - 1) is the fit's to check, knowing the file
    option(c, "--samples", COUNT, required=True, help="target rows to fit on")
    shared(c, "--seed")
    c.add_argument("--save", default=None, help="write the fitted model (versioned JSON)")
    shared(c, "--cost-model", default="learned",
           help="learned (default: reference-device features) or hybrid (the --device's "
                "own analytic model as the prior, a learned residual)")
    shared(c, "--device", required=False, default=None,
           help="catalog device name or device YAML path the target column measured "
                "(hybrid: required)")
    shared(c, "--backend", default="xnnpack", help="its back-end (default xnnpack)")
    shared(c, "--threads", help="its thread count (default 1)")
    shared(c, "--json", help="print the metrics as JSON")


def _add_measure_bundle_ingest(sub) -> None:
    space_help = "mbconv or MODULE:FACTORY (an MBConvSpace)"
    m = sub.add_parser("measure", help="time candidates of a space on this machine (ExecuTorch)",
                       description="Lower N distinct random candidates to XNNPACK .pte programs "
                                   "(each layer at its priced precision), time them with the "
                                   "ExecuTorch runtime and append one row each to a measurement "
                                   "CSV (for calibrate). Re-running over the same --out continues.")
    shared(m, "--device", help="host (this machine)")
    shared(m, "--space", default=None, required=True, help=space_help)
    shared(m, "--backend", default="xnnpack", help="xnnpack (default)")
    shared(m, "--n", help="candidates in the file in total")
    m.add_argument("--out", required=True, help="measurement CSV (appended to)")
    add_candidate_timing(m, threads="runtime threads (default 1)",
                         warmup="untimed runs per round, after its first run (timed apart) "
                                "(default 5)",
                         repeats="timed runs per round (default 30)",
                         rounds="rounds per candidate, fresh load each (default 2)")
    option(m, "--noise-candidates", OPTIONAL_COUNT, default=3,
           help="candidates re-lowered and re-timed at the end (default 3)")
    m.add_argument("--from-pareto", default=None,
                   help="measure the members of this search's pareto.json (up to --n) instead "
                        "of random candidates")
    m.add_argument("--clock", default="auto",
                   help="cpu (the executing thread's CPU time: immune to other processes; "
                        "1 thread only), wall, or auto (default: cpu with 1 thread, else wall)")
    shared(m, "--json", help="print the summary as JSON")

    u = sub.add_parser("bundle", help="write programs + a script to measure them on a phone",
                       description="Write DIR with N candidates' .pte programs, manifest.json, "
                                   "and run_on_phone.sh (adb + ExecuTorch's executor_runner).")
    shared(u, "--space", default=None, required=True, help=space_help)
    shared(u, "--n")
    u.add_argument("--out", required=True, help="bundle directory (new or empty)")
    shared(u, "--backend", default="xnnpack", help="xnnpack (default)")
    shared(u, "--device", required=False, default=None,
           help="catalog device of the phone (optional: adds analytic predictions and names "
                "the latency column)")
    add_candidate_timing(u, threads="--cpu_threads on the phone (default 1)",
                         warmup="untimed runs before the timed ones, the first run among them "
                                "(default 5; 0: the first, cold run is timed too)",
                         repeats="timed runs (default 30)",
                         rounds="runner invocations per program (default 2)")

    g = sub.add_parser("ingest", help="turn a phone's results into a measurement CSV",
                       description="Read RESULTS (the bundle's results/ directory of "
                                   "executor_runner logs, or a CSV id,latency_ms[,p90_ms]) and "
                                   "append one row per candidate to --out.")
    g.add_argument("results", metavar="RESULTS", help="results directory or CSV")
    g.add_argument("--out", required=True, help="measurement CSV (appended to)")
    shared(g, "--device", required=False, default=None,
           help="the phone's name: the latency column (default: the bundle's --device)")
    g.add_argument("--manifest", default=None, help="the bundle's manifest.json (default: "
                   "RESULTS/manifest.json, or next to a CSV)")
    shared(g, "--json", help="print the summary as JSON")


def _add_inspection(sub) -> None:
    """devices, bench, export: look at the catalog, time the kernels, export runs."""
    d = sub.add_parser("devices", help="list the device catalog or show one spec",
                       description="`codesign devices` lists the catalog; "
                                   "`codesign devices show NAME` prints one spec with sources.")
    d.add_argument("action", nargs="?", choices=["show"], help="show one device")
    d.add_argument("name", nargs="?", help="device name or YAML path (with show)")
    shared(d, "--json")

    b = sub.add_parser("bench", help="microbenchmarks", description="Kernel microbenchmarks "
                       "against baselines measured in the same run.")
    b.add_argument("suite", choices=["kernels", "scoring"],
                   help="kernels: numba kernels vs baselines; scoring: cost-model throughput")
    b.add_argument("--quick", action="store_true", help="small sizes (CI)")
    shared(b, "--backend",
           help="scoring: the back-end whose MBConv space is priced (default codesign)")
    shared(b, "--json")

    e = sub.add_parser("export", help="export Pareto members to verified ExecuTorch programs",
                       description="Build each member with its trained weights and searched "
                                   "precisions, write RUN_DIR/export/trial-N/{model.pte, "
                                   "model.pt2, manifest.json} (+ kernels.json for the codesign "
                                   "back-end) and verify every .pte on the ExecuTorch runtime.")
    e.add_argument("run_dir", metavar="RUN_DIR", help="a finished search's run directory")
    e.add_argument("--format", default="pte,pt2", help="pte,pt2 (default both), or numba: "
                   "codesign-back-end members as programs the project's kernels run "
                   "(RUN_DIR/export/trial-N/numba/)")
    e.add_argument("--members", default="all", help="all (default) or trial numbers: 3,17")
    shared(e, "--json", help="print export/summary.json instead")

    r = sub.add_parser("run", help="run and time an exported numba program",
                       description="Load PROGRAM_DIR (codesign export --format numba), check it "
                                   "against the scored model's outputs stored with it, and time "
                                   "it end to end (warm-ups, repeats, p50).")
    r.add_argument("program_dir", metavar="PROGRAM_DIR", help="RUN_DIR/export/trial-N/numba")
    shared(r, "--threads", help="numba threads (default 1)")
    shared(r, "--warmup", help="untimed runs after the first (default 5)")
    shared(r, "--repeats", help="timed runs (default 30)")
    shared(r, "--json", help="print the result as JSON")


def _add_report(sub) -> None:
    r = sub.add_parser("report", help="a run's Pareto table, plot and per-layer breakdowns",
                       description="Print RUN_DIR's Pareto table, write RUN_DIR/pareto.png "
                                   "(accuracy vs latency of every trial, budget, front) and "
                                   "print the command that opens the run in optuna-dashboard.")
    r.add_argument("run_dir", metavar="RUN_DIR", help="a search's run directory")
    option(r, "--member", integer(0, noun="a trial number"), default=None,
           help="trial number of a front member: its per-layer latency breakdown")
    r.add_argument("--html", action="store_true",
                   help="also write RUN_DIR/pareto.html (interactive, Optuna + plotly)")
