"""The ``codesign`` command line (contract: ../shared/CLI.md).

Exit codes: 0 success; 2 bad input (one line on stderr naming the problem, no traceback);
1 a failure while running (message + the path of a log holding the traceback); 3 (search,
sweep) trials completed but no candidate fits the budget.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import sys
import tempfile
import traceback
from pathlib import Path

from codesign.userinput import BadInput, parse_positive_int, parse_shape

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2
EXIT_NO_FEASIBLE = 3  # search / sweep: trials completed, but no candidate fits the budget
# QAT fine-tune steps per front member with the built-in evaluator (see BENCHMARKS.md)
DEFAULT_FINETUNE_STEPS = 20


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit 2 (argparse's own code for them)."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse API
        raise BadInput(f"{self.prog}: {message}")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="codesign", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("predict", help="price a PyTorch model on a device",
                       description="Lower a model (MODULE:FACTORY returning a torch.nn.Module) to "
                                   "the op list and price it on DEVICE.")
    p.add_argument("--device", required=True, help="catalog name (codesign devices) or YAML path")
    p.add_argument("--model", required=True, help="MODULE:FACTORY returning a torch.nn.Module")
    p.add_argument("--input-shape", required=True, help="e.g. 1,3,224,224")
    p.add_argument("--dtype", default="fp32", help="fp32, fp16 or int8 (default fp32)")
    p.add_argument("--threads", default=None, help="threads (default: the device's)")
    p.add_argument("--backend", default=None, help="one of the device's back-ends")
    p.add_argument("--cost-model", default="analytic",
                   help="analytic (default), or learned/hybrid: a model saved by calibrate --save")
    p.add_argument("--cost-model-file", default=None,
                   help="the learned/hybrid model (default: the device's in the cache directory's "
                        "models/; CODESIGN_CACHE_DIR sets the cache directory)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")

    s = sub.add_parser("search", help="search model x kernel co-designs under a latency budget",
                       description="Optuna search over architecture x per-layer precision x "
                                   "sparsity x tile, priced on DEVICE, accuracy measured.")
    s.add_argument("--device", required=True, help="catalog name (codesign devices) or YAML path")
    s.add_argument("--budget", required=True, help="latency budget with unit: 10ms, 500us, 0.01s "
                   "(--space transformer: per decoded token)")
    s.add_argument("--ttft-budget", default=None,
                   help="--space transformer: time-to-first-token budget, e.g. 500ms")
    s.add_argument("--backend", default=None,
                   help="one of the device's back-ends (default: its first, xnnpack on phones)")
    s.add_argument("--space", default="mbconv", help="mbconv or MODULE:FACTORY")
    s.add_argument("--trials", default="50", help="total trials (default 50)")
    s.add_argument("--timeout", default=None, help="stop after this many seconds")
    s.add_argument("--seed", default="0", help="random seed (default 0)")
    s.add_argument("--sampler", default="tpe", help="tpe (default), nsga2 or random")
    s.add_argument("--cost-model", default="analytic",
                   help="analytic (default), learned or hybrid (a model from calibrate --save)")
    s.add_argument("--cost-model-file", default=None,
                   help="learned/hybrid model JSON (default: <cache>/models/"
                        "<device>-<backend>-<kind>.json; <cache> is $CODESIGN_CACHE_DIR or "
                        "the user cache directory)")
    s.add_argument("--workers", default="1", help="trials evaluated in parallel on Ray (default 1: "
                   "no Ray)")
    s.add_argument("--ray-address", default=None, help="join this Ray cluster (default: a local Ray)")
    s.add_argument("--evaluator", default=None, help="MODULE:FUNC(candidate, split) -> accuracy")
    s.add_argument("--baseline", default=None, help="PARAMS.json of your production model")
    s.add_argument("--out", default=None, help="run directory (default runs/<time>-<device>-<budget>)")
    s.add_argument("--resume", default=None, help="continue the study in this run directory")
    s.add_argument("--json", action="store_true", help="print pareto.json instead of the table")
    s.add_argument("--export", action="store_true", help="export the Pareto front at the end "
                   "(as codesign export RUN_DIR)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--min-accuracy", default=None,
                   help="accuracy floor in [0, 1], a constraint like the budget (default: the "
                        "task's reference model's val accuracy)")
    s.add_argument("--max-formats", default="3",
                   help="distinct (weight bits, activation bits, sparsity) formats per member "
                        "(default 3)")
    s.add_argument("--predictor-trials", default=None,
                   help="trials proposed by the accuracy predictor + cost model stage after "
                        "TPE (default: a fifth of --trials from 40 trials on)")
    s.add_argument("--finetune-steps", default=None,
                   help="QAT fine-tune steps for each front member (default: "
                        f"{DEFAULT_FINETUNE_STEPS} with the built-in evaluator, 0 with --evaluator)")
    s.add_argument("--task", default=None, help="MODULE:FACTORY returning your data as a "
                   "codesign.search_spaces.tasks.TaskSplits (default: the built-in digits)")

    c = sub.add_parser("calibrate", help="fit the learned cost model for a device from measurements",
                       description="Fit the learned model for --target from N sampled rows (plus "
                                   "the prior columns), then predict every other row.")
    c.add_argument("--space", required=True, help="nasbench201, fbnet or mbconv")
    c.add_argument("--measurements", required=True, help="CSV: architecture column, ms per device")
    c.add_argument("--target", required=True, help="the device column to predict")
    c.add_argument("--prior-columns", default=None, help="A,B,... (default: every other column)")
    c.add_argument("--samples", required=True, help="target rows to fit on")
    c.add_argument("--seed", default="0")
    c.add_argument("--save", default=None, help="write the fitted model (versioned JSON)")
    c.add_argument("--cost-model", default="learned",
                   help="learned (default: reference-device features) or hybrid (the --device's "
                        "own analytic model as the prior, a learned residual)")
    c.add_argument("--device", default=None,
                   help="catalog device the target column measured (hybrid: required)")
    c.add_argument("--backend", default="xnnpack", help="its back-end (default xnnpack)")
    c.add_argument("--threads", default="1", help="its thread count (default 1)")
    c.add_argument("--json", action="store_true", help="print the metrics as JSON")

    m = sub.add_parser("measure", help="time candidates of a space on this machine (ExecuTorch)",
                       description="Lower N distinct random candidates to XNNPACK .pte programs "
                                   "(each layer at its priced precision), time them with the "
                                   "ExecuTorch runtime and append one row each to a measurement "
                                   "CSV (for calibrate). Re-running over the same --out continues.")
    m.add_argument("--device", required=True, help="host (this machine)")
    m.add_argument("--space", required=True, help="mbconv or MODULE:FACTORY (an MBConvSpace)")
    m.add_argument("--backend", default="xnnpack", help="xnnpack (default)")
    m.add_argument("--n", required=True, help="candidates in the file in total")
    m.add_argument("--out", required=True, help="measurement CSV (appended to)")
    m.add_argument("--seed", default="0", help="sampling and weight seed (default 0)")
    m.add_argument("--threads", default="1", help="runtime threads (default 1)")
    m.add_argument("--warmup", default="5", help="untimed runs per round (default 5)")
    m.add_argument("--repeats", default="30", help="timed runs per round (default 30)")
    m.add_argument("--rounds", default="2", help="rounds per candidate, fresh load each (default 2)")
    m.add_argument("--noise-candidates", default="3",
                   help="candidates re-lowered and re-timed at the end (default 3)")
    m.add_argument("--from-pareto", default=None,
                   help="measure the members of this search's pareto.json (up to --n) instead "
                        "of random candidates")
    m.add_argument("--clock", default="auto",
                   help="cpu (the executing thread's CPU time: immune to other processes; "
                        "1 thread only), wall, or auto (default: cpu with 1 thread, else wall)")
    m.add_argument("--json", action="store_true", help="print the summary as JSON")

    u = sub.add_parser("bundle", help="write programs + a script to measure them on a phone",
                       description="Write DIR with N candidates' .pte programs, manifest.json, "
                                   "and run_on_phone.sh (adb + ExecuTorch's executor_runner).")
    u.add_argument("--space", required=True, help="mbconv or MODULE:FACTORY (an MBConvSpace)")
    u.add_argument("--n", required=True, help="candidates")
    u.add_argument("--out", required=True, help="bundle directory (new or empty)")
    u.add_argument("--backend", default="xnnpack", help="xnnpack (default)")
    u.add_argument("--device", default=None, help="catalog device of the phone (optional: "
                   "adds analytic predictions and names the latency column)")
    u.add_argument("--seed", default="0", help="sampling and weight seed (default 0)")
    u.add_argument("--threads", default="1", help="--cpu_threads on the phone (default 1)")
    u.add_argument("--warmup", default="5", help="untimed runs (default 5)")
    u.add_argument("--repeats", default="30", help="timed runs (default 30)")
    u.add_argument("--rounds", default="2", help="runner invocations per program (default 2)")

    g = sub.add_parser("ingest", help="turn a phone's results into a measurement CSV",
                       description="Read RESULTS (the bundle's results/ directory of "
                                   "executor_runner logs, or a CSV id,latency_ms[,p90_ms]) and "
                                   "append one row per candidate to --out.")
    g.add_argument("results", metavar="RESULTS", help="results directory or CSV")
    g.add_argument("--out", required=True, help="measurement CSV (appended to)")
    g.add_argument("--device", default=None, help="the phone's name: the latency column "
                   "(default: the bundle's --device)")
    g.add_argument("--manifest", default=None, help="the bundle's manifest.json (default: "
                   "RESULTS/manifest.json, or next to a CSV)")
    g.add_argument("--json", action="store_true", help="print the summary as JSON")

    d = sub.add_parser("devices", help="list the device catalog or show one spec",
                       description="`codesign devices` lists the catalog; "
                                   "`codesign devices show NAME` prints one spec with sources.")
    d.add_argument("action", nargs="?", choices=["show"], help="show one device")
    d.add_argument("name", nargs="?", help="device name or YAML path (with show)")
    d.add_argument("--json", action="store_true")

    b = sub.add_parser("bench", help="microbenchmarks", description="Kernel microbenchmarks "
                       "against baselines measured in the same run.")
    b.add_argument("suite", choices=["kernels", "scoring"],
                   help="kernels: numba kernels vs baselines; scoring: cost-model throughput")
    b.add_argument("--quick", action="store_true", help="small sizes (CI)")
    b.add_argument("--backend", default=None,
                   help="scoring: the back-end whose MBConv space is priced (default codesign)")
    b.add_argument("--json", action="store_true")

    e = sub.add_parser("export", help="export Pareto members to verified ExecuTorch programs",
                       description="Build each member with its trained weights and searched "
                                   "precisions, write RUN_DIR/export/trial-N/{model.pte, "
                                   "model.pt2, manifest.json} (+ kernels.json for the codesign "
                                   "back-end) and verify every .pte on the ExecuTorch runtime.")
    e.add_argument("run_dir", metavar="RUN_DIR", help="a finished search's run directory")
    e.add_argument("--format", default="pte,pt2", help="pte,pt2 (default both)")
    e.add_argument("--members", default="all", help="all (default) or trial numbers: 3,17")
    e.add_argument("--json", action="store_true", help="print export/summary.json instead")

    w = sub.add_parser("sweep", help="one search per (device, budget), on Ray",
                       description="Run one search per (device, budget) as Ray tasks (a local "
                                   "Ray, or a cluster with --ray-address); writes DIR/<device>-"
                                   "<budget>/ run directories, DIR/sweep.json and "
                                   "DIR/summary.csv. Re-running it over DIR continues its runs.")
    w.add_argument("--devices", required=True, help="A,B,...: catalog names or device YAML paths")
    w.add_argument("--budgets", required=True, help="5ms,10ms,...: latency budgets with units")
    w.add_argument("--trials", default="50", help="trials per run (default 50)")
    w.add_argument("--backend", default=None,
                   help="one of the device's back-ends (default: its first, xnnpack on phones)")
    w.add_argument("--space", default="mbconv", help="mbconv or MODULE:FACTORY")
    w.add_argument("--seed", default="0", help="random seed of every run (default 0)")
    w.add_argument("--sampler", default="tpe", help="tpe (default), nsga2 or random")
    w.add_argument("--cost-model", default="analytic", help="analytic")
    w.add_argument("--evaluator", default=None, help="MODULE:FUNC(candidate, split) -> accuracy")
    w.add_argument("--ray-address", default=None, help="join this Ray cluster (default: a local Ray)")
    w.add_argument("--out", required=True, help="sweep directory")

    r = sub.add_parser("report", help="a run's Pareto table, plot and per-layer breakdowns",
                       description="Print RUN_DIR's Pareto table, write RUN_DIR/pareto.png "
                                   "(accuracy vs latency of every trial, budget, front) and "
                                   "print the command that opens the run in optuna-dashboard.")
    r.add_argument("run_dir", metavar="RUN_DIR", help="a search's run directory")
    r.add_argument("--member", default=None,
                   help="trial number of a front member: its per-layer latency breakdown")
    r.add_argument("--html", action="store_true",
                   help="also write RUN_DIR/pareto.html (interactive, Optuna + plotly)")
    return parser


def _cmd_predict(args) -> int:
    from codesign.pricing import COST_MODELS, price_module
    from codesign.report_tables import format_prediction
    from codesign.userinput import build_user_model
    from codesign.cost_models.devices import load_device

    if args.dtype not in ("fp32", "fp16", "int8"):
        raise BadInput(f"unknown --dtype {args.dtype!r}; valid: fp32, fp16, int8")
    if args.cost_model not in COST_MODELS:
        raise BadInput(f"unknown --cost-model {args.cost_model!r}; valid: {', '.join(COST_MODELS)}")
    shape = parse_shape(args.input_shape)
    threads = None if args.threads is None else parse_positive_int(args.threads, "--threads")
    device = load_device(args.device)
    model = build_user_model(args.model)
    priced = price_module(model, shape, device, backend=args.backend, dtype=args.dtype,
                          threads=threads, cost_model=args.cost_model,
                          cost_model_file=Path(args.cost_model_file) if args.cost_model_file
                          else None)
    if args.json:
        print(json.dumps(priced.to_json(), indent=2))
    else:
        print(format_prediction(priced, model_name=args.model, input_shape=shape, dtype=args.dtype))
    return EXIT_OK


def _cmd_search(args) -> int:
    from codesign.report_tables import format_pareto
    from codesign.results import run_status
    from codesign.run_dir import LOG_FILE
    from codesign.search import SAMPLERS, SearchConfig, run_search
    from codesign.userinput import parse_budget

    budget = parse_budget(args.budget)
    ttft_budget = None
    if args.ttft_budget is not None:
        try:
            ttft_budget = parse_budget(args.ttft_budget)
        except BadInput as exc:
            raise BadInput(f"--ttft-budget: {exc}") from None
    if args.sampler not in SAMPLERS:
        raise BadInput(f"unknown --sampler {args.sampler!r}; valid: {', '.join(SAMPLERS)}")
    if args.resume and args.out:
        raise BadInput("give either --out (a new run) or --resume (an existing one), not both")
    try:
        seed = int(args.seed)
    except ValueError:
        raise BadInput(f"--seed must be an integer, got {args.seed!r}") from None
    timeout = None
    if args.timeout is not None:
        try:
            timeout = float(args.timeout)
        except ValueError:
            raise BadInput(f"--timeout must be seconds, got {args.timeout!r}") from None
        if not timeout > 0:
            raise BadInput(f"--timeout must be positive seconds, got {args.timeout!r}")
    min_accuracy = None
    if args.min_accuracy is not None:
        try:
            min_accuracy = float(args.min_accuracy)
        except ValueError:
            raise BadInput(f"--min-accuracy must be a number in [0, 1], got "
                           f"{args.min_accuracy!r}") from None
        if not 0.0 <= min_accuracy <= 1.0:
            raise BadInput(f"--min-accuracy must be in [0, 1], got {args.min_accuracy!r}")
    config = SearchConfig(
        device=args.device, budget_s=budget, budget_text=args.budget, backend=args.backend,
        space=args.space, trials=parse_positive_int(args.trials, "--trials"), timeout_s=timeout,
        seed=seed, sampler=args.sampler, cost_model=args.cost_model, evaluator=args.evaluator,
        cost_model_file=Path(args.cost_model_file) if args.cost_model_file else None,
        workers=parse_positive_int(args.workers, "--workers"), ray_address=args.ray_address,
        baseline=Path(args.baseline) if args.baseline else None,
        out=Path(args.out) if args.out else None,
        resume=Path(args.resume) if args.resume else None, ttft_budget_s=ttft_budget,
        min_accuracy=min_accuracy, task=args.task,
        finetune_steps=(_int_arg(args.finetune_steps, "--finetune-steps", 0)
                        if args.finetune_steps is not None
                        else 0 if args.evaluator else DEFAULT_FINETUNE_STEPS),
        max_formats=parse_positive_int(args.max_formats, "--max-formats"),
        predictor_trials=(_int_arg(args.predictor_trials, "--predictor-trials", 0)
                          if args.predictor_trials is not None else None),
        progress=not (args.no_progress or args.json) and sys.stderr.isatty(),
        progress_lines=not args.no_progress and not sys.stderr.isatty())
    result = run_search(config)
    if args.json:
        print(json.dumps(result.pareto, indent=2))
    else:
        print(format_pareto(result.pareto, run_dir=result.run_dir, elapsed_s=result.elapsed_s))
    status, why = run_status(result.pareto)
    if status == "ok":  # stderr (--json keeps stdout for the JSON); a failure says one line
        print(f"cache directory: {result.pareto.get('provenance', {}).get('cache_dir')} "
              "(set CODESIGN_CACHE_DIR to move it)", file=sys.stderr)
    if status == "failed":
        print(f"codesign search: {why}; log: {Path(result.run_dir) / LOG_FILE}", file=sys.stderr)
        return EXIT_FAILURE
    if status == "no-feasible":
        print(f"codesign search: {why}", file=sys.stderr)
        return EXIT_NO_FEASIBLE
    if args.export:
        return _export(Path(result.run_dir), "pte,pt2", "all", as_json=False)
    return EXIT_OK


def _export(run_dir: Path, formats: str, members: str, *, as_json: bool) -> int:
    from codesign.export.run import export_run, format_results, parse_formats

    results = export_run(run_dir, formats=parse_formats(formats), members=members,
                         log=lambda line: print(line, file=sys.stderr))
    if as_json:
        print((run_dir / "export" / "summary.json").read_text(), end="")
    else:
        print(format_results(results))
        print(f"artifacts: {run_dir / 'export'}")
    failed = [r.trial for r in results if r.failed]
    if failed:
        print(f"export failed for trial(s) {', '.join(map(str, failed))}: see their manifest.json",
              file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _cmd_export(args) -> int:
    return _export(Path(args.run_dir), args.format, args.members, as_json=args.json)


def _cmd_calibrate(args) -> int:
    from codesign.calibrate import calibrate

    try:
        seed = int(args.seed)
    except ValueError:
        raise BadInput(f"--seed must be an integer, got {args.seed!r}") from None
    result = calibrate(args.space, Path(args.measurements), args.target,
                       None if args.prior_columns is None else args.prior_columns.split(","),
                       parse_positive_int(args.samples, "--samples"), seed,
                       Path(args.save) if args.save else None, kind=args.cost_model,
                       device=args.device, backend=args.backend,
                       threads=parse_positive_int(args.threads, "--threads"))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:24s} {value}")
    return EXIT_OK


def _int_arg(value: str, flag: str, low: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise BadInput(f"{flag} must be an integer >= {low}, got {value!r}") from None
    if number < low:
        raise BadInput(f"{flag} must be an integer >= {low}, got {value!r}")
    return number


def _cmd_measure(args) -> int:
    from codesign.measure_cmd import MeasureConfig, run_measure

    config = MeasureConfig(
        device=args.device, space=args.space, backend=args.backend, out=Path(args.out),
        n=_int_arg(args.n, "--n", 1), seed=_int_arg(args.seed, "--seed", 0),
        threads=_int_arg(args.threads, "--threads", 1),
        warmup=_int_arg(args.warmup, "--warmup", 0), repeats=_int_arg(args.repeats, "--repeats", 1),
        rounds=_int_arg(args.rounds, "--rounds", 1),
        noise_candidates=_int_arg(args.noise_candidates, "--noise-candidates", 0),
        clock=args.clock, from_pareto=Path(args.from_pareto) if args.from_pareto else None)
    summary = run_measure(config)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        floor = summary["noise_floor"]
        print(f"{summary['n_rows']} candidates in {summary['out']} ({summary['n_measured_now']} "
              f"measured now, {summary['n_failed']} failed, {summary['elapsed_s']:.0f} s)")
        for key in ("round_spread", "remeasure_rel_diff", "loadavg_1m"):
            print(f"{key:20s} {floor[key]}")
    if summary["n_failed"]:
        print(f"codesign measure: {summary['n_failed']} candidate(s) failed; first: "
              f"{summary['failures'][0]}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _cmd_bundle(args) -> int:
    from codesign.bundle import write_bundle

    manifest = write_bundle(
        args.space, _int_arg(args.n, "--n", 1), Path(args.out), backend=args.backend,
        seed=_int_arg(args.seed, "--seed", 0), threads=_int_arg(args.threads, "--threads", 1),
        warmup=_int_arg(args.warmup, "--warmup", 1), repeats=_int_arg(args.repeats, "--repeats", 1),
        rounds=_int_arg(args.rounds, "--rounds", 1), device=args.device)
    print(f"{len(manifest['programs'])} programs in {args.out}; run {args.out}/run_on_phone.sh "
          f"with a phone attached, then `codesign ingest {args.out}/results --out CSV`")
    return EXIT_OK


def _cmd_ingest(args) -> int:
    from codesign.bundle import ingest

    summary = ingest(Path(args.results), Path(args.out), device=args.device,
                     manifest_path=Path(args.manifest) if args.manifest else None)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['n_ingested']} rows appended to {summary['out']} (column "
              f"{summary['device']}); {len(summary['skipped_already_in_out'])} already there, "
              f"{len(summary['failed'])} failed on the device, {len(summary['missing'])} missing")
        for cid, why in summary["failed"].items():
            print(f"  failed {cid}: {why}")
    return EXIT_OK


def _cmd_devices(args) -> int:
    from codesign.report_tables import device_json, format_device, format_device_list
    from codesign.cost_models.devices import catalog_names, load_device

    if args.action == "show":
        if not args.name:
            raise BadInput("codesign devices show: give a device name; valid: "
                           + ", ".join(catalog_names()))
        spec = load_device(args.name)
        print(json.dumps(device_json(spec), indent=2) if args.json else format_device(spec))
        return EXIT_OK
    if args.name:
        raise BadInput(f"codesign devices: unexpected argument {args.name!r} (did you mean "
                       f"'codesign devices show {args.name}'?)")
    specs = [load_device(n) for n in catalog_names()]
    if args.json:
        print(json.dumps([device_json(s, brief=True) for s in specs], indent=2))
    else:
        print(format_device_list(specs))
    return EXIT_OK


def _cmd_bench(args) -> int:
    if args.suite == "scoring":
        from codesign.bench_scoring import run_scoring_benchmark

        result = run_scoring_benchmark(1000 if args.quick else 10_000,
                                       backend=args.backend or "codesign",
                                       reference_candidates=200 if args.quick else 1000)
    elif args.backend is not None:
        raise BadInput("codesign bench kernels: --backend applies to the scoring suite only")
    else:
        from codesign.calibrate_tiles import space_gemm_shapes
        from codesign.kernels.bench import run_kernel_benchmarks

        result = run_kernel_benchmarks(quick=args.quick, tile_shapes=space_gemm_shapes("max"))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            if not isinstance(value, dict):
                print(f"{key:32s} {value:.3f}" if isinstance(value, float) else f"{key:32s} {value}")
    return EXIT_OK


def _cmd_sweep(args) -> int:
    from codesign.sweep import SweepConfig, format_summary, parse_list, run_sweep

    try:
        seed = int(args.seed)
    except ValueError:
        raise BadInput(f"--seed must be an integer, got {args.seed!r}") from None
    config = SweepConfig(
        devices=parse_list(args.devices, "--devices"), budgets=parse_list(args.budgets, "--budgets"),
        out=Path(args.out), backend=args.backend, space=args.space,
        trials=parse_positive_int(args.trials, "--trials"), seed=seed, sampler=args.sampler,
        cost_model=args.cost_model, evaluator=args.evaluator, ray_address=args.ray_address)
    result = run_sweep(config, echo=lambda line: print(line, file=sys.stderr))
    print(format_summary(result))
    if result.n_failed:
        print(f"codesign sweep: {result.n_failed} of {len(result.rows)} runs failed "
              f"(log: {result.out / 'sweep.log'})", file=sys.stderr)
        return EXIT_FAILURE
    if result.n_no_feasible:
        print(f"codesign sweep: {result.n_no_feasible} of {len(result.rows)} runs have no "
              f"feasible candidate (status no-feasible in {result.out / 'sweep.json'})",
              file=sys.stderr)
        return EXIT_NO_FEASIBLE
    return EXIT_OK


def _cmd_report(args) -> int:
    from codesign.report import report

    member = None
    if args.member is not None:
        try:
            member = int(args.member)
        except ValueError:
            raise BadInput(f"--member must be a trial number, got {args.member!r}") from None
    print(report(Path(args.run_dir), member=member, html=args.html))
    return EXIT_OK


COMMANDS = {"report": _cmd_report, "search": _cmd_search, "predict": _cmd_predict, "calibrate": _cmd_calibrate, "devices": _cmd_devices, "bench": _cmd_bench,
            "sweep": _cmd_sweep, "export": _cmd_export, "measure": _cmd_measure,
            "bundle": _cmd_bundle, "ingest": _cmd_ingest}


def _attach_negative_values(argv: list[str]) -> list[str]:
    """``--budget -1ms`` -> ``--budget=-1ms`` so the value reaches validation (argparse would
    take ``-1ms`` for an option and say only 'expected one argument')."""
    out: list[str] = []
    for token in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and len(token) > 1 \
                and token[0] == "-" and (token[1].isdigit() or token[1] == "."):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def _user_errors() -> tuple[type[Exception], ...]:
    """The exception types that mean bad input (exit 2); anything else is a failure (exit 1)."""
    from codesign.cost_models.base import UnpriceableOp
    from codesign.cost_models.devices import SpecError
    from codesign.cost_models.learned import ModelFormatError
    from codesign.cost_models.lowering import LoweringError

    return (BadInput, SpecError, LoweringError, UnpriceableOp, ModelFormatError)


def _log_failure(command: str) -> Path:
    log_dir = Path(os.environ.get("CODESIGN_LOG_DIR", Path(tempfile.gettempdir()) / "codesign-logs"))
    log_dir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    path = log_dir / f"{command}-{stamp}-{os.getpid()}.log"
    path.write_text(traceback.format_exc())
    return path


def main(argv: list[str] | None = None) -> int:
    logging.getLogger("torchao").setLevel(logging.ERROR)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own log and table say what ran
    argv = _attach_negative_values(sys.argv[1:] if argv is None else list(argv))
    command = "codesign"
    try:
        args = _build_parser().parse_args(argv)
        command = args.command
        return COMMANDS[command](args)
    except _user_errors() as exc:
        message = " ".join(str(exc).split())  # one line, whatever the source wrote
        if not message.startswith("codesign"):
            message = f"codesign {command}: error: {message}"
        print(message, file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # output piped into head/less that closed early: not a failure
        sys.stderr.close()
        return EXIT_OK
    except KeyboardInterrupt:
        print(f"codesign {command}: interrupted", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as exc:
        path = _log_failure(command)
        print(f"codesign {command}: failed: {type(exc).__name__}: {exc} (log: {path})",
              file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
