"""``semcoder data``: the data package's commands, plus ``data stats --config`` for a training config.

The data commands live in ``data_pipeline.cli``; only the config-aware report needs the training side
(how a run reads its data), so it is handed to that module from here.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from data_pipeline import cli

    cli.register(subparsers, config_stats=_config_stats, load_teacher=_load_teacher)


def _load_teacher(backend: str, path: str):
    """A teacher for ``data build`` over the eval harness's generation backends.  The backends sit in the layer
    above this one, so they are named here, at the application's wiring, rather than imported by the library."""
    import importlib

    from data_pipeline.builder.teacher import BackendTeacher

    backends = importlib.import_module("eval.backends")
    return BackendTeacher(backends.load_backend(backend, path))


def _config_stats(args: argparse.Namespace) -> int:
    from semcoder_jax.train.config import load_config
    from semcoder_jax.train.mix import describe, mix_report

    config = load_config(args.config, list(args.files))
    for line in describe(config, mix_report(config, hosts=args.hosts)):
        print(line)
    return 0
