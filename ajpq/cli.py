"""Command line: ``ajpq search --config tune_configs/<name>.yaml [--set key=value ...] [--resume]``,
``ajpq export --config tune_configs/<name>.yaml [--steps N] [--out PATH]`` and
``ajpq sync <run dir>``, ``ajpq sweep --config tune_configs/<sweep>.yaml [--resume]`` and
``ajpq submit --address http://head:8265 --config <search or sweep>.yaml [--wait]``."""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading
import traceback
import warnings

from ajpq.core.redact import redact
from ajpq.search.config import ConfigError, load_config

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ajpq",
        description="Joint pruning + mixed-precision quantization search (pruning = 0-bit quantization).",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback behind an error (also AJPQ_DEBUG=1)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    search = commands.add_parser(
        "search",
        help="run a compression search (DDPG on Ray, every policy in MLflow)",
        description="Run a compression search described by a YAML config.",
    )
    search.add_argument(
        "--config", required=True, help="YAML config, e.g. tune_configs/digits_demo.yaml"
    )
    search.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set agent.episodes=10 (repeatable)",
    )
    search.add_argument(
        "--resume",
        action="store_true",
        help="continue the last run of this config from its checkpoint",
    )
    search.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: tracking.uri, else $MLFLOW_TRACKING_URI, "
        "else sqlite:///mlflow.db in the working directory)",
    )
    sweep = commands.add_parser(
        "sweep",
        help="run a Ray Tune sweep whose trials are whole searches",
        description="Run a sweep: a search config plus a sweep: section (grid/random values "
        "for any config key); one MLflow sweep run, one search run per trial, a Pareto front.",
    )
    sweep.add_argument("--config", required=True, help="e.g. tune_configs/sweep_demo.yaml")
    sweep.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    sweep.add_argument(
        "--resume",
        action="store_true",
        help="continue the last sweep of this config: finished trials are not rerun",
    )
    sweep.add_argument("--tracking-uri", help="MLflow tracking URI (as for ajpq search)")
    submit = commands.add_parser(
        "submit",
        help="send a search or sweep to a running Ray cluster (Ray Jobs API)",
        description="Submit a search or sweep config as a Ray job: the job carries the "
        "project's code and the config; it connects to the cluster (ray_address=auto) and "
        "writes runs to ~/ajpq_runs on the head.",
    )
    submit.add_argument(
        "--address",
        default=os.environ.get("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:8265"),
        help="the head's dashboard (default $RAY_API_SERVER_ADDRESS, else http://127.0.0.1:8265)",
    )
    submit.add_argument("--config", required=True, help="a search or sweep YAML")
    submit.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    submit.add_argument("--tracking-uri", help="MLflow tracking URI as the cluster sees it")
    submit.add_argument("--wait", action="store_true", help="wait for the job and print its logs")
    export = commands.add_parser(
        "export",
        help="finetune the best policy of a search longer and write the compressed model",
        description="Finetune the best policy of a search longer, export it as a compressed "
        "model file, reload it and report its test accuracy.",
    )
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--config", help="the search's YAML config: exports its latest run")
    which.add_argument("--run-dir", help="a search's run directory (ajpq_runs/<run>/<time>)")
    export.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    export.add_argument(
        "--steps",
        type=int,
        help="finetune steps (default: scoring.long_steps, 10x the search's finetune steps)",
    )
    export.add_argument("--out", help="artifact path (default: <run dir>/compressed.pt)")
    onnx = export.add_mutually_exclusive_group()
    onnx.add_argument(
        "--onnx",
        action="store_const",
        const="integer",
        help="also write the network as integer ONNX (<out>.onnx: QDQ, int8 weights and "
        "activations, integer kernels in onnxruntime) and check it with onnxruntime",
    )
    onnx.add_argument(
        "--onnx-float",
        dest="onnx",
        action="store_const",
        const="float",
        help="the same, as float ONNX (dequantized weights, activation grids as plain ops)",
    )
    onnx.add_argument(
        "--onnx-tensorrt",
        dest="onnx",
        action="store_const",
        const="tensorrt",
        help="the same, integer ONNX in TensorRT's form (every activation int8 at zero point 0; "
        "an 8-bit unsigned activation becomes 7 bits), checked with onnxruntime here",
    )
    sync = commands.add_parser(
        "sync",
        help="push a search's records that have not reached MLflow yet",
        description="Write the journaled records of a search that are not in MLflow yet "
        "(the tracking server was down, or the search stopped first) into its parent run.",
    )
    sync.add_argument("run_dir", help="the search's run folder (ajpq_runs/<run>/<time>)")
    return parser


def _sync(args: argparse.Namespace) -> int:
    from ajpq.run.sync import sync_run

    _configure_logging()
    try:
        pushed, waiting = sync_run(args.run_dir)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        return _fail(error)
    print(f"{pushed} records pushed to MLflow, {waiting} still waiting")
    return 0 if waiting == 0 else 1


