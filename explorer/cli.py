"""The headless CLI: ``pruning-explorer`` and ``python -m explorer`` are the same program.

A user's mistake (bad file, unknown layer, bad ratio, wrong input shape...) prints one line on
stderr naming the culprit and exits with code 2; never a traceback.

One concern: the command line. One ``cmd_`` function per command, each a thin call into the
library, and the parser that documents every flag.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
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
            sys.stderr.write(
                f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {100 * fraction:5.1f}%"
                f" {message[:60]:<60}"
            )
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
        raise _UsageError(
            f"--ratios {text!r}: expected comma-separated numbers like 0.1,0.2,0.5"
        ) from None
    if not values:
        raise _UsageError(f"--ratios {text!r}: no ratio given")
    return [check_ratio(v, f"--ratios {v}") for v in values]


def _subject(args: argparse.Namespace) -> Any:
    from explorer.subject import Subject

    return Subject(
        args.model, args.data, threads=getattr(args, "threads", 1), runs=getattr(args, "runs", 50)
    )


def _load_plan(path: str, subject: Any) -> Any:
    from explorer.plan import PruningPlan

    plan = PruningPlan.load(path)
    try:
        plan.check_layers(subject.layer_names)
    except ExplorerError as e:
        raise type(e)(f"{path}: {e}") from None
    return plan


@contextlib.contextmanager
def _executor(args: argparse.Namespace) -> Iterator[Any]:
    """Where the points run: here, a local Ray (``--workers N``) or a cluster
    (``--ray-address``)."""
    from explorer.distributed import RayUnavailable, executor

    flag = "--ray-address" if args.ray_address else "--workers"
    try:
        ex = executor(args.workers, args.ray_address)
    except RayUnavailable as e:
        raise RayUnavailable(f"{flag}: {e}") from None
    try:
        yield ex
    finally:
        ex.close()


# --- commands ------------------------------------------------------------------------------------


def cmd_layers(args: argparse.Namespace) -> int:
    if args.model == "zoo:list":
        from explorer.models import ZOO

        if args.json:
            print(
                json.dumps(
                    [{"name": f"zoo:{e.name}", "description": e.description} for e in ZOO.values()],
                    indent=2,
                )
            )
        else:
            for e in ZOO.values():
                print(f"zoo:{e.name:<16} {e.description}")
        return 0
    subject = _subject(args)
    if args.blocks:
        return _print_blocks(subject, args.json)
    inv = subject.inventory
    if args.json:
        print(json.dumps([layer.to_dict() for layer in inv.layers], indent=2))
        return 0
    name_w = max([28, *(len(layer.name) for layer in inv.layers)])
    type_w = max([8, *(len(layer.type) for layer in inv.layers)])
    print(
        f"{'layer':<{name_w}} {'type':<{type_w}} {'weight shape':<16} {'params':>10} {'MACs':>12} "
        " group"
    )
    for layer in inv.layers:
        shape = "x".join(map(str, layer.shape))
        group = layer.group if layer.group else f"- ({layer.note})"
        print(
            f"{layer.name:<{name_w}} {layer.type:<{type_w}} {shape:<16} {layer.params:>10,}"
            f" {layer.macs:>12,}  {group}"
        )
    print(f"total: {inv.total_params:,} parameters, {inv.total_macs:,} MACs per sample")
    if inv.structured_error:
        print(f"note: structured methods are off for this model: {inv.structured_error}")
    if subject.blocks:
        print(
            f'{len(subject.blocks)} residual blocks can be removed whole (a plan\'s "blocks"):'
            " `layers --blocks` lists them"
        )
    return 0


def _print_blocks(subject: Any, as_json: bool) -> int:
    """The removable blocks: name, type, parameters and layers (a plan's ``"blocks"`` names
    them)."""
    from explorer.blocks import why_no_blocks

    blocks = subject.blocks
    if as_json:
        print(json.dumps([b.to_dict() for b in blocks], indent=2))
        return 0
    if not blocks:
        print(f"no removable block: {why_no_blocks(subject.model)}")
        return 0
    name_w = max([20, *(len(b.name) for b in blocks)])
    print(f"{'block':<{name_w}} {'type':<20} {'params':>10}  layers")
    for b in blocks:
        print(f"{b.name:<{name_w}} {b.type:<20} {b.params:>10,}  {', '.join(b.layers)}")
    print(
        f'{len(blocks)} blocks; a plan\'s "blocks": [...] removes them (each becomes the'
        " identity); `sensitivity --blocks` measures each one removed"
    )
    return 0


def _print_metrics(result: Any, method_notes: list[str]) -> None:
    """The evaluate table: every metric of ``explorer.metricspec`` dense and pruned, then the
    interleaved speedup."""
    from explorer.metricspec import SPECS

    dense, pruned, sp = result.dense, result.pruned, result.speedup
    width = max(len(s.name(result.labels)) for s in SPECS) + 2
    print(f"{'':<{width}} {'dense':>16} {'pruned':>16}  change")
    for s in SPECS:
        d, p = getattr(dense, s.key), getattr(pruned, s.key)
        change = s.delta(p, d)
        if s.unit == "ms":  # the interleaved ratio, never the difference of two numbers
            r = None if sp is None else sp.p90 if s.key == "latency_ms_p90" else sp.median
            change = (
                ""
                if r is None
                else f"{r.value:.2f}x speedup" + (" (within noise)" if r.within_noise else "")
            )
        print(
            f"{s.name(result.labels):<{width}} {s.format(d):>16} {s.format(p):>16}  {change or ''}"
        )
    mac = f"MAC ratio {result.mac_ratio:.2f}x"
    if sp is None:
        print(f"dense model alone (no plan); {mac}")
    else:
        verdict = (
            "within noise" if sp.within_noise else "SLOWER than dense" if sp.slower else "faster"
        )
        print(
            f"measured ORT speedup {sp.ratio:.2f}x, {verdict} (rounds"
            f" {sp.median.low:.2f}-{sp.median.high:.2f}x; {sp.method_text()}); p90"
            f" {sp.p90.value:.2f}x{' within noise' if sp.p90.within_noise else ''}; {mac}"
        )
    for note in method_notes:
        print(f"note: {note}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    subject = _subject(args)
    plan = _load_plan(args.plan, subject) if args.plan else None
    result = subject.evaluate(plan)
    slowdown = None
    if result.speedup is not None and result.speedup.slower:
        from explorer.rounding import explain_slowdown

        slowdown = explain_slowdown(
            subject, result, on_progress=ProgressBar("slower than dense: timing widths")
        )
    if args.rounded_out:
        if slowdown is None or slowdown.rounded_plan is None:
            print(
                f"note: no rounded plan written to {args.rounded_out}: the plan did not measure"
                " slower than dense" + ("" if slowdown is None else " in a way rounding changes"),
                file=sys.stderr,
            )
        else:
            try:
                slowdown.rounded_plan.save(args.rounded_out)
            except OSError as e:
                raise _UsageError(
                    f"--rounded-out {args.rounded_out}: cannot write ({e.strerror})"
                ) from None
    if args.json:
        out = result.to_dict()
        out["slowdown"] = slowdown.to_dict() if slowdown is not None else None
        print(json.dumps(out, indent=2))
        return 0
    from explorer.methods import get_method

    methods = sorted({plan.method_of(n) for n in plan.layers}) if plan else []
    print(f"fed: {result.inputs}" + (f"; used: {result.output}" if result.output else ""))
    _print_metrics(result, [f"{m}: {get_method(m).runtime_note}" for m in methods])
    if slowdown is not None:
        for line in slowdown.lines():
            print(f"slower: {line}")
        if slowdown.rounded_plan is not None and not args.rounded_out:
            print("slower: write the rounded plan with --rounded-out FILE")
        elif slowdown.rounded_plan is not None:
            print(f"slower: the rounded plan -> {args.rounded_out}")
    return 0


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from explorer.methods import get_method
    from explorer.sensitivity import DEFAULT_RATIOS, scan

    out = Path(args.out)
    if out.suffix not in (".csv", ".json"):
        raise _UsageError(f"--out {args.out}: must end in .csv or .json")
    if args.blocks and (args.ratios or args.method):
        raise _UsageError(
            "--blocks measures each block removed whole: it takes no --method or --ratios"
        )
    method = args.method or "l1-unstructured"
    get_method(method)
    ratios = _ratios(args.ratios) if args.ratios else list(DEFAULT_RATIOS)
    subject = _subject(args)
    if args.blocks:
        from explorer.sensitivity import block_scan

        df = block_scan(subject, on_progress=ProgressBar("blocks"))
    else:
        with _executor(args) as ex:
            df = scan(subject, method, ratios, on_progress=ProgressBar("sensitivity"), executor=ex)
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
    from explorer.allocate import Target, allocate, curve_needs, target_kinds
    from explorer.methods import get_method

    kind, value = next(
        (k.name, v) for k in target_kinds() if (v := getattr(args, f"target_{k.name}")) is not None
    )
    try:
        target = Target(kind, value)
    except ExplorerError as e:
        raise type(e)(f"--target-{kind}: {e}") from None
    if args.method:
        get_method(args.method)
    subject = _subject(args)
    with _executor(args) as ex:
        try:
            needs = curve_needs(
                subject, kind, args.method, round_to=args.round_to, curve_images=args.curve_images
            )
            print(
                f"curves: {needs.left} of {needs.left + needs.cached} sensitivity points to scan"
                f" ({needs.method} at {', '.join(f'{r:g}' for r in needs.ratios)}, each on"
                f" {needs.images} of the {len(subject.data.test)} evaluation samples; the rest"
                " cached)",
                file=sys.stderr,
            )
            result = allocate(
                subject,
                target,
                args.method,
                round_to=args.round_to,
                on_progress=ProgressBar("allocate"),
                executor=ex,
                curve_images=args.curve_images,
            )
        except ExplorerError as e:
            if "round_to" in str(e):
                raise type(e)(f"--round-to: {e}") from None
            raise
    try:
        result.plan.save(args.out)
    except OSError as e:
        raise _UsageError(f"--out {args.out}: cannot write ({e.strerror})") from None
    unit = target.kind_spec.achieved_unit(result.size_metric)
    rounding = (
        f", kept channels rounded up to multiples of {result.plan.round_to}"
        if result.plan.round_to
        else ""
    )
    print(f"target     {target.describe()} ({result.plan.method}{rounding})")
    print(
        f"achieved   {100 * result.achieved:.1f}% {unit}, measured "
        f"({'met' if result.met else 'NOT met'}; {result.rounds} round(s))"
    )
    if result.speedup is not None:
        share = result.speedup.latency_share
        print(
            f"timing     median {100 * share.value:.1f}% of dense, rounds"
            f" {100 * share.low:.1f}-{100 * share.high:.1f}% ({result.speedup.method_text()}); met"
            " only when every round is within the target"
        )
    verified = (
        "not verified"
        if result.verified_accuracy is None
        else f"{100 * result.verified_accuracy:.2f}%"
    )
    line = (
        f"accuracy   dense {100 * result.dense_accuracy:.2f}%, predicted"
        f" {100 * result.predicted_accuracy:.2f}%, verified {verified}"
    )
    if result.flagged and result.gap is not None:
        line += (
            f"  (!) predicted and verified differ by {100 * abs(result.gap):.1f} points: the layers"
            " interact"
        )
    print(line)
    if result.candidates:
        ranked = ", ".join(
            f"{name} {100 * acc:.2f}%"
            for name, acc in sorted(result.candidates.items(), key=lambda kv: -kv[1])
        )
        print(f"compared   on {result.compared_on}, each at the target: {ranked}")
    if result.curves_on is not None:
        what = "accuracy" if subject.data.has_labels else "agreement"
        print(f"curves     {result.curves_on.describe(result.verified_accuracy, what)}")
    if result.chosen != "knapsack":
        print(
            f"note       the {result.chosen} plan scored higher than the knapsack's on the data;"
            " kept it"
        )
    print(f"plan       {len(result.plan.layers)} layer(s) -> {args.out}")
    if not result.met:
        print(f"warning: the measured value missed {target.describe()}", file=sys.stderr)
        return 1
    return 0


def _export_schedule(args: argparse.Namespace, plan: Any) -> Any:
    """The schedule the export runs: ``--schedule`` (with ``--rounds``, ``--finetune-epochs``,
    ``--distill``) over the plan's own, which is replayed as it is when no flag is given. None: no
    schedule (prune, no training), as before schedules existed."""
    from explorer.schedules import SCHEDULES, ScheduleSpec

    spec = plan.schedule
    if args.schedule is not None:
        spec = (
            spec if spec is not None and spec.name == args.schedule else ScheduleSpec(args.schedule)
        )
    elif spec is None and (args.finetune_epochs or args.rounds):
        spec = ScheduleSpec("one-shot")
    if spec is None:
        return None
    options: dict[str, Any] = {}
    names = [o.name for o in SCHEDULES[spec.name].options]
    if args.rounds is not None:
        if "rounds" not in names:
            raise _UsageError(
                f"--rounds is for the iterative and lottery schedules, not {spec.name!r}"
            )
        options["rounds"] = args.rounds
    if args.finetune_epochs:
        options["finetune_epochs" if spec.name == "regularized" else "epochs"] = (
            args.finetune_epochs
        )
    if args.distill:
        if spec.name != "one-shot":
            raise _UsageError(f"--distill is for the one-shot schedule, not {spec.name!r}")
        options["distill"] = True
    return spec.with_options(**options) if options else spec


def cmd_export(args: argparse.Namespace) -> int:
    from explorer.report import export_bundle

    if args.distill and not args.finetune_epochs:
        raise _UsageError("--distill needs --finetune-epochs N")
    for flag, value in (
        ("--temperature", args.temperature),
        ("--alpha", args.alpha),
        ("--patience", args.patience),
    ):
        if value is not None and not args.finetune_epochs:
            raise _UsageError(f"{flag} needs --finetune-epochs N")
    if args.int8_mode != "auto" and not args.quantize:
        raise _UsageError("--int8-mode needs --quantize int8")
    subject = _subject(args)
    plan = _load_plan(args.plan, subject)
    plan = plan.with_schedule(_export_schedule(args, plan))
    if plan.schedule is not None and plan.schedule.name != "one-shot":
        files = export_bundle(
            subject,
            plan,
            args.out,
            on_progress=ProgressBar("export"),
            quantize=args.quantize,
            int8_mode=args.int8_mode,
        )
        sched = json.loads(files["metrics"].read_text())["schedule"]
        first, last = sched["steps"][0], sched["steps"][-1]
        print(
            f"schedule: {plan.schedule.describe()}; {len(sched['steps'])} measured steps"
            f" ({sched['stopped']}), sparsity of the plan's layers {100 * last['sparsity']:.1f}%"
            f" (target {100 * sched['target_sparsity']:.1f}%), test accuracy"
            f" {100 * first['accuracy']:.2f}% at the start, {100 * last['accuracy']:.2f}% at"
            " the end",
            file=sys.stderr,
        )
    else:
        files = _export_one_shot(args, subject, plan)
    for role, path in files.items():
        print(f"{role:<11} {path}")
    return 0


def _export_one_shot(args: argparse.Namespace, subject: Any, plan: Any) -> dict[str, Path]:
    from explorer.loop import recover_pruned
    from explorer.report import export_bundle

    # One-shot: the app's Recover page and this command run the same stages
    # (explorer.loop.recover_pruned): batch-norm recalibration (on by default with fine-tuning),
    # then fine-tuning; plan.json records the schedule with its epochs.
    one_shot = (
        plan.schedule.resolved() if plan.schedule is not None else {"epochs": 0, "distill": False}
    )
    epochs, distill = (
        args.finetune_epochs or one_shot["epochs"],
        args.distill or one_shot["distill"],
    )
    recalibrate = bool(epochs) if args.recalibrate_bn is None else args.recalibrate_bn
    model = recovery = None
    if recalibrate or epochs:
        model, recovery, tuned = recover_pruned(
            subject,
            subject.prune(plan),
            recalibrate=recalibrate,
            epochs=epochs,
            distill=distill,
            temperature=args.temperature if args.temperature is not None else 2.0,
            alpha=args.alpha if args.alpha is not None else 0.5,
            patience=args.patience,
            on_progress=ProgressBar("recover"),
        )
        if recovery is None:
            print(
                "note: --recalibrate-bn: this model has no batch norm to recalibrate",
                file=sys.stderr,
            )
            model = None
        if tuned is not None:
            first, best = tuned.history[0], tuned.history[tuned.best_epoch]
            if first.val_accuracy is not None and best.val_accuracy is not None:
                print(
                    f"fine-tuned: epoch {tuned.best_epoch} of {len(tuned.history) - 1} kept"
                    f" ({tuned.stopped}), validation accuracy {100 * first.val_accuracy:.2f}% ->"
                    f" {100 * best.val_accuracy:.2f}%",
                    file=sys.stderr,
                )
    return export_bundle(
        subject,
        plan,
        args.out,
        on_progress=ProgressBar("export"),
        model=model,
        quantize=args.quantize,
        recovery=recovery,
        int8_mode=args.int8_mode,
    )


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
        raise DataError(
            f"{model_spec}: the model does not declare its input shape; give --data SPEC"
        )
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
            raise _UsageError(
                "convert --from nni reads --config FILE (with --model SPEC); --plan and --to are "
                "for the other direction"
            )
        if not args.config or not args.model:
            raise _UsageError("convert --from nni needs --config FILE and --model SPEC")
        config = convert.load_config_list(args.config)
        inventory = _inventory(args.model, args.data)
        try:
            plan = convert.from_nni(config, inventory, args.method, model=args.model)
        except ExplorerError as e:
            raise type(e)(f"{args.config}: {e}") from None
        _write(args.out, plan.to_json() + "\n")
        print(
            f"plan       {len(plan.layers)} layer(s), {plan.method}, scope {plan.scope} ->"
            f" {args.out}",
            file=sys.stderr,
        )
        return 0
    if not args.plan or not args.to:
        raise _UsageError(
            "convert needs --plan FILE --to nni|torch-pruning, or --from nni --config FILE --model"
            " SPEC"
        )
    if args.config or args.method:
        raise _UsageError("--config and --method are for convert --from nni")
    if args.to == "nni" and (args.model or args.data or args.round_to):
        raise _UsageError(
            "--model, --data and --round-to are for --to torch-pruning and --from nni"
        )
    plan = PruningPlan.load(args.plan)
    try:
        if args.to == "nni":
            config = convert.to_nni(plan)
            _write(args.out, json.dumps(config, indent=2) + "\n")
            print(
                f"config_list {len(config)} entr{'y' if len(config) == 1 else 'ies'} -> {args.out}",
                file=sys.stderr,
            )
            print(f"note: NNI pruner: {convert.nni_pruner(plan.method)}", file=sys.stderr)
        else:
            spec = args.model or (
                plan.model if plan.model and plan.model.startswith("zoo:") else None
            )
            inventory = _inventory(spec, args.data) if spec else None
            out = convert.to_torch_pruning(plan, inventory, args.round_to)
            _write(args.out, json.dumps(out, indent=2) + "\n")
            print(
                f"pruning_ratio_dict {len(out['pruning_ratio_dict'])} layer(s) -> {args.out}",
                file=sys.stderr,
            )
            print(f"note: {out['note']}", file=sys.stderr)
    except ExplorerError as e:
        raise type(e)(f"{args.plan}: {e}") from None
    return 0


# The server process runs ui/serve.py's main (next to app.py, in the checkout and in the installed
# package alike): streamlit's CLI, told that app.py routes with st.navigation (no legacy page list
# from the pages/ folder), with the first model warming up meanwhile. explorer/ never imports
# streamlit: this is only the command line of that process.
_SERVER_MAIN = (
    "import sys; sys.path.insert(0, sys.argv[1]); from ui.serve import main; main(sys.argv[2:])"
)
# No file watcher (it watched the whole checkout, .venv included, and overflowed inotify), no
# rerun on save: the app is served, not edited.
SERVER_FLAGS = (
    "--server.headless",
    "true",
    "--server.fileWatcherType",
    "none",
    "--server.runOnSave",
    "false",
    "--browser.gatherUsageStats",
    "false",
    "--client.toolbarMode",
    "minimal",
)


def app_command(port: int, *extra: str) -> list[str]:
    """The command line that serves the app on ``port`` (``extra``: more streamlit flags)."""
    app = app_script()
    return [
        sys.executable,
        "-c",
        _SERVER_MAIN,
        str(app.parent),
        "run",
        str(app),
        "--server.port",
        str(port),
        *SERVER_FLAGS,
        *extra,
    ]


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
    if args.workers or args.ray_address:  # the Sensitivity page's scans (and allocations) go to Ray
        from explorer.distributed import INSTALL_HINT, RayUnavailable, ray_installed

        if not ray_installed():
            raise RayUnavailable(
                f"{'--ray-address' if args.ray_address else '--workers'}: Ray is not installed: "
                f"{INSTALL_HINT}"
            )
        env["PRUNING_EXPLORER_WORKERS"] = str(args.workers or "")
        env["PRUNING_EXPLORER_RAY_ADDRESS"] = args.ray_address or ""
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
        p.add_argument(
            "--model",
            required=required,
            metavar="SPEC",
            help=(
                "zoo:NAME, PATH.onnx, PATH.pt2 (torch.export.save), PATH.py:FUNC or "
                "package.module:FUNC (zoo:list lists the zoo)"
            ),
        )
        p.add_argument(
            "--data",
            metavar="SPEC",
            help=(
                "zoo:NAME, PATH.npz, PATH.csv, an image folder (one subfolder per class) or "
                "PATH.py:FUNC (zoo models bring their own)"
            ),
        )

    def ray_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--workers",
            type=_positive_int,
            metavar="N",
            help=(
                "evaluate the points on a local Ray with N CPUs (pip install"
                " 'pruning-explorer[ray]'); the same points as without"
            ),
        )
        p.add_argument(
            "--ray-address",
            metavar="ADDR",
            help=(
                "evaluate the points on the Ray cluster at ADDR "
                "(every node needs pruning-explorer installed)"
            ),
        )

    def timing_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--threads",
            type=_positive_int,
            default=1,
            help="ONNX Runtime intra-op threads for latency",
        )
        p.add_argument(
            "--runs", type=_positive_int, default=50, help="timed runs (at least 30 are made)"
        )

    p = sub.add_parser("app", help="launch the Streamlit app")
    p.add_argument("--port", type=_positive_int, default=8501)
    p.add_argument("--model", metavar="SPEC", help=f"model to open (default {DEFAULT_MODEL})")
    p.add_argument("--data", metavar="SPEC")
    ray_args(p)
    p.set_defaults(func=cmd_app)

    p = sub.add_parser("layers", help="prunable layers and dependency groups")
    model_args(p)
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--blocks", action="store_true", help="list the residual blocks a plan can remove whole"
    )
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("evaluate", help="accuracy, size and ORT latency, dense and pruned")
    model_args(p)
    p.add_argument("--plan", metavar="FILE")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--rounded-out",
        metavar="FILE",
        help=(
            "where the plan measures slower than dense, write the rounded plan (kept channels at"
            " widths this CPU runs fast, measured) to FILE"
        ),
    )
    timing_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("sensitivity", help="per-layer accuracy and loss against pruning ratio")
    model_args(p)
    p.add_argument("--method", help="pruning method (default l1-unstructured)")
    p.add_argument("--ratios", metavar="R1,R2,...", help="ratios in [0, 1) (default 0.1,...,0.9)")
    p.add_argument(
        "--blocks",
        action="store_true",
        help="each removable block removed whole instead (ratio 1: the block is the identity)",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="FILE.csv or FILE.json")
    ray_args(p)
    p.set_defaults(func=cmd_sensitivity)

    p = sub.add_parser(
        "allocate", help="per-layer ratios for a target, verified (predicted vs measured accuracy)"
    )
    model_args(p)
    from explorer.allocate.targets import target_kinds

    kinds = target_kinds()
    defaults = ", ".join(f"{k.default_method} for --target-{k.name}" for k in kinds)
    p.add_argument("--method", help=f"pruning method (default: {defaults})")
    target = p.add_mutually_exclusive_group(required=True)
    for k in kinds:  # one flag per registered target kind
        target.add_argument(f"--target-{k.name}", type=float, metavar="F", help=k.cli_help)
    p.add_argument(
        "--round-to",
        type=_positive_int,
        metavar="N",
        help=(
            "structured methods: round kept channels up to a multiple of N (1: no rounding;"
            " default: the CPU's fast multiple, 16 with AVX-512 and 8 otherwise, for"
            " --target-latency, none for the others)"
        ),
    )
    p.add_argument(
        "--curve-images",
        type=_positive_int,
        metavar="N",
        help=(
            "scan the sensitivity curves on N of the evaluation samples (a seeded subset; the scan"
            " costs in proportion); the target is measured and the plan verified on all of them,"
            " and the result says whether the subset predicted them (default: every sample)"
        ),
    )
    p.add_argument("--out", required=True, metavar="PLAN.json")
    timing_args(p)
    ray_args(p)
    p.set_defaults(func=cmd_allocate)

    p = sub.add_parser("export", help="prune, measure and write the export bundle")
    model_args(p)
    p.add_argument("--plan", required=True, metavar="FILE")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument(
        "--finetune-epochs",
        type=_positive_int,
        metavar="N",
        help=(
            "training epochs of the schedule: one-shot fine-tunes N epochs after pruning (zeros"
            " stay zero; the best validation epoch is kept; batch-norm statistics re-estimated"
            " first), iterative N per round, gradual N in all, snip and lottery N per training from"
            " scratch, regularized N after pruning; metrics.json then holds the trained model's"
            " numbers"
        ),
    )
    p.add_argument(
        "--recalibrate-bn",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=(
            "one-shot: re-estimate batch-norm statistics of the pruned model on the training split"
            " before export (default: on with --finetune-epochs, off without)"
        ),
    )
    p.add_argument(
        "--distill",
        action="store_true",
        help="with --finetune-epochs (one-shot): distil from the dense model as teacher",
    )
    p.add_argument(
        "--temperature", type=float, metavar="T", help="with --distill: softening temperature (2)"
    )
    p.add_argument(
        "--alpha",
        type=float,
        metavar="A",
        help="with --distill: weight of the distillation term (0.5)",
    )
    p.add_argument(
        "--patience",
        type=_positive_int,
        metavar="N",
        help=(
            "with --finetune-epochs (one-shot): stop after N epochs without a better validation"
            " score"
        ),
    )
    p.add_argument(
        "--schedule",
        choices=["one-shot", "iterative", "gradual", "snip", "lottery", "regularized"],
        help=(
            'when to prune (default: the plan\'s "schedule", else one-shot); the plan.json written'
            " records it, and metrics.json every measured step"
        ),
    )
    p.add_argument(
        "--rounds",
        type=_positive_int,
        metavar="K",
        help="rounds of the iterative and lottery schedules",
    )
    p.add_argument(
        "--quantize",
        choices=["int8"],
        help="also write model.int8.onnx and its numbers under 'int8' in metrics.json",
    )
    p.add_argument(
        "--int8-mode",
        choices=["auto", "dynamic", "static"],
        default="auto",
        help=(
            "with --quantize int8: auto (dynamic without convolutions, static QDQ with), dynamic or"
            " static"
        ),
    )
    timing_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "convert",
        help=(
            "a plan to NNI's config_list or Torch-Pruning's pruning_ratio_dict, "
            "or an NNI config_list back to a plan"
        ),
    )
    p.add_argument("--plan", metavar="FILE", help="the plan to convert")
    p.add_argument("--to", choices=["nni", "torch-pruning"])
    p.add_argument(
        "--from",
        dest="source",
        choices=["nni"],
        help="read an NNI config_list (--config) into a plan",
    )
    p.add_argument("--config", metavar="FILE", help="with --from nni: the config_list JSON")
    p.add_argument(
        "--model",
        metavar="SPEC",
        help=(
            "with --from nni: the model whose layers the plan names; with "
            "--to torch-pruning: lists ignored_layers (a zoo plan's own model "
            "by default)"
        ),
    )
    p.add_argument(
        "--data",
        metavar="SPEC",
        help="with --model: data, for a model that does not declare its input shape",
    )
    p.add_argument(
        "--method",
        help=(
            "with --from nni: the plan's method (default: l1-structured for out_channel "
            "granularity, l1-unstructured otherwise)"
        ),
    )
    p.add_argument(
        "--round-to",
        type=_positive_int,
        metavar="N",
        help="with --to torch-pruning: the round_to to note (kept channels a multiple of N)",
    )
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
