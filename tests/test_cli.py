# SPDX-License-Identifier: Apache-2.0
"""The `srum` command line on the tiny model."""
import json

import pytest
from PIL import Image

from srum.cli import main


def test_init_tiny_t2i_and_understand(tmp_path, capsys):
    model_dir = tmp_path / "tiny"
    assert main(["init-tiny", str(model_dir), "--seed", "3"]) == 0
    assert (model_dir / "ema.safetensors").is_file() and (model_dir / "ae.safetensors").is_file()
    out = tmp_path / "images"
    capsys.readouterr()
    assert main(["t2i", str(model_dir), "a red cube", "--out", str(out), "--num-images", "2", "--height", "32",
                 "--width", "48", "--num-timesteps", "3", "--seed", "7", "--device", "cpu"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["seed"] for r in records] == [7, 8]
    assert all(Image.open(out / r["image_file"]).size == (48, 32) for r in records)
    assert records[0]["cfg_interval"] == [0.4, 1.0] and records[0]["num_timesteps"] == 3
    image = tmp_path / "in.png"
    Image.new("RGB", (30, 20), "red").save(image)
    assert main(["understand", str(model_dir), str(image), "--prompt", "What colour?", "--max-new-tokens", "5",
                 "--device", "cpu"]) == 0
    capsys.readouterr()


def test_cli_reports_bad_input_with_exit_code_2(tmp_path, capsys):
    assert main(["t2i", str(tmp_path / "missing"), "x", "--device", "cpu"]) == 2
    assert "missing" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["t2i", str(tmp_path / "empty"), "x", "--device", "cpu"]) == 2
    assert "llm_config.json" in capsys.readouterr().err


def test_cli_rejects_bad_flag_values():
    with pytest.raises(SystemExit):
        main(["t2i", "m", "p", "--height", "-16"])
    with pytest.raises(SystemExit):
        main(["t2i", "m", "p", "--cfg-renorm-type", "bogus"])
