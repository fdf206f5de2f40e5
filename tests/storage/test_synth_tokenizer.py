"""fmoe synth writes the Qwen3.5 tokenizer, so `fmoe generate --chat` runs on a synthetic model (issue 16, item 17)."""
from __future__ import annotations

import json

from fmoe.cli import generate as cli_generate
from fmoe.cli import synth as cli_synth
from fmoe.engine.loader import load_tokenizer


def test_synth_writes_tokenizer_and_generate_chat_runs(tmp_path, capsys):
    dst = tmp_path / "s"
    assert cli_synth.main([str(dst), "--like", "qwen3.5-35b-a3b", "--layers", "1", "--experts", "4",
                           "--no-progress"]) == 0
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (dst / f).is_file()
    tok = load_tokenizer(dst)
    assert tok.encode("<|im_start|>user\nHello, how are you?<|im_end|>")[:3] == [248045, 846, 198]
    assert 248046 in tok.eos_token_ids
    capsys.readouterr()
    assert cli_generate.main(["--model", str(dst), "--chat", "--prompt", "Hello", "--max-tokens", "3", "--json",
                              "--ignore-eos"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["generated_tokens"] == 3 and len(out["token_ids"]) == 3 and out["finish_reason"] == "length"


def test_tiny_preset_has_no_qwen_tokenizer(tmp_path):
    dst = tmp_path / "t"
    assert cli_synth.main([str(dst), "--like", "tiny", "--no-progress"]) == 0
    assert not (dst / "tokenizer.json").exists()
