"""The ``semcoder`` command: a thin dispatcher over the library's subcommand modules.

Each subcommand lives beside the code it drives and exposes ``register(subparsers)``, which adds
its parser and sets ``func`` (called with the parsed namespace, returning an exit status).  Those
modules import heavy libraries (jax, tensorflow, torch) inside their functions, so ``semcoder
--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from semcoder_jax.errors import UserError

# (module, one-line help); order is the order in ``semcoder --help``.
SUBCOMMAND_MODULES = (
    "semcoder_jax.commands.convert",
    "semcoder_jax.commands.generate",
    "semcoder_jax.commands.data",
    "semcoder_jax.commands.train",
    "semcoder_jax.commands.checkpoint",
    "eval.cli",
    "launch.plan_cli",
    "launch.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semcoder", description="Train, convert and evaluate SemCoder-style code LLMs in JAX.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


# Flags (argparse dests) that name files or directories, across the subcommands.
LOCATION_FLAGS = ("config", "run_dir", "export_hf", "model", "out", "data_dir", "predictions", "hf", "ckpt",
                  "tokenizer", "tokenizer_out", "gt_cache_dir", "teacher")
# (subcommand, flag) pairs that take object-store URLs (semcoder_jax.locations); the others read or write
# with local file APIs only, and a URL there is refused before any work.
REMOTE_CAPABLE = {("train", "config"), ("train", "run_dir"), ("train", "export_hf"), ("eval", "model"),
                  ("eval", "out"), ("convert", "hf"), ("convert", "ckpt"), ("convert", "out"),
                  ("convert", "tokenizer"), ("checkpoint", "run_dir"), ("data build", "out"),
                  ("generate", "model"), ("generate", "tokenizer")}


def _check_location_flags(args: argparse.Namespace) -> None:
    """Every location flag is checked here, before the subcommand does any work: an object-store URL must
    name a served scheme and a bucket (``semcoder_jax.locations.check``), and only the flags in
    ``REMOTE_CAPABLE`` take one.  Config keys are checked by the config's own validation."""
    from semcoder_jax import locations

    named = [(dest, getattr(args, dest, None)) for dest in LOCATION_FLAGS]
    named += [("seeds", value) for value in getattr(args, "seeds", None) or ()]
    for dest, value in named:
        if not isinstance(value, str) or not locations.is_remote(value):
            continue
        flag = f"--{dest.replace('_', '-')}"
        locations.check(flag, value)
        command = f"{args.command} {getattr(args, 'data_command', '')}".strip()
        if (command, dest) not in REMOTE_CAPABLE:
            raise locations.LocationError(
                f"{flag} {value}: semcoder {command} reads and writes {flag} with local file APIs only; copy "
                "it to local disk (gcloud storage cp -r) or use a gcsfuse mount path")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # KEY=VALUE overrides may come before, between and after the options (argparse takes one run of
        # positionals); anything else left over is an error, as parse_args would say.
        if isinstance(getattr(args, "overrides", None), list) and all(
                "=" in a and not a.startswith("-") for a in extra):
            args.overrides.extend(extra)
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if argv is None:  # the real command line, which a subcommand may restart (see host_memory)
        args.argv = sys.argv[1:]
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        _check_location_flags(args)
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"semcoder {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
