"""Every Python snippet of tutorial.md runs, in order, in one namespace, as a reader would run them: from a
folder holding `.cache/bpe_simple_vocab_16e6.txt.gz` (what `make tutorial` fetches), the repository on the path.
They run in a temporary folder, so that nothing is written into the checkout."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def snippets():
    text = (ROOT / "tutorial.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_every_tutorial_snippet_runs(clip_vocab_gz, tmp_path, monkeypatch):
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache/bpe_simple_vocab_16e6.txt.gz").symlink_to(clip_vocab_gz.resolve())
    monkeypatch.chdir(tmp_path)
    blocks = snippets()
    assert len(blocks) >= 12
    namespace = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"tutorial.md snippet {i + 1}", "exec"), namespace)
