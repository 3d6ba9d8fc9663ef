"""``facestream export``: write a network as ONNX (checked against torch) for ONNX Runtime/TensorRT."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from stream.exceptions import FacestreamError, InputError, OutputError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a network to ONNX (FP32 or FP16), with a parity check against torch",
        description="Export a registered network (weights from --weights-dir) or a checkpoint file to "
        "ONNX. Every export is run with ONNX Runtime and compared with torch before it is written.",
    )
    parser.add_argument(
        "source", help="registered network name (see `facestream models`) or a .pth checkpoint"
    )
    parser.add_argument("-o", "--output", help="output .onnx file (default: <name>-<precision>.onnx)")
    parser.add_argument(
        "--weights-dir", default="weights", help="where released weights are (default: weights)"
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="export with random weights when no weight file is found",
    )
    parser.add_argument(
        "--fp16", action="store_true", help="FP16 graph (for TensorRT strongly typed networks)"
    )
    parser.add_argument(
        "--io-dtype",
        choices=("float16", "float32"),
        default="float16",
        help="FP16 graphs: dtype of inputs/outputs (float32 adds Casts at the boundary)",
    )
    parser.add_argument("--batch", default="dynamic", help="fixed batch size or 'dynamic' (default)")
    parser.add_argument(
        "--max-batch", type=int, default=64, help="upper bound of a dynamic batch (default: 64)"
    )
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset, >= 17 (default: 18)")
    parser.add_argument("--size", type=int, help="input side (default: the network's input size)")
    parser.add_argument("--exporter", choices=("auto", "dynamo", "torchscript"), default="auto")
    parser.add_argument("--json", action="store_true", help="print the export report as JSON")
    parser.set_defaults(func=run)


def _load(args: argparse.Namespace):  # -> nn.Module
    import engines

    source = Path(args.source)
    if source.suffix in (".pth", ".pt"):
        if not source.is_file():
            raise InputError(f"checkpoint {args.source!r} does not exist")
        return engines.load_checkpoint(source)
    config = engines.get_network_config(args.source)
    if config.weight_file:
        path = Path(args.weights_dir) / config.weight_file
        if path.is_file():
            return engines.load_checkpoint(path, network=config)
        if not args.random_weights:
            raise InputError(
                f"weights {config.weight_file!r} not found in {args.weights_dir!r}; "
                "pass --weights-dir or --random-weights"
            )
    return engines.create_network(config.name)


def _check_output(output: Path, source: Path) -> None:
    """Refuse an OUTPUT that is not an .onnx file (a slip of ``-o model.pth`` replaced the weights) or is
    the checkpoint itself, and one in a missing directory, before the export's seconds of work."""
    from stream.reports import check_parent_dir
    from stream.sinks import same_file

    if output.suffix.lower() != ".onnx":
        raise OutputError(f"-o {output}: the export is an ONNX graph; give a file name ending in .onnx")
    if source.exists() and same_file(output, source):
        raise OutputError(f"-o {output} is the checkpoint being exported; choose another name")
    check_parent_dir(output, "-o")


def run(args: argparse.Namespace) -> int:
    from engines.exceptions import ArchitectureError, CheckpointError, EnginesError, UnknownNetworkError
    from engines.export import export_onnx

    if args.batch == "dynamic":
        batch: int | str = "dynamic"
    else:
        try:
            batch = int(args.batch)
        except ValueError:
            raise InputError(f"--batch must be an integer or 'dynamic', got {args.batch!r}") from None
    if args.output is not None:
        _check_output(Path(args.output), Path(args.source))
    try:
        model = _load(args)
        config = getattr(model, "network_config", None)
        stem = config.name if config else Path(args.source).stem
        output = Path(args.output or f"{stem}-{'fp16' if args.fp16 else 'fp32'}.onnx")
        report = export_onnx(
            model,
            output,
            fp16=args.fp16,
            batch=batch,  # type: ignore[arg-type]
            opset=args.opset,
            size=args.size,
            io_dtype=args.io_dtype,
            exporter=args.exporter,
            max_batch=args.max_batch,
        )
    except (ArchitectureError, CheckpointError, UnknownNetworkError) as exc:
        raise InputError(str(exc)) from exc
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    except OSError as exc:
        raise OutputError(str(exc)) from exc
    except EnginesError as exc:
        raise FacestreamError(str(exc)) from exc
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        print(
            f"wrote {report.path} ({report.precision}, io {report.io_dtype}, batch {report.batch}, "
            f"opset {report.opset}, {report.exporter}); parity max abs {report.max_abs:.3g}"
        )
    return 0
