"""The ``inspect``, ``rewrite`` and ``restore`` subcommands (batch rewriting: :mod:`.batch`)."""
from __future__ import annotations

import json
import os
import sys

from .._text import one_line, printable, table
from ..allocation import ALLOCATIONS
from ..files import KerasFileError, Recipe, inspect, restore, rewrite, sharded
from ..files.plan import NOTHING_REWRITTEN
from ..files.recipe import ACTIVATIONS, COMPRESSIONS, STORAGES
from ..files.pages import inspect_page, report_page
from ..quantization import METHODS, ROUNDINGS
from . import batch
from .app import CommandError, write_report
from .report import check_page, write_html


def add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="list the weights of a Keras file with their roles")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per weight")
    p.add_argument("--html", metavar="PAGE.html", help="also write the weights, with histograms, as an HTML page")
    p.set_defaults(run=run_inspect)


def add_rewrite(sub) -> None:
    p = sub.add_parser("rewrite", help="prune and/or quantize the kernels of Keras files")
    p.add_argument("src", nargs="+", help="a .h5, .weights.h5 or .keras file (or a packed one); "
                                          "with --out-dir: files, directories, glob patterns")
    dst = p.add_mutually_exclusive_group(required=True)
    dst.add_argument("-o", "--output", metavar="DST", help="the file to write")
    dst.add_argument("--out-dir", metavar="DIR", help="rewrite every SRC into DIR")
    add_recipe_options(p)
    p.add_argument("--calibration", metavar="SAMPLES", help="a .npy or .npz of sample inputs: compress each layer "
                   "to keep its outputs on them (GPTQ, SparseGPT, bias correction; needs wqkernels[keras] and a "
                   ".keras or full .h5 model file); 'synthetic': inputs made without data from the model's "
                   "BatchNormalization statistics (a file of that name: ./synthetic)")
    p.add_argument("--report", metavar="FILE.json", help="also write the report as JSON")
    p.add_argument("--html", metavar="PAGE.html", help="also write the report as an HTML page (charts, histograms)")
    p.add_argument("--in-place", action="store_true", help="allow DST to be SRC")
    p.add_argument("--max-shard-size", metavar="SIZE",
                   help="write DST as a sharded x.weights.json whose shards hold at most SIZE of variables: GB as "
                        "Keras's max_shard_size (0.5), or with a unit (500MB, 2GiB); from a sharded source or a "
                        ".weights.h5")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar; only the totals of the table (in a batch: no line per file)")
    batch.add_options(p)
    p.set_defaults(run=run_rewrite)


def add_restore(sub) -> None:
    p = sub.add_parser("restore", help="turn a packed file back into a file stock Keras loads")
    p.add_argument("src", metavar="PACKED")
    p.add_argument("-o", "--output", required=True, metavar="DST")
    p.add_argument("--in-place", action="store_true", help="allow DST to be PACKED")
    p.add_argument("--quiet", action="store_true", help="no progress bar; only the totals of the table")
    p.set_defaults(run=run_restore)


def add_recipe_options(p) -> None:
    """The recipe options, shared with batch rewriting."""
    p.add_argument("--sparsity", metavar="S", help="fraction of all prunable weights to zero, or N:M (e.g. 2:4)")
    p.add_argument("--allocation", choices=ALLOCATIONS, default="global",
                   help="spread --sparsity with one global criterion (default) or equally per tensor")
    p.add_argument("--bits", type=int, metavar="B", help="quantize kernels to B bits (2..8)")
    p.add_argument("--target-sqnr", type=float, metavar="DB", help="per tensor, the fewest bits reaching DB")
    p.add_argument("--narrow-bits", type=int, metavar="N",
                   help="N more bits (at most 8) for kernels with at most 16 weights per output channel "
                        "(first convolutions, 3x3 depthwise kernels; default 2, none with --storage keras; "
                        "0 for none)")
    p.add_argument("--granularity", default="channel", help="tensor, channel (default) or block:N")
    p.add_argument("--method", choices=METHODS,
                   help="scale choice (default: minmax; mse for symmetric grids of 2 and 3 bits)")
    grid = p.add_mutually_exclusive_group()
    grid.add_argument("--symmetric", dest="symmetric", action="store_true", default=None,
                      help="signed codes, zero point 0 (the default with --storage keras)")
    grid.add_argument("--asymmetric", dest="symmetric", action="store_false",
                      help="unsigned codes over [min, max] with a zero point per group (the default)")
    p.add_argument("--rounding", choices=ROUNDINGS,
                   help="sum: the fewest codes move one step so that each channel keeps its sum (the "
                        "default; recurrent kernels and Keras-native layers round to nearest); nearest: "
                        "faster, less accurate")
    correct = p.add_mutually_exclusive_group()
    correct.add_argument("--bn-correction", dest="bn_correction", action="store_true", default=True,
                         help="when pruning a .keras or full .h5 model, restore the output mean and variance "
                              "of layers fed by BatchNorm from its statistics (the default)")
    correct.add_argument("--no-bn-correction", dest="bn_correction", action="store_false",
                         help="prune the kernels only, leaving biases and BatchNorm statistics as they were")
    p.add_argument("--storage", choices=STORAGES, default="float32",
                   help="float32 (default, loads in any Keras), float16, packed codes (smallest; "
                        "wqkernels restore makes it loadable), or keras: Keras 3's own int8/int4 layers "
                        "(--bits 8 or 4), which load_model keeps quantized")
    p.add_argument("--activations", choices=ACTIVATIONS,
                   help="with --storage keras: int8 (dynamic int8 inputs, Keras's int8 default) or float "
                        "(weight-only, Keras's int4 default)")
    p.add_argument("--compress", choices=COMPRESSIONS, default="none",
                   help="HDF5 filter for rewritten datasets large enough to gain")
    p.add_argument("--strip-optimizer", action="store_true", help="drop the optimizer state")
    p.add_argument("--include", action="append", default=[], metavar="GLOB",
                   help="only touch weights whose path matches (repeatable)")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="never touch weights whose path matches (repeatable)")
    p.add_argument("--min-size", type=int, metavar="N", help="leave weights with fewer elements alone")


