"""Every Python snippet of tutorial.md runs, in order, in one namespace, from the repository root."""
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def snippets():
    text = (ROOT / "tutorial.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_every_tutorial_snippet_runs(clip_vocab_gz, monkeypatch):
    monkeypatch.chdir(ROOT)
    if not (ROOT / ".cache/bpe_simple_vocab_16e6.txt.gz").exists():  # the tutorial reads it where make test puts it
        os.makedirs(ROOT / ".cache", exist_ok=True)
        (ROOT / ".cache/bpe_simple_vocab_16e6.txt.gz").write_bytes(clip_vocab_gz.read_bytes())
    blocks = snippets()
    assert len(blocks) >= 12
    namespace = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"tutorial.md snippet {i + 1}", "exec"), namespace)
