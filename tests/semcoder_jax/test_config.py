"""Model configs: presets, and HF config.json in both layouts."""

import json

import pytest

from semcoder_jax.config import ConfigError, ModelConfig, get_preset, load_hf_config


def test_semcoder_preset_matches_the_release():
    c = get_preset("deepseek-coder-6.7b")
    assert (c.hidden_size, c.intermediate_size, c.num_layers, c.num_heads, c.num_kv_heads) == (4096, 11008, 32, 32, 32)
    assert (c.vocab_size, c.rope_theta, c.rope_scaling_factor, c.max_position_embeddings) == (32256, 1e5, 4.0, 16384)
    assert (c.rms_norm_eps, c.tie_word_embeddings, c.bos_token_id, c.eos_token_id) == (1e-6, False, 32013, 32014)
    assert 6.70e9 < c.num_params() < 6.75e9


def test_presets_include_1_3b_33b_and_tiny():
    assert get_preset("deepseek-coder-1.3b").hidden_size == 2048
    assert get_preset("deepseek-coder-33b").num_kv_heads == 8
    assert get_preset("tiny").num_layers == 2
    with pytest.raises(ConfigError, match="unknown model preset 'nope'"):
        get_preset("nope")


def _write(tmp_path, data):
    (tmp_path / "config.json").write_text(json.dumps(data))
    return tmp_path


BASE = {"model_type": "llama", "vocab_size": 32256, "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}


def test_reads_the_released_checkpoint_layout(tmp_path):
    cfg = load_hf_config(_write(tmp_path, {**BASE, "rope_theta": 100000, "rope_scaling": {"type": "linear", "factor": 4.0}}))
    assert (cfg.rope_theta, cfg.rope_scaling_factor, cfg.num_kv_heads) == (100000.0, 4.0, 2)


def test_reads_the_transformers_5_layout(tmp_path):
    cfg = load_hf_config(_write(tmp_path, {**BASE, "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5}}))
    assert (cfg.rope_theta, cfg.rope_scaling_factor) == (5e5, 2.0)
    plain = load_hf_config(_write(tmp_path, {**BASE, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}))
    assert plain.rope_scaling_factor == 1.0


def test_written_config_reads_back_identically_through_transformers(tmp_path):
    from transformers import LlamaConfig

    c = get_preset("deepseek-coder-6.7b")
    fields = c.to_hf_dict()
    fields.pop("model_type")
    LlamaConfig(**fields).save_pretrained(tmp_path)
    assert load_hf_config(tmp_path) == c


@pytest.mark.parametrize("change, message", [
    ({"model_type": "gpt2"}, "unsupported model_type 'gpt2'"),
    ({"attention_bias": True}, "attention_bias=true is not supported"),
    ({"mlp_bias": True}, "mlp_bias=true is not supported"),
    ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "rope scaling type 'yarn' is not supported"),
    ({"num_key_value_heads": 3}, "must be a multiple of num_key_value_heads|must be a multiple of num_kv_heads"),
])
def test_refuses_what_the_decoder_does_not_implement(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_hf_config(_write(tmp_path, {**BASE, **change}))
    assert "config.json" in str(err.value)


def test_missing_config_json_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config.json: not found"):
        load_hf_config(tmp_path)


def test_invalid_compute_settings_are_rejected_up_front():
    with pytest.raises(ConfigError, match="attention_impl"):
        ModelConfig(attention_impl="flash")
    with pytest.raises(ConfigError, match="cudnn_packed_runs .* with 'xla'"):
        ModelConfig(cudnn_packed_runs=8)
    with pytest.raises(ConfigError, match="cudnn_packed_runs"):
        ModelConfig(attention_impl="cudnn", cudnn_packed_runs=-1)
    assert ModelConfig(attention_impl="cudnn", cudnn_packed_runs=8).cudnn_packed_runs == 8
