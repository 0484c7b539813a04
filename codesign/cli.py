"""The ``codesign`` command line (contract: ../shared/CLI.md).

Exit codes: 0 success; 2 bad input (one line on stderr naming the problem, no traceback);
1 a failure while running (message + the path of a log holding the traceback); 3 (search,
sweep) trials completed but no candidate fits the budget.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import sys
import tempfile
import traceback
from pathlib import Path

from codesign.cli_parser import DEFAULT_FINETUNE_STEPS, build_parser
from codesign.userinput import BadInput, parse_duration, parse_shape

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2
EXIT_NO_FEASIBLE = 3  # search / sweep: trials completed, but no candidate fits the budget


def _cmd_predict(args) -> int:
    from codesign.pricing import price_module
    from codesign.report_tables import format_prediction
    from codesign.userinput import build_user_model
    from codesign.cost_models.devices import load_device

    if args.phase is not None:
        from codesign.llm_predict import run_phase
        return run_phase(args)
    lm_only = [flag for flag, value in (("--prompt-len", args.prompt_len),
                                        ("--context", args.context),
                                        ("--group-size", args.group_size)) if value is not None]
    if lm_only:
        raise BadInput(f"{', '.join(lm_only)} need --phase prefill|decode (a causal LM)")
    if args.input_shape is None:
        raise BadInput("give --input-shape (or --phase prefill|decode for a causal LM)")
    if args.dtype not in ("fp32", "fp16", "int8"):
        raise BadInput(f"unknown --dtype {args.dtype!r}; valid: fp32, fp16, int8")
    shape = parse_shape(args.input_shape)
    device = load_device(args.device)
    model = build_user_model(args.model)
    priced = price_module(model, shape, device, backend=args.backend, dtype=args.dtype,
                          threads=args.threads, cost_model=args.cost_model,
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

    budget = parse_duration(args.budget, "--budget")
    if args.sampler not in SAMPLERS:
        raise BadInput(f"unknown --sampler {args.sampler!r}; valid: {', '.join(SAMPLERS)}")
    if args.resume and args.out:
        raise BadInput("give either --out (a new run) or --resume (an existing one), not both")
    config = SearchConfig(
        device=args.device, budget_s=budget, budget_text=args.budget, backend=args.backend,
        space=args.space, trials=args.trials, timeout_s=args.timeout, seed=args.seed,
        sampler=args.sampler, cost_model=args.cost_model, evaluator=args.evaluator,
        cost_model_file=Path(args.cost_model_file) if args.cost_model_file else None,
        workers=args.workers, ray_address=args.ray_address,
        baseline=Path(args.baseline) if args.baseline else None,
        out=Path(args.out) if args.out else None,
        resume=Path(args.resume) if args.resume else None, ttft_budget_s=args.ttft_budget,
        min_accuracy=args.min_accuracy, task=args.task,
        finetune_steps=(args.finetune_steps if args.finetune_steps is not None
                        else 0 if args.evaluator else DEFAULT_FINETUNE_STEPS),
        max_formats=args.max_formats, predictor_trials=args.predictor_trials,
        threads=args.threads,
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

    result = calibrate(args.space, Path(args.measurements), args.target,
                       None if args.prior_columns is None else args.prior_columns.split(","),
                       args.samples, args.seed,
                       Path(args.save) if args.save else None, kind=args.cost_model,
                       device=args.device, backend=args.backend,
                       threads=args.threads)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:24s} {value}")
    return EXIT_OK


def _cmd_measure(args) -> int:
    from codesign.measure_cmd import MeasureConfig, run_measure

    config = MeasureConfig(
        device=args.device, space=args.space, backend=args.backend, out=Path(args.out),
        n=args.n, seed=args.seed, threads=args.threads, warmup=args.warmup,
        repeats=args.repeats, rounds=args.rounds, noise_candidates=args.noise_candidates,
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
        args.space, args.n, Path(args.out), backend=args.backend, seed=args.seed,
        threads=args.threads, warmup=args.warmup, repeats=args.repeats, rounds=args.rounds,
        device=args.device)
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

    config = SweepConfig(
        devices=parse_list(args.devices, "--devices"), budgets=parse_list(args.budgets, "--budgets"),
        out=Path(args.out), backend=args.backend, space=args.space,
        trials=args.trials, seed=args.seed, sampler=args.sampler,
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


def _cmd_run(args) -> int:
    from codesign.run_cmd import cmd_run

    return cmd_run(args)


def _cmd_report(args) -> int:
    from codesign.report import report

    print(report(Path(args.run_dir), member=args.member, html=args.html))
    return EXIT_OK


COMMANDS = {"report": _cmd_report, "search": _cmd_search, "predict": _cmd_predict,
            "calibrate": _cmd_calibrate, "devices": _cmd_devices, "bench": _cmd_bench,
            "sweep": _cmd_sweep, "export": _cmd_export, "measure": _cmd_measure,
            "bundle": _cmd_bundle, "ingest": _cmd_ingest, "run": _cmd_run}


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
    # torchao 0.18 registers enums with torch's pytree, which warns (a deprecation aimed at
    # torchao, not something a user can act on) on every command that imports it
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own log and table say what ran
    argv = _attach_negative_values(sys.argv[1:] if argv is None else list(argv))
    command = "codesign"
    try:
        args = build_parser(__doc__.splitlines()[0]).parse_args(argv)
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
