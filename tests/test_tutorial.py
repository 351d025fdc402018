"""Every Python snippet of tutorial.md (and of docs/solutions.md) runs, in order, in one namespace, as a reader
would run them: from a folder holding `.cache/bpe_simple_vocab_16e6.txt.gz` (what `make tutorial` fetches),
the repository on the path. They run in a temporary folder, so that nothing is written into the checkout."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def snippets(name: str):
    text = (ROOT / name).read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("name, least", [("tutorial.md", 25), ("docs/solutions.md", 10)])
def test_every_snippet_runs_in_order(clip_vocab_gz, tmp_path, monkeypatch, name, least):
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache/bpe_simple_vocab_16e6.txt.gz").symlink_to(clip_vocab_gz.resolve())
    monkeypatch.chdir(tmp_path)
    blocks = snippets(name)
    assert len(blocks) >= least
    namespace = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{name} snippet {i + 1}", "exec"), namespace)


@pytest.mark.parametrize("name", ["README.md", "tutorial.md", "docs/benchmark.md", "docs/solutions.md"])
def test_every_file_a_page_points_to_exists(name):
    """Links and pictures (`[text](path)`, `![alt](path)`) into the repository, and the repository paths a page
    names in code spans (`unet/packed_conv.py`, `tests/…`), are files and folders the repository has."""
    page = ROOT / name
    text = page.read_text(encoding="utf-8")
    links = [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:|#", t)]
    named = re.findall(r"`((?:minitome|unet|sampler|weights|tests|docs)/[\w./-]*)", text)
    assert links or named, f"{name} points to nothing in the repository"
    missing = [t for t in links if not (page.parent / t).exists()] + [t for t in named if not (ROOT / t).exists()]
    assert not missing, f"{name} points to missing files: {missing}"
