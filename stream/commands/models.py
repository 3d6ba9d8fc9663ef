"""``facestream models``: the registered networks, where their weights are, and their sha256 status."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

DEFAULT_WEIGHTS_DIR = "weights"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the networks facestream knows and where their weights are",
        description="List registered networks, look for their weight files in a directory and report "
        "whether each file's sha256 matches the known one.",
    )
    parser.add_argument("pattern", nargs="?", default="*", help="shell pattern of names (default: all)")
    parser.add_argument(
        "--weights-dir",
        default=DEFAULT_WEIGHTS_DIR,
        help=f"where to look for weight files (default: {DEFAULT_WEIGHTS_DIR})",
    )
    parser.add_argument("--all", action="store_true", help="include the .tiny test variants")
    parser.add_argument(
        "--verify", action="store_true", help="hash the weight files found (slow for big files)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def _status(path: Path | None, expected: str | None, verify: bool) -> tuple[str, str | None]:
    from engines.cache import file_sha256

    if path is None:
        return "missing", None
    if not verify:
        return "not checked", None
    actual = file_sha256(path)
    if expected is None:
        return "no reference hash", actual
    return ("verified" if actual == expected else "MISMATCH"), actual


def collect(pattern: str, weights_dir: Path, *, include_test: bool, verify: bool) -> list[dict[str, Any]]:
    """One dict per registered network matching ``pattern``."""
    import torch

    import engines

    rows = []
    for name in engines.list_networks(pattern, include_test=include_test):
        config = engines.get_network_config(name)
        with torch.device("meta"):
            params = sum(p.numel() for p in engines.create_network(name).parameters())
        found = next((weights_dir / f for f in config.weight_files if (weights_dir / f).is_file()), None)
        status, actual = _status(found, config.sha256, verify)
        rows.append(
            {
                "name": name,
                "task": config.task,
                "params_m": round(params / 1e6, 2),
                "input": f"{config.pyramid_levels}x{config.in_channels}x{config.input_size}",
                "weight_file": config.weight_file,
                "found": str(found) if found else None,
                "sha256_status": status if config.weight_file else "no file (test variant)",
                "sha256": actual or config.sha256,
                "license": config.license,
                "source": config.source,
            }
        )
    return rows


def run(args: argparse.Namespace) -> int:
    rows = collect(args.pattern, Path(args.weights_dir), include_test=args.all, verify=args.verify)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'network':28} {'task':12} {'params':>8} {'input':>12}  weights")
    for r in rows:
        where = r["found"] or (f"{r['weight_file']} (missing)" if r["weight_file"] else "-")
        print(
            f"{r['name']:28} {r['task']:12} {r['params_m']:7.1f}M {r['input']:>12}  "
            f"{where}  [{r['sha256_status']}]"
        )
    return 0