def recipe_from_args(args) -> Recipe:
    sparsity = args.sparsity
    if sparsity is not None and ":" not in sparsity:
        try:
            sparsity = float(sparsity)
        except ValueError:
            raise CommandError(f"--sparsity must be a fraction or N:M, got {args.sparsity!r}") from None
    try:
        return Recipe(sparsity=sparsity, bits=args.bits, granularity=args.granularity, method=args.method,
                      storage=args.storage, compress=args.compress, strip_optimizer=args.strip_optimizer,
                      include=tuple(args.include), exclude=tuple(args.exclude), min_size=args.min_size,
                      allocation=args.allocation, target_sqnr=args.target_sqnr, activations=args.activations,
                      rounding=args.rounding, bn_correction=args.bn_correction,
                      **({} if args.narrow_bits is None else {"narrow_bits": args.narrow_bits}),
                      **({} if args.symmetric is None else {"symmetric": args.symmetric}))
    except (ValueError, TypeError) as exc:
        raise CommandError(f"impossible recipe: {exc}") from None


def _guarded(fn, *args, **kwargs):
    """Run fn; file and recipe errors become one-line CommandErrors."""
    try:
        return fn(*args, **kwargs)
    except (KerasFileError, NotImplementedError) as exc:
        raise CommandError(str(exc), status=1) from None
    except (OSError, ValueError, TypeError, RuntimeError, KeyError) as exc:
        raise CommandError(one_line(exc), status=1) from None


def run_inspect(args) -> int:
    check_page(args.html, args.file)
    infos = _guarded(inspect, args.file, histograms=args.html is not None)
    if args.json:
        json.dump([i.to_dict() for i in infos], sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    head = ("weight", "layer", "class", "role", "prunable", "shape", "dtype", "bytes", "sparsity")
    rows = [(i.path, i.layer, i.layer_class or "?", i.role, "yes" if i.prunable else "no",
             "x".join(map(str, i.shape)) or "()", i.dtype if i.storage == "dataset" else i.storage,
             str(i.nbytes), f"{i.sparsity:.3f}") for i in infos]
    print("\n".join(table(head, rows)))
    write_html(args.html, lambda: inspect_page(args.file, infos))
    return 0


def _finish(report, args) -> int:
    print(report.table(weights=not args.quiet))
    for note in report.notes:
        if note.startswith(NOTHING_REWRITTEN):
            print(printable(f"wqkernels {args.command}: note: {note}"), file=sys.stderr)
    if getattr(args, "report", None):
        write_report(args.report, report.to_dict())
    write_html(getattr(args, "html", None), lambda: report_page(report))
    return 0


def run_rewrite(args) -> int:
    recipe = recipe_from_args(args)
    check_page(args.html, *args.src, args.output, args.report)
    if args.max_shard_size is not None and (args.calibration is not None or batch.is_batch(args)):
        raise CommandError("--max-shard-size shards one output: give -o DST.weights.json and one SRC, "
                           "without --calibration")
    if args.max_shard_size is not None:
        if recipe.storage == "packed":
            raise CommandError("--max-shard-size: packed files keep the source's shards; give another --storage, "
                               "or no --max-shard-size")
        try:
            sharded.shard_bytes(args.max_shard_size, "--max-shard-size")
        except (ValueError, TypeError) as exc:
            raise CommandError(str(exc)) from None
    if args.calibration is not None:
        calibrated, samples = _calibrated(args)
        return _finish(_guarded(calibrated, args.src[0], args.output, recipe, samples,
                                in_place=args.in_place, progress=not args.quiet,
                                histograms=bool(args.report or args.html)), args)
    if batch.is_batch(args):
        return batch.run_command(args, recipe)
    if os.path.isdir(args.src[0]):
        raise CommandError(f"{args.src[0]}: is a directory; rewrite the files in it with --out-dir DIR instead of -o")
    return _finish(_guarded(rewrite, args.src[0], args.output, recipe, in_place=args.in_place,
                            progress=not args.quiet, histograms=bool(args.report or args.html),
                            max_shard_size=args.max_shard_size), args)


def _calibrated(args):
    """The calibrated rewrite (which runs the model in Keras) and its samples, or a CommandError
    saying why not."""
    if batch.is_batch(args):
        raise CommandError("--calibration rewrites one model: give -o DST and one SRC")
    try:
        from ..keras.calibration import rewrite_calibrated
        from ..keras.synthetic import Synthetic
    except ImportError as exc:  # wqkernels.keras names the extra itself; a failure past it may not
        why = str(exc) if "wqkernels[keras]" in str(exc) else f"pip install 'wqkernels[keras]' ({exc})"
        raise CommandError(f"--calibration runs the model in Keras: {why}", status=1) from None
    return rewrite_calibrated, Synthetic() if args.calibration == "synthetic" else args.calibration


def run_restore(args) -> int:
    return _finish(_guarded(restore, args.src, args.output, in_place=args.in_place, progress=not args.quiet),
                   args)


def add_parser(sub) -> None:
    """Register the three subcommands."""
    for add in (add_inspect, add_rewrite, add_restore):
        add(sub)
