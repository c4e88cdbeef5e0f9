"""`semcoder train` on the bundled PyX sample: the run directory it leaves and how it reports bad input."""

from __future__ import annotations

import json
import os

import pytest

from semcoder_jax.cli import main

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "launch", "configs", "tiny_cpu.yaml")


def test_tiny_cpu_config_trains_on_the_sample_evaluates_checkpoints_and_exports(tmp_path):
    run_dir, export = tmp_path / "run", tmp_path / "hf"
    argv = ["train", "--config", CONFIG, "--run-dir", str(run_dir), "--export-hf", str(export),
            "train.steps=4", "optimizer.warmup_steps=2", "train.log_every=1", "train.eval_every=2", "train.eval_batches=1",
            "checkpoint.every=2", "data.seq_len=64", "train.global_batch=8", "run.progress=false"]
    rc = main(argv)
    assert rc == 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records] == [1, 2, 3, 4]
    assert {"step", "loss", "learning_rate", "grad_norm", "tokens_per_second"} <= set(train_records[0])
    assert [r["step"] for r in records if "eval_loss" in r] == [2, 4]
    assert (run_dir / "config.yaml").exists() and (run_dir / "tokenizer").is_dir()
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(run_dir / "tensorboard"))
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["2", "4"]
    assert (export / "config.json").exists() and (export / "tokenizer.json").exists()
    assert json.loads((export / "config.json").read_text())["vocab_size"] == 1024
    # Running the same command again (the README's main job, twice): refused without --overwrite,
    # with it the finished run resumes, trains nothing more and exports again.
    assert main(argv) == 1
    assert main(argv + ["--overwrite"]) == 0
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == len(records)
    assert (export / "config.json").exists()


