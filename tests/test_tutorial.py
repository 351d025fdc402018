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


NUMBER = re.compile(r"(?<![\w.])(\d[\d,]*\.\d+)(?=×|\b)")
# numbers the "What the numbers support" commentary computes rather than quotes (chapter number → number → how)
DERIVED = {"10": {"0.13": "the largest move of one row between tables 5 and 6's two runs",
                  "0.15": "the largest move of one row between table 7's two runs",
                  "2.8": "0.0202 / 0.0073, two latent changes the sentence quotes",
                  "7.5": "the guidance scale"}}


def table_values(markdown: str) -> list:
    return [float(n.replace(",", "")) for line in markdown.splitlines() if line.startswith(("|", "> |"))
            for n in re.findall(r"\d[\d,]*\.?\d*", line)]


def unquoted(text: str, measured: list) -> tuple:
    """(the numbers of the commentaries found in none of the tables, how many numbers were checked)."""
    missing, checked = [], 0
    for chapter in re.split(r"\n(?=## )", text):
        prose = re.sub(r"```.*?```", "", chapter, flags=re.S)
        commentary = re.search(r"What the numbers support.*?(?=\n\*Exercise|\n## |\Z)", prose, flags=re.S)
        if commentary is None:
            continue
        number = re.match(r"## (\d+)", chapter).group(1)
        values = table_values(prose) + measured
        for quoted in NUMBER.findall(commentary.group(0)):
            checked += 1
            digits = len(quoted.split(".")[1])
            value = float(quoted.replace(",", ""))
            if quoted not in DERIVED.get(number, {}) and not any(abs(v - value) <= 0.5 * 10 ** -digits + 1e-9 for v in values):
                missing.append(f"chapter {number}: {quoted}")
    return missing, checked


def test_the_commentary_quotes_its_tables():
    """Prose that contradicts its data, caught where it can be: every decimal number in a chapter's "What the numbers
    support" commentary is in that chapter's tables or the benchmark's it cites (docs/benchmark.md), to the digits
    the prose prints (0.016 for a table's 0.0156), or is one of the few the commentary computes, listed above."""
    text = (ROOT / "tutorial.md").read_text(encoding="utf-8")
    measured = table_values((ROOT / "docs/benchmark.md").read_text(encoding="utf-8"))  # the full tables it cites
    missing, checked = unquoted(text, measured)
    assert not missing and checked >= 30, (missing, checked)
    assert "loses clearly more (0.0906)" in text  # and a number that drifts from its table is caught
    assert unquoted(text.replace("loses clearly more (0.0906)", "loses clearly more (0.0916)"), measured)[0] == [
        "chapter 10: 0.0916"]


SPEED_UP = re.compile(r"(?<![\w.])(\d[\d,]*(?:\.\d+)?)×(?!\s?\d)")  # 1.46×, not the 64×64 of a size
# speed-ups the prose computes from its own counts rather than quotes (chapter number → number → how)
COMPUTED = {"6": {"2.55": "51 / 20, the UNet calls of PLMS at 50 steps against DPM++ 2M at 20"}}


def unbacked_speed_ups(text: str, measured: list) -> tuple:
    """(the speed-ups quoted anywhere in the prose, outside tables, that no table and no snippet of their chapter
    holds, how many were checked)."""
    missing, checked = [], 0
    for chapter in re.split(r"\n(?=## )", text):
        number = (re.match(r"## (\d+)", chapter) or re.match(r"(.)", chapter)).group(1)
        code = "\n".join(re.findall(r"```.*?```", chapter, flags=re.S))
        prose = re.sub(r"```.*?```", "", chapter, flags=re.S)
        values = table_values(prose) + measured
        sentences = "\n".join(line for line in prose.splitlines() if not line.startswith(("|", "> |", "#")))
        for quoted in SPEED_UP.findall(sentences):
            checked += 1
            digits = len(quoted.split(".")[1]) if "." in quoted else 0
            value = float(quoted.replace(",", ""))
            in_a_table = any(abs(v - value) <= 0.5 * 10 ** -digits + 1e-9 for v in values)
            asserted = re.search(rf"(?<![\d.]){re.escape(quoted)}(?!\d)", code)
            computed = quoted in COMPUTED.get(number, {}) or quoted in DERIVED.get(number, {})
            if not (in_a_table or asserted or computed):
                missing.append(f"chapter {number}: {quoted}×")
    return missing, checked


def test_every_speed_up_the_prose_quotes_is_measured_or_computed():
    """The same class over the whole course: a speed-up written in a sentence (1.46×) is in a table of its chapter
    or of docs/benchmark.md, to the digits printed, or a snippet of its chapter asserts it, or it is one of the few
    listed with how it is computed (here and in DERIVED)."""
    text = (ROOT / "tutorial.md").read_text(encoding="utf-8")
    measured = table_values((ROOT / "docs/benchmark.md").read_text(encoding="utf-8"))
    missing, checked = unbacked_speed_ups(text, measured)
    assert not missing and checked >= 20, (missing, checked)
    drifted = "merging makes the hires pass's calls 1.46× faster"
    assert drifted in text
    assert unbacked_speed_ups(text.replace(drifted, drifted.replace("1.46", "1.47")), measured)[0] == [
        "chapter 7: 1.47×"]
