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
EARLIER_RUN = "an earlier 512² run the same evening, quoted beside this run's in docs/benchmark.md"
# speed-ups the prose computes rather than reads from a table (page → number → how): a pair (a, b) is the ratio
# a / b of two figures the page prints, checked to the digits quoted; a sentence says how the others are found
COMPUTED = {"tutorial.md": {"2.55": ("51", "20")},  # the UNet calls of PLMS at 50 steps against DPM++ 2M at 20
            "README.md": {"2.55": ("595", "233"), "2.88": EARLIER_RUN},
            "docs/benchmark.md": {
                "0.76": ("34.8", "45.8"), "1.00": ("2.52", "2.51"), "2.55": ("595.2", "233.4"),
                "3.13": ("595.2", "190.1"), "1.04": ("6.26", "6.03"),  # the first round's none / ToMe
                "1.23": "the top of the range of 512² ToMe calls in the blocks below, the samplers' table",
                "12.7": ("1,606.5", "126.5"), "9.2": ("9,348", "1,020.9"),
                "1.18": "1 / (1 − 0.155), the sentence's own formula",
                "1.30": "16.08 s against the ratio-0.5 call's 12.63 s less its 2.1% of merging",
                "1.16": ("6.79", "5.83"),  # one image's time: a guided call alone / with ToMe 0.5, float32
                **dict.fromkeys(["1.17", "2.88", "2.83", "2.37", "3.34"], EARLIER_RUN)}}


def rounds_to(value: float, quoted: str) -> bool:
    digits = len(quoted.split(".")[1]) if "." in quoted else 0
    return abs(value - float(quoted.replace(",", ""))) <= 0.5 * 10 ** -digits + 1e-9


def unbacked_speed_ups(name: str, text: str, measured: list) -> tuple:
    """(the speed-ups quoted in the page's prose, outside tables, that neither a table of their section nor
    `measured` holds, no snippet of their section asserts and COMPUTED does not derive, how many were checked)."""
    missing, checked = [], 0
    computed = COMPUTED.get(name, {})
    for section in re.split(r"\n(?=## )", text):
        heading = section.splitlines()[0]
        code = "\n".join(re.findall(r"```.*?```", section, flags=re.S))
        prose = re.sub(r"```.*?```", "", section, flags=re.S)
        values = table_values(prose) + measured
        chapter = re.match(r"## (\d+)", heading)
        derived = DERIVED.get(chapter.group(1), {}) if chapter and name == "tutorial.md" else {}
        sentences = "\n".join(line for line in prose.splitlines() if not line.startswith(("|", "> |", "#")))
        for quoted in SPEED_UP.findall(sentences):
            checked += 1
            how = computed.get(quoted)
            if isinstance(how, tuple):  # a ratio of two printed figures: both printed, and the ratio right
                a, b = how
                printed = all(re.search(rf"(?<![\d.,]){re.escape(x)}(?!\d|[.,]\d)", text) for x in how)
                how = printed and rounds_to(float(a.replace(",", "")) / float(b.replace(",", "")), quoted)
            in_a_table = any(rounds_to(v, quoted) for v in values)
            asserted = re.search(rf"(?<![\d.]){re.escape(quoted)}(?!\d)", code)
            if not (in_a_table or asserted or how or quoted in derived):
                missing.append(f"{name}, {heading[:40]}: {quoted}×")
    return missing, checked


def cited(name: str) -> list:
    """The figures a page may quote beside its own sections' tables: the course and the README cite the
    benchmark's; each block of the benchmark stands on its own tables."""
    benchmark = ROOT / "docs/benchmark.md"
    return [] if name == "docs/benchmark.md" else table_values(benchmark.read_text(encoding="utf-8"))


@pytest.mark.parametrize("name, least", [("tutorial.md", 20), ("README.md", 20), ("docs/benchmark.md", 40)])
def test_every_speed_up_the_prose_quotes_is_measured_or_computed(name, least):
    """The same class over the course, the README and the benchmark's commentary: a speed-up written in a
    sentence (1.46×) is in a table of its section or of the benchmark it cites, to the digits printed, or a
    snippet of its section asserts it, or it is one of the few that COMPUTED (and DERIVED) list with how they
    are found; a ratio of two printed figures is recomputed."""
    text = (ROOT / name).read_text(encoding="utf-8")
    missing, checked = unbacked_speed_ups(name, text, cited(name))
    assert not missing and checked >= least, (missing, checked)


@pytest.mark.parametrize("name, old, new, flagged", [
    ("tutorial.md", "the hires pass's calls 1.46× faster", "the hires pass's calls 1.47× faster", "1.47"),
    ("docs/benchmark.md", "and takes 0.76× its time", "and takes 0.77× its time", "0.77"),  # a computed ratio
    ("docs/benchmark.md", "| encoder | diffusers | 2.51 | 45.8 |", "| encoder | diffusers | 2.51 | 44.8 |", "0.76"),
    ("docs/benchmark.md", "(2.55×), before any token", "(2.54×), before any token", "2.54")])
def test_a_speed_up_that_drifts_from_its_data_is_caught(name, old, new, flagged):
    """Teeth: a quoted speed-up changed by one in its last digit, or a figure its ratio is computed from, fails."""
    text = (ROOT / name).read_text(encoding="utf-8")
    assert text.count(old) == 1
    missing, _ = unbacked_speed_ups(name, text.replace(old, new), cited(name))
    assert len(missing) == 1 and missing[0].endswith(f": {flagged}×"), missing
