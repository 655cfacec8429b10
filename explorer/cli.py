"""The headless CLI: ``pruning-explorer`` and ``python -m explorer`` are the same program.

A user's mistake (bad file, unknown layer, bad ratio, wrong input shape...) prints one line on
stderr naming the culprit and exits with code 2; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from explorer.errors import DataError, ExplorerError

__all__ = ["main"]

EXIT_USAGE = 2


class _UsageError(ExplorerError):
    """A bad command line (unknown flag, bad value)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse prints usage too)
        raise _UsageError(f"{self.prog}: {message}")


class ProgressBar:
    """A text progress bar on stderr: redrawn in place on a terminal, one line per 10% otherwise."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self._last_decile = -1

    def __call__(self, fraction: float, message: str) -> None:
        if self.tty:
            filled = int(30 * fraction)
            sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {100 * fraction:5.1f}% {message[:60]:<60}")
            if fraction >= 1:
                sys.stderr.write("\n")
            sys.stderr.flush()
        elif int(10 * fraction) > self._last_decile:
            self._last_decile = int(10 * fraction)
            print(f"{self.label}: {100 * fraction:.0f}% {message}", file=sys.stderr)


def _ratios(text: str) -> list[float]:
    from explorer.plan import check_ratio

    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise _UsageError(f"--ratios {text!r}: expected comma-separated numbers like 0.1,0.2,0.5") from None
    if not values:
        raise _UsageError(f"--ratios {text!r}: no ratio given")
    return [check_ratio(v, f"--ratios {v}") for v in values]


def _subject(args: argparse.Namespace) -> Any:
    from explorer.subject import Subject

    return Subject(args.model, args.data, threads=getattr(args, "threads", 1), runs=getattr(args, "runs", 50))


def _load_plan(path: str, subject: Any) -> Any:
    from explorer.plan import PruningPlan

    plan = PruningPlan.load(path)
    try:
        plan.check_layers(subject.layer_names)
    except ExplorerError as e:
        raise type(e)(f"{path}: {e}") from None
    return plan


# --- commands ------------------------------------------------------------------------------------


def cmd_layers(args: argparse.Namespace) -> int:
    if args.model == "zoo:list":
        from explorer.models import ZOO

        if args.json:
            print(json.dumps([{"name": f"zoo:{e.name}", "description": e.description} for e in ZOO.values()], indent=2))
        else:
            for e in ZOO.values():
                print(f"zoo:{e.name:<16} {e.description}")
        return 0
    subject = _subject(args)
    inv = subject.inventory
    if args.json:
        print(json.dumps([layer.to_dict() for layer in inv.layers], indent=2))
        return 0
    name_w = max([28, *(len(layer.name) for layer in inv.layers)])
    type_w = max([8, *(len(layer.type) for layer in inv.layers)])
    print(f"{'layer':<{name_w}} {'type':<{type_w}} {'weight shape':<16} {'params':>10} {'MACs':>12}  group")
    for layer in inv.layers:
        shape = "x".join(map(str, layer.shape))
        group = layer.group if layer.group else f"- ({layer.note})"
        print(f"{layer.name:<{name_w}} {layer.type:<{type_w}} {shape:<16} {layer.params:>10,} {layer.macs:>12,}  {group}")
    print(f"total: {inv.total_params:,} parameters, {inv.total_macs:,} MACs per sample")
    if inv.structured_error:
        print(f"note: structured methods are off for this model: {inv.structured_error}")
    return 0


def _print_metrics(result: dict[str, Any], method_notes: list[str]) -> None:
    dense = result["dense"]
    labelled = result.get("labels", True)
    rows = [
        ("accuracy" if labelled else "agreement", "accuracy", lambda v: f"{100 * v:.2f}%"),
        ("loss" if labelled else "KL from dense", "loss", lambda v: f"{v:.4f}"),
        ("params", "params_total", lambda v: f"{v:,}"),
        ("nonzero params", "params_nonzero", lambda v: f"{v:,}"),
        ("MACs", "macs", lambda v: f"{v:,}"),
        ("ONNX bytes", "onnx_bytes", lambda v: f"{v:,}"),
        ("ONNX gzip bytes", "onnx_gzip_bytes", lambda v: f"{v:,}"),
        ("latency median", "latency_ms_median", lambda v: f"{v:.3f} ms"),
        ("latency p90", "latency_ms_p90", lambda v: f"{v:.3f} ms"),
    ]
    print(f"{'':<18} {'dense':>14} {'pruned':>14}")
    for label, key, fmt in rows:
        print(f"{label:<18} {fmt(dense[key]):>14} {fmt(result[key]):>14}")
    speedup = dense["latency_ms_median"] / result["latency_ms_median"]
    mac_ratio = dense["macs"] / result["macs"] if result["macs"] else float("inf")
    print(f"measured ORT speedup {speedup:.2f}x (median, batch 1, {result['latency_threads']} thread(s)); "
          f"MAC ratio {mac_ratio:.2f}x")
    for note in method_notes:
        print(f"note: {note}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    subject = _subject(args)
    plan = _load_plan(args.plan, subject) if args.plan else None
    result = subject.evaluate(plan)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    from explorer.methods import get_method

    methods = sorted({plan.method_of(n) for n in plan.layers}) if plan else []
    _print_metrics(result, [f"{m}: {get_method(m).runtime_note}" for m in methods])
    return 0


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from explorer.methods import get_method
    from explorer.sensitivity import DEFAULT_RATIOS, scan

    out = Path(args.out)
    if out.suffix not in (".csv", ".json"):
        raise _UsageError(f"--out {args.out}: must end in .csv or .json")
    get_method(args.method)
    ratios = _ratios(args.ratios) if args.ratios else list(DEFAULT_RATIOS)
    subject = _subject(args)
    df = scan(subject, args.method, ratios, on_progress=ProgressBar("sensitivity"))
    try:
        if out.suffix == ".csv":
            df.to_csv(out, index=False)
        else:
            out.write_text(json.dumps(df.to_dict(orient="records"), indent=2) + "\n")
    except OSError as e:
        raise _UsageError(f"--out {args.out}: cannot write ({e.strerror})") from None
    print(f"wrote {len(df)} rows to {out}", file=sys.stderr)
    return 0


def cmd_allocate(args: argparse.Namespace) -> int:
    from explorer.allocate import Target, allocate, target_kinds
    from explorer.methods import get_method

    kind, value = next((k.name, v) for k in target_kinds() if (v := getattr(args, f"target_{k.name}")) is not None)
    try:
        target = Target(kind, value)
    except ExplorerError as e:
        raise type(e)(f"--target-{kind}: {e}") from None
    if args.method:
        get_method(args.method)
    subject = _subject(args)
    result = allocate(subject, target, args.method, on_progress=ProgressBar("allocate"))
    try:
        result.plan.save(args.out)
    except OSError as e:
        raise _UsageError(f"--out {args.out}: cannot write ({e.strerror})") from None
    unit = target.kind_spec.achieved_unit(result.size_metric)
    print(f"target     {target.describe()} ({result.plan.method})")
    print(f"achieved   {100 * result.achieved:.1f}% {unit}, measured "
          f"({'met' if result.met else 'NOT met'}; {result.rounds} round(s))")
    verified = "not verified" if result.verified_accuracy is None else f"{100 * result.verified_accuracy:.2f}%"
    line = (f"accuracy   dense {100 * result.dense_accuracy:.2f}%, predicted {100 * result.predicted_accuracy:.2f}%, "
            f"verified {verified}")
    if result.flagged and result.gap is not None:
        line += f"  (!) predicted and verified differ by {100 * abs(result.gap):.1f} points: the layers interact"
    print(line)
    if result.candidates:
        ranked = ", ".join(f"{name} {100 * acc:.2f}%" for name, acc in
                           sorted(result.candidates.items(), key=lambda kv: -kv[1]))
        print(f"compared   on the evaluation data, each at the target: {ranked}")
    if result.chosen != "knapsack":
        print(f"note       the {result.chosen} plan scored higher than the knapsack's on the data; kept it")
    print(f"plan       {len(result.plan.layers)} layer(s) -> {args.out}")
    if not result.met:
        print(f"warning: the measured value missed {target.describe()}", file=sys.stderr)
        return 1
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from explorer.loop import recover_pruned
    from explorer.report import export_bundle

    if args.distill and not args.finetune_epochs:
        raise _UsageError("--distill needs --finetune-epochs N")
    for flag, value in (("--temperature", args.temperature), ("--alpha", args.alpha), ("--patience", args.patience)):
        if value is not None and not args.finetune_epochs:
            raise _UsageError(f"{flag} needs --finetune-epochs N")
    if args.int8_mode != "auto" and not args.quantize:
        raise _UsageError("--int8-mode needs --quantize int8")
    subject = _subject(args)
    plan = _load_plan(args.plan, subject)
    # The app's Recover page and this command run the same stages (explorer.loop.recover_pruned):
    # batch-norm recalibration (on by default with fine-tuning), then fine-tuning.
    recalibrate = bool(args.finetune_epochs) if args.recalibrate_bn is None else args.recalibrate_bn
    model = recovery = None
    if recalibrate or args.finetune_epochs:
        model, recovery, tuned = recover_pruned(
            subject, subject.prune(plan), recalibrate=recalibrate, epochs=args.finetune_epochs or 0,
            distill=args.distill, temperature=args.temperature if args.temperature is not None else 2.0,
            alpha=args.alpha if args.alpha is not None else 0.5, patience=args.patience,
            on_progress=ProgressBar("recover"))
        if recovery is None:
            print("note: --recalibrate-bn: this model has no batch norm to recalibrate", file=sys.stderr)
            model = None
        if tuned is not None:
            first, best = tuned.history[0], tuned.history[tuned.best_epoch]
            if first.val_accuracy is not None and best.val_accuracy is not None:
                print(f"fine-tuned: epoch {tuned.best_epoch} of {len(tuned.history) - 1} kept ({tuned.stopped}), "
                      f"validation accuracy {100 * first.val_accuracy:.2f}% -> {100 * best.val_accuracy:.2f}%",
                      file=sys.stderr)
    files = export_bundle(subject, plan, args.out, on_progress=ProgressBar("export"), model=model,
                          quantize=args.quantize, recovery=recovery, int8_mode=args.int8_mode)
    for role, path in files.items():
        print(f"{role:<11} {path}")
    return 0


def app_script() -> Path:
    """app.py of the installed package (pruning_explorer_app) or of this checkout."""
    import importlib.util

    spec = importlib.util.find_spec("pruning_explorer_app")
    candidates = []
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "app.py" for p in spec.submodule_search_locations]
    candidates.append(Path(__file__).resolve().parent.parent / "app.py")
    for path in candidates:
        if path.is_file():
            return path
    raise DataError("app.py not found: the package was installed without its app")


def _inventory(model_spec: str, data_spec: str | None) -> Any:
    """The layer inventory of a model: from its data when given (or a zoo model), else from the
    input shape the model file declares (.onnx, .pt2)."""
    if data_spec or model_spec.startswith("zoo:"):
        from explorer.subject import Subject

        return Subject(model_spec, data_spec).inventory
    import torch

    from explorer.inspect import inventory
    from explorer.models import load_model
    from explorer.models.loaders import input_shape_of

    model = load_model(model_spec)
    shape = input_shape_of(model)
    if shape is None or any(d is None for d in shape):
        raise DataError(f"{model_spec}: the model does not declare its input shape; give --data SPEC")
    return inventory(model.eval(), torch.zeros(1, *shape))


def _write(path: str, text: str) -> None:
    try:
        Path(path).write_text(text)
    except OSError as e:
        raise _UsageError(f"--out {path}: cannot write ({e.strerror})") from None


def cmd_convert(args: argparse.Namespace) -> int:
    from explorer import convert
    from explorer.plan import PruningPlan

    if args.source is not None:  # NNI config list -> plan
        if args.plan or args.to:
            raise _UsageError("convert --from nni reads --config FILE (with --model SPEC); --plan and --to are "
                              "for the other direction")
        if not args.config or not args.model:
            raise _UsageError("convert --from nni needs --config FILE and --model SPEC")
        config = convert.load_config_list(args.config)
        inventory = _inventory(args.model, args.data)
        try:
            plan = convert.from_nni(config, inventory, args.method, model=args.model)
        except ExplorerError as e:
            raise type(e)(f"{args.config}: {e}") from None
        _write(args.out, plan.to_json() + "\n")
        print(f"plan       {len(plan.layers)} layer(s), {plan.method}, scope {plan.scope} -> {args.out}", file=sys.stderr)
        return 0
    if not args.plan or not args.to:
        raise _UsageError("convert needs --plan FILE --to nni|torch-pruning, or --from nni --config FILE --model SPEC")
    if args.config or args.method:
        raise _UsageError("--config and --method are for convert --from nni")
    if args.to == "nni" and (args.model or args.data or args.round_to):
        raise _UsageError("--model, --data and --round-to are for --to torch-pruning and --from nni")
    plan = PruningPlan.load(args.plan)
    try:
        if args.to == "nni":
            config = convert.to_nni(plan)
            _write(args.out, json.dumps(config, indent=2) + "\n")
            print(f"config_list {len(config)} entr{'y' if len(config) == 1 else 'ies'} -> {args.out}", file=sys.stderr)
            print(f"note: NNI pruner: {convert.nni_pruner(plan.method)}", file=sys.stderr)
        else:
            spec = args.model or (plan.model if plan.model and plan.model.startswith("zoo:") else None)
            inventory = _inventory(spec, args.data) if spec else None
            out = convert.to_torch_pruning(plan, inventory, args.round_to)
            _write(args.out, json.dumps(out, indent=2) + "\n")
            print(f"pruning_ratio_dict {len(out['pruning_ratio_dict'])} layer(s) -> {args.out}", file=sys.stderr)
            print(f"note: {out['note']}", file=sys.stderr)
    except ExplorerError as e:
        raise type(e)(f"{args.plan}: {e}") from None
    return 0


# The server process runs ui/serve.py's main (next to app.py, in the checkout and in the installed
# package alike): streamlit's CLI, told that app.py routes with st.navigation (no legacy page list
# from the pages/ folder), with the first model warming up meanwhile. explorer/ never imports
# streamlit: this is only the command line of that process.
_SERVER_MAIN = "import sys; sys.path.insert(0, sys.argv[1]); from ui.serve import main; main(sys.argv[2:])"
# No file watcher (it watched the whole checkout, .venv included, and overflowed inotify), no
# rerun on save: the app is served, not edited.
SERVER_FLAGS = ("--server.headless", "true", "--server.fileWatcherType", "none", "--server.runOnSave", "false",
                "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal")


def app_command(port: int, *extra: str) -> list[str]:
    """The command line that serves the app on ``port`` (``extra``: more streamlit flags)."""
    app = app_script()
    return [sys.executable, "-c", _SERVER_MAIN, str(app.parent), "run", str(app), "--server.port", str(port),
            *SERVER_FLAGS, *extra]


def cmd_app(args: argparse.Namespace) -> int:
    """Replace this process with the server: SIGTERM and Ctrl-C reach streamlit itself, and no
    child is left serving when the command is stopped."""
    env = dict(os.environ)
    # glibc gives every thread (streamlit runs each session's script in its own) its own malloc
    # arena, and freed memory stays in them: two arenas keep a long-running server's RSS down.
    env.setdefault("MALLOC_ARENA_MAX", "2")
    if args.model:
        env["PRUNING_EXPLORER_MODEL"] = args.model
    if args.data:
        env["PRUNING_EXPLORER_DATA"] = args.data
    cmd = app_command(args.port)
    print(f"Pruning Explorer: http://localhost:{args.port}", file=sys.stderr, flush=True)
    os.execvpe(cmd[0], cmd, env)
    return 0  # not reached: execvpe does not return


# --- parser --------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from explorer.subject import DEFAULT_MODEL

    parser = _Parser(prog="pruning-explorer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
        p.add_argument("--model", required=required, metavar="SPEC",
                       help="zoo:NAME, PATH.onnx, PATH.pt2 (torch.export.save), PATH.py:FUNC or "
                            "package.module:FUNC (zoo:list lists the zoo)")
        p.add_argument("--data", metavar="SPEC", help="zoo:NAME, PATH.npz, PATH.csv, an image folder (one subfolder per class) or "
                            "PATH.py:FUNC (zoo models bring their own)")

    def timing_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--threads", type=_positive_int, default=1, help="ONNX Runtime intra-op threads for latency")
        p.add_argument("--runs", type=_positive_int, default=50, help="timed runs (at least 30 are made)")

    p = sub.add_parser("app", help="launch the Streamlit app")
    p.add_argument("--port", type=_positive_int, default=8501)
    p.add_argument("--model", metavar="SPEC", help=f"model to open (default {DEFAULT_MODEL})")
    p.add_argument("--data", metavar="SPEC")
    p.set_defaults(func=cmd_app)

    p = sub.add_parser("layers", help="prunable layers and dependency groups")
    model_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("evaluate", help="accuracy, size and ORT latency, dense and pruned")
    model_args(p)
    p.add_argument("--plan", metavar="FILE")
    p.add_argument("--json", action="store_true")
    timing_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("sensitivity", help="per-layer accuracy and loss against pruning ratio")
    model_args(p)
    p.add_argument("--method", default="l1-unstructured")
    p.add_argument("--ratios", metavar="R1,R2,...", help="ratios in [0, 1) (default 0.1,...,0.9)")
    p.add_argument("--out", required=True, metavar="FILE", help="FILE.csv or FILE.json")
    p.set_defaults(func=cmd_sensitivity)

    p = sub.add_parser("allocate", help="per-layer ratios for a target, verified (predicted vs measured accuracy)")
    model_args(p)
    from explorer.allocate.targets import target_kinds

    kinds = target_kinds()
    defaults = ", ".join(f"{k.default_method} for --target-{k.name}" for k in kinds)
    p.add_argument("--method", help=f"pruning method (default: {defaults})")
    target = p.add_mutually_exclusive_group(required=True)
    for k in kinds:  # one flag per registered target kind
        target.add_argument(f"--target-{k.name}", type=float, metavar="F", help=k.cli_help)
    p.add_argument("--out", required=True, metavar="PLAN.json")
    timing_args(p)
    p.set_defaults(func=cmd_allocate)

    p = sub.add_parser("export", help="prune, measure and write the export bundle")
    model_args(p)
    p.add_argument("--plan", required=True, metavar="FILE")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--finetune-epochs", type=_positive_int, metavar="N",
                   help="fine-tune the pruned model N epochs on the training split before export (zeros stay "
                        "zero; the best validation epoch is kept); metrics.json then holds the fine-tuned numbers")
    p.add_argument("--recalibrate-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="re-estimate batch-norm statistics of the pruned model on the training split before "
                        "export (default: on with --finetune-epochs, off without)")
    p.add_argument("--distill", action="store_true",
                   help="with --finetune-epochs: distil from the dense model as teacher")
    p.add_argument("--temperature", type=float, metavar="T", help="with --distill: softening temperature (2)")
    p.add_argument("--alpha", type=float, metavar="A", help="with --distill: weight of the distillation term (0.5)")
    p.add_argument("--patience", type=_positive_int, metavar="N",
                   help="with --finetune-epochs: stop after N epochs without a better validation score")
    p.add_argument("--quantize", choices=["int8"],
                   help="also write model.int8.onnx and its numbers under 'int8' in metrics.json")
    p.add_argument("--int8-mode", choices=["auto", "dynamic", "static"], default="auto",
                   help="with --quantize int8: auto (dynamic without convolutions, static QDQ with), dynamic or "
                        "static")
    timing_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("convert", help="a plan to NNI's config_list or Torch-Pruning's pruning_ratio_dict, "
                                       "or an NNI config_list back to a plan")
    p.add_argument("--plan", metavar="FILE", help="the plan to convert")
    p.add_argument("--to", choices=["nni", "torch-pruning"])
    p.add_argument("--from", dest="source", choices=["nni"], help="read an NNI config_list (--config) into a plan")
    p.add_argument("--config", metavar="FILE", help="with --from nni: the config_list JSON")
    p.add_argument("--model", metavar="SPEC", help="with --from nni: the model whose layers the plan names; with "
                                                   "--to torch-pruning: lists ignored_layers (a zoo plan's own model "
                                                   "by default)")
    p.add_argument("--data", metavar="SPEC", help="with --model: data, for a model that does not declare its "
                                                  "input shape")
    p.add_argument("--method", help="with --from nni: the plan's method (default: l1-structured for out_channel "
                                    "granularity, l1-unstructured otherwise)")
    p.add_argument("--round-to", type=_positive_int, metavar="N",
                   help="with --to torch-pruning: the round_to to note (kept channels a multiple of N)")
    p.add_argument("--out", required=True, metavar="FILE")
    p.set_defaults(func=cmd_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except ExplorerError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