def _export(args: argparse.Namespace) -> int:
    from ajpq.run.export_run import export_best, latest_run_dir

    try:
        run_dir = args.run_dir or latest_run_dir(load_config(args.config, list(args.overrides)))
        _configure_logging()
        result = export_best(run_dir, args.steps, args.out, args.onnx)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        return _fail(error)
    log = logging.getLogger("ajpq")
    log.info("")
    log.info("compressed model: %s", result["path"])
    log.info(
        "  %d bytes, %.1fx smaller than the fp32 model file (%d bytes)",
        result["file_bytes"],
        result["file_ratio"],
        result["fp32_file_bytes"],
    )
    log.info(
        "  test accuracy %.4f after %d finetune steps (fp32 %.4f); load with "
        "ajpq.export.load_compressed",
        result["test_accuracy"],
        result["finetune_steps"],
        result["fp32_test_accuracy"],
    )
    if "onnx_path" in result:
        log.info(
            "ONNX model (%s): %s (%d bytes); onnxruntime: test accuracy %.4f, largest output "
            "difference %.2g, integer operators %s",
            result["onnx_form"],
            result["onnx_path"],
            result["onnx_bytes"],
            result["onnx_test_accuracy"],
            result["onnx_max_abs_diff"],
            result["onnx_integer_ops"] or "none",
        )
    if "onnx_speedup" in result:
        log.info(
            "  latency %.3g ms (spread %.2g, %s), fp32 ONNX %.3g ms: %.2fx faster",
            result["onnx_latency_ms"],
            result["onnx_latency_spread_ms"],
            result["onnx_latency_provider"],
            result["fp32_onnx_latency_ms"],
            result["onnx_speedup"],
        )
    return 0


def _corr(value: float | None) -> str:
    """A rank correlation for the summary ('-' when not measured)."""
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"


