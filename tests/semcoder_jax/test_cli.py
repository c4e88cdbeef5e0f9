"""The ``semcoder`` dispatcher lists every subcommand and starts without the heavy libraries."""

import subprocess
import sys


def test_help_lists_every_subcommand_without_importing_jax_tensorflow_or_torch():
    code = ("import sys; from semcoder_jax.cli import build_parser; h = build_parser().format_help(); "
            "print(h); print('HEAVY', sorted(m for m in ('jax', 'tensorflow', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for command in ("convert", "generate", "data", "train", "eval", "plan", "launch"):
        assert f"    {command} " in out
    assert "HEAVY []" in out


def test_no_command_prints_help_and_exits_2(capsys):
    from semcoder_jax.cli import main

    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out
