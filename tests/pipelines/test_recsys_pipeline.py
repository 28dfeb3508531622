"""The main job end to end on a small generated dataset (what `make demo` runs, smaller)."""

from __future__ import annotations

import json

from pipelines.recsys import main


def test_main_job_prepares_trains_and_beats_popularity(tmp_path, capsys):
    status = main(
        [
            "configs/recsys/demo.yaml",
            f"output_root={tmp_path}",
            "data.options={num_users: 1500, num_items: 300, mean_length: 15}",
            "data.max_len=30",
            "model.embedding_dim=32",
            "train.epochs=6",
            "train.batch_size=64",
        ]
    )
    assert status == 0
    run_dir = tmp_path / "demo"
    baseline = json.loads((run_dir / "baseline.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (run_dir / "model.safetensors").exists() and (run_dir / "config.yaml").exists()
    assert (tmp_path / "data" / "synthetic" / "manifest.json").exists()
    assert metrics["test"]["hr@10"] > baseline["popularity"]["test"]["hr@10"]
    assert "[summary]" in capsys.readouterr().out


def test_main_job_rejects_a_bad_key_before_any_work(tmp_path, capsys):
    assert main(["configs/recsys/demo.yaml", f"output_root={tmp_path}", "trian.epochs=1"]) == 2
    assert "unknown key trian" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
