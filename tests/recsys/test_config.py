"""Config errors name the key before anything runs; every shipped config loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.config import ConfigError, flatten, load_config, to_dict
from recsys.experiment import ExperimentConfig

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "recsys").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    config = load_config(ExperimentConfig, path)
    assert config.name and config.data.dataset


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "model.embeding_dim=64",
            r"unknown key model\.embeding_dim; model takes: family, embedding_dim",
        ),
        ("trian.epochs=3", r"unknown key trian; config takes: .*train"),
        ("train.epochs=ten", r"train\.epochs: expected an integer, got str 'ten'"),
        ("train.epochs=2.5", r"train\.epochs: expected an integer"),
        ("model.dropout=yes", r"model\.dropout: expected a number"),
        ("model.family=bert4rec", r"model\.family: 'bert4rec' is not one of \['hstu', 'sasrec'\]"),
        ("model.embedding_dim=-8", r"model\.embedding_dim: must be >= 1, got -8"),
        ("model.num_heads=64", r"model\.num_heads: 64 heads exceed embedding_dim 50"),
        ("model.num_heads=3", r"model\.num_heads: embedding_dim 50 is not divisible by 3 heads"),
        ("train.learning_rate=0", r"train\.learning_rate: must be > 0"),
        ("data.dataset=ml-20m", r"data\.dataset: 'ml-20m' is unknown"),
        ("data.max_len=0", r"data\.max_len: must be >= 1"),
        ("eval.ks=[10, -1]", r"eval\.ks: must be a non-empty list of positive cut-offs"),
        ("train.select_metric=hr@5", r"train\.select_metric: 'hr@5' is not computed"),
        ("model=3", r"model: expected a mapping"),
        ("model.family.x=1", r"model\.family: \{'x': 1\} is not one of"),
        ("epochs", r"expected key=value"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(ExperimentConfig, None, [override])


def test_yaml_and_overrides_combine(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\nmodel:\n  num_blocks: 4\ntrain:\n  epochs: 7\n")
    config = load_config(ExperimentConfig, path, ["train.epochs=9", "model.attention_dim=null"])
    assert (config.model.num_blocks, config.train.epochs, config.model.attention_dim) == (
        4,
        9,
        None,
    )
    flat = flatten(to_dict(config))
    assert flat["train.epochs"] == 9 and flat["data.dataset"] == "synthetic"
    with pytest.raises(ConfigError, match="not found"):
        load_config(ExperimentConfig, tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(ExperimentConfig, tmp_path / "bad.yaml")


def test_cli_fails_before_training(tmp_path):
    from recsys.train import main

    assert main(["configs/recsys/demo.yaml", f"output_root={tmp_path}", "train.epoch=3"]) == 2
    assert not any(tmp_path.iterdir())  # nothing was prepared or written