def _sweep(args: argparse.Namespace) -> int:
    from ajpq.search.sweep_config import load_sweep

    try:
        config = load_sweep(args.config, _overrides(args))
    except ConfigError as error:
        return _fail(error, "config error")
    _configure_logging()
    from ajpq.run.sweep import run_sweep

    _stop_cleanly_on_sigterm()
    try:
        outcome = run_sweep(config, resume=args.resume)
    except KeyboardInterrupt:
        print("ajpq: sweep interrupted; continue it with --resume", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as error:
        return _fail(error)
    log = logging.getLogger("ajpq")
    keys = sorted(set(config.sweep.grid) | set(config.sweep.random))
    log.info("")
    log.info("best policy of each trial:")
    log.info(
        "  %s", " | ".join([*keys, "val acc", "ratio", "BitOps", "episode", "proxy rank corr"])
    )
    for trial in outcome.trials:
        log.info(
            "  %s",
            " | ".join(
                [
                    *(str(trial.get(k, "")) for k in keys),
                    f"{trial['accuracy']:.4f}",
                    f"{trial['compression_ratio']:.1f}x",
                    f"{trial['bitops_ratio']:.4f}",
                    str(trial["episode"]),
                    _corr(trial.get("proxy_rank_corr")),
                ]
            ),
        )
    log.info("Pareto front (accuracy vs compression ratio): %d policies", len(outcome.front))
    for name, path in outcome.files.items():
        log.info("  %s: %s", name, path)
    log.info("  MLflow: sweep run %s in %s", outcome.sweep_run_id, outcome.tracking_uri)
    if outcome.errors:
        log.info("  %d trials failed; see %s", outcome.errors, outcome.sweep_dir)
        return 1
    return 0


def _submit(args: argparse.Namespace) -> int:
    from ajpq.run.submit import submit_job

    _configure_logging()
    try:
        job = submit_job(args.address, args.config, _overrides(args), wait=args.wait)
    except (ConfigError, ValueError) as error:
        return _fail(error)
    if not args.wait:
        print(
            f"submitted {job.job_id}; follow it with: ray job logs {job.job_id} --follow "
            f"--address {job.address}"
        )
        return 0
    print(job.logs)
    print(f"job {job.job_id}: {job.status}")
    return 0 if job.status == "SUCCEEDED" else 1


def _fail(error: BaseException, kind: str = "error") -> int:
    """One line for the user (secrets masked), exit 2; the traceback with --debug."""
    if os.environ.get("AJPQ_DEBUG") == "1":
        traceback.print_exception(error)
    text = " ".join(str(error).split())  # one line, whatever the message held
    print(f"ajpq: {kind}: {redact(text)}", file=sys.stderr)
    return 2


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop_cleanly_on_sigterm() -> None:
    """SIGTERM (a job scheduler, `kill`) stops as cleanly as Ctrl-C: checkpoint, flush, KILLED."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)


def _overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` values, then ``--tracking-uri`` as ``tracking.uri``."""
    overrides = list(args.overrides)
    if args.tracking_uri:
        overrides.append(f"tracking.uri={args.tracking_uri}")
    return overrides


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stdout
    )
    for noisy in ("ray", "mlflow", "alembic", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.debug:
        os.environ["AJPQ_DEBUG"] = "1"
    if args.command == "export":
        return _export(args)
    if args.command == "sync":
        return _sync(args)
    if args.command == "sweep":
        return _sweep(args)
    if args.command == "submit":
        return _submit(args)
    try:
        config = load_config(args.config, _overrides(args))
    except ConfigError as error:
        return _fail(error, "config error")
    _configure_logging()
    from ajpq.run.driver import run_search
    from ajpq.run.resume import ResumeError

    _stop_cleanly_on_sigterm()
    try:
        outcome = run_search(config, resume=args.resume, config_path=args.config)
    except (ResumeError, FileNotFoundError, ValueError) as error:
        return _fail(error)
    log = logging.getLogger("ajpq")
    best = outcome.best
    if best is None:
        why = f", most often: {outcome.top_error}" if outcome.top_error else ""
        what = f"no successful evaluation in {outcome.episodes} episodes{why}"
        if config.budget.kind.value == "latency" and not outcome.top_error:
            what = (
                f"no policy of {outcome.episodes} met the {config.budget.value:g} ms ceiling as "
                "measured (the latency table predicted they would); raise the ceiling"
            )
        print(f"ajpq: {what}; see {outcome.run_dir}", file=sys.stderr)
        return 1
    log.info("")
    if outcome.stats.get("infra_failed"):
        log.info(
            "%d evaluation(s) failed on the infrastructure (out of memory, lost nodes); "
            "--resume scores them again",
            outcome.stats["infra_failed"],
        )
    if outcome.stats.get("screened"):
        log.info(
            "%d proposal(s) passed over by the accuracy predictor (agent.screen %d), not scored",
            outcome.stats["screened"],
            config.agent.screen,
        )
    log.info("best policy (episode %d of %d):", best.episode, outcome.episodes)
    log.info(
        "  validation accuracy %.4f (fp32 %.4f, drop %.4f)",
        best.accuracy,
        outcome.fp32_val_accuracy,
        best.accuracy_drop,
    )
    if outcome.best_test_accuracy is not None:
        log.info(
            "  test accuracy %.4f (fp32 %.4f; the test split is used for this report only)",
            outcome.best_test_accuracy,
            outcome.fp32_test_accuracy,
        )
    log.info(
        "  size %.0f bytes, %.1fx smaller than fp32; BitOps %.4f of fp32; latency %.3f ms",
        best.size_bytes,
        best.compression_ratio,
        best.bitops_ratio,
        best.latency_ms,
    )
    if outcome.curve:
        log.info(
            "  mean val acc per quarter of the episodes: %s (a search that learns rises)",
            " / ".join(f"{value:.4f}" for value in outcome.curve),
        )
    log.info("  saved to %s", outcome.best_policy_path)
    if outcome.latency_table_error is not None:
        log.info(
            "  latency table: median error %.1f%% of the measured latency over the scored policies",
            100 * outcome.latency_table_error,
        )
    if outcome.fidelity:
        log.info(
            "  proxy fidelity: rank correlation %.2f (Spearman), %.2f (Kendall) between the "
            "search's score and a %d-step finetune over %d policies; best chosen by the long score",
            outcome.fidelity["spearman"],
            outcome.fidelity["kendall"],
            outcome.fidelity["steps"],
            len(outcome.fidelity["rows"]),
        )
    if outcome.best_model:
        log.info(
            "  compressed file %s: %d bytes, %.1fx smaller than fp32's, test accuracy %.4f",
            outcome.best_model_path,
            outcome.best_model["file_bytes"],
            outcome.best_model["file_ratio"],
            outcome.best_model["test_accuracy"],
        )
    if outcome.best_model and "onnx_speedup" in outcome.best_model:
        m = outcome.best_model
        log.info(
            "  its %s ONNX %s: %.3f ms a call (%s), fp32's ONNX %.3f ms (%.2fx; batch %d), "
            "test accuracy %.4f",
            *(m[k] for k in ("onnx_form", "onnx_path", "onnx_latency_ms", "onnx_latency_provider")),
            *(m[k] for k in ("fp32_onnx_latency_ms", "onnx_speedup")),
            config.scoring.latency_batch_size,
            m["onnx_test_accuracy"],
        )
    if outcome.registered:
        log.info("  registered in the MLflow Model Registry as %s", outcome.registered)
    log.info("  MLflow: parent run %s in %s", outcome.parent_run_id, outcome.tracking_uri)
    if outcome.waiting:
        log.info(
            "  %d records are not in MLflow yet; push them with: ajpq sync %s",
            outcome.waiting,
            outcome.run_dir,
        )
    if outcome.tracking_uri and outcome.tracking_uri.startswith(("http://", "https://")):
        log.info("  compare the policies in the MLflow UI: %s", outcome.ui_link)
    else:
        log.info(
            "  compare the policies in the MLflow UI: make mlflow-ui, then %s", outcome.ui_link
        )
    if outcome.interrupted:
        log.info("  interrupted: continue with --resume")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