def test_unknown_key_on_the_command_line_is_one_clear_error(tmp_path, capsys):
    rc = main(["train", "--config", CONFIG, "--run-dir", str(tmp_path), "train.stepz=3"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "semcoder train: error:" in err and "'train.stepz'" in err and "train.steps" in err
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_main_job_trains_the_tiny_model_with_a_falling_loss(tmp_path):
    run_dir = tmp_path / "run"
    assert main(["train", "--config", CONFIG, "--run-dir", str(run_dir), "--export-hf", str(tmp_path / "hf"),
                 "run.progress=false"]) == 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert losses[-1] < losses[0] / 3 and evals[-1] < evals[0]


def test_length_in_epochs_counts_one_pass_of_the_data(th):
    from data_pipeline.sample import sample_data_dir
    from semcoder_jax.train.data import build_sources
    from semcoder_jax.train.loop import _total_steps

    config = th.tiny_config("train.epochs=2", f"data.path={sample_data_dir()}/pyx_r_sample.jsonl.gz",
                            "data.source=pyx", "data.mode=pad", "data.seq_len=64", "model.vocab_size=1024")
    sources = build_sources(config.data, global_batch=8, vocab_size=1024, seed=0, process_index=0,
                            process_count=1, count_epoch=True)
    assert sources.epoch_rows == 150  # pad mode: 150 records, one per row
    assert _total_steps(config, sources.epoch_rows) == 38  # 19 batches of 8 rows per epoch
    assert _total_steps(th.tiny_config("train.epochs=0.5"), 150) == 10


def test_a_seq_len_that_truncates_most_records_warns_and_errors_when_asked(tmp_path, capsys):
    args = ["train", "--config", CONFIG, "--run-dir", str(tmp_path / "run"), "data.seq_len=256", "train.steps=1",
            "optimizer.warmup_steps=0", "run.progress=false", "train.eval_every=0", "checkpoint.every=1"]
    assert main(args + ["data.on_truncation=error"]) == 1
    err = capsys.readouterr().err
    assert "data.seq_len=256 truncates 720 of 1,009 records (71.4 %: nl2code 0/289, exec_i 287/287" in err
    assert "data.seq_len=820 would keep 99 %" in err and "data.max_truncated=0.01" in err
    assert not os.path.exists(tmp_path / "run" / "checkpoints")
    assert main(args) == 0
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "truncates" in x]
    assert line.startswith("semcoder train: warning: data.seq_len=256 truncates 720 of 1,009 records")


def test_the_main_job_trains_on_whole_examples_and_lets_a_monologue_finish():
    """tiny_cpu.yaml truncates at most 1 % of the bundled sample, and the README's eval gives a generation
    at least as many new tokens as the sample's longest monologue response."""
    import re

    from data_pipeline.examples import build_examples
    from data_pipeline.records import iter_jsonl
    from data_pipeline.sample import sample_files, sample_tokenizer_dir
    from data_pipeline.tokenizer import load_tokenizer
    from semcoder_jax.train.config import load_config

    config = load_config(CONFIG, [])
    tokenizer = load_tokenizer(sample_tokenizer_dir())
    records = [r for p in sample_files() for r in iter_jsonl(p)]
    examples = build_examples(records, tokenizer, 1 << 30)
    assert sum(len(e.tokens) > config.data.seq_len for e in examples) <= 0.01 * len(examples)
    readme = open(os.path.join(os.path.dirname(CONFIG), "..", "..", "README.md")).read()
    budget = int(re.search(r"--mode monologue --limit 20 --max-new-tokens (\d+)", readme).group(1))
    longest = max(e.num_loss_tokens for e in examples if e.task in ("exec_i", "exec_o"))
    assert budget >= longest, (budget, longest)


def test_data_stats_for_a_config_shows_each_tasks_share_of_loss_tokens_overall_and_per_batch(capsys):
    assert main(["data", "stats", "--config", CONFIG, "--hosts", "2", "data.seq_len=512"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("first epoch as trained: data.seq_len=512, data.mode=pack, train.global_batch=8 on 2")
    assert out[1].startswith("data.seq_len=512 truncates")
    rows = {line.split()[0]: line.split() for line in out[3:]}
    assert set(rows) == {"nl2code", "exec_i", "exec_o", "refine"}
    shares = {t: [float(v.rstrip("%")) for v in r[3:6]] for t, r in rows.items()}
    assert abs(sum(s[0] for s in shares.values()) - 100) < 0.5
    assert all(low <= overall <= high for overall, low, high in shares.values())
    assert sum(int(r[1].replace(",", "")) for r in rows.values()) == 1009  # every training record, once
    assert main(["data", "stats"]) == 1
    assert "give --tokenizer TOK and data FILEs, or --config CONFIG" in capsys.readouterr().err


def test_progress_in_a_batch_log_is_one_plain_line_per_record_without_carriage_returns(th, tmp_path):
    """SLURM and pod logs are files: a progress bar's carriage returns would fill them with noise."""
    import subprocess

    proc = subprocess.run(th.cli_args(str(tmp_path / "run"), "train.steps=2", "run.progress=true"),
                          env=th.subprocess_env(1), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\r" not in proc.stdout + proc.stderr
    assert [line.split(":")[0] for line in proc.stdout.splitlines() if line.startswith("step ")] == ["step 1/2",
                                                                                                    "step 2/2"]


def test_overrides_may_come_before_between_and_after_the_options(capsys):
    """docs/training.md's multi-process example puts overrides after --process-id; argparse alone refused."""
    assert main(["train", "--config", "launch/configs/tiny_cpu.yaml", "train.steps=70", "--process-id", "0",
                 "--num-processes", "1", "mesh.data=1", "--print-config", "train.seed=3"]) == 0
    printed = capsys.readouterr().out
    assert "steps: 70" in printed and "process_id: 0" in printed and "seed: 3" in printed
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", "launch/configs/tiny_cpu.yaml", "--print-config", "--bogus"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_a_missing_cpp_compiler_is_one_line_and_leaves_no_run_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    run_dir = tmp_path / "run"
    assert main(["train", "--config", CONFIG, "--run-dir", str(run_dir)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert errors == ["semcoder train: error: attention_impl 'cpu' needs a C++ compiler: 'no-such-compiler-xyz' "
                      "(from $CXX, else c++) is not on PATH; install g++ or use model.attention_impl=xla"]
    assert not run_dir.exists()
