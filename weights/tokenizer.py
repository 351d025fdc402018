"""Reading the CLIP tokenizer from the files people have: parse → check → the `Tokenizer` (minitome/tokenizer.py).

Where this sits: `weights.load` calls `read_tokenizer` for the folder's `tokenizer/`, or the file given. It takes
a folder with vocab.json + merges.txt (the SD 1.5 repository's `tokenizer/`) or tokenizer.json (what newer
transformers save), or CLIP's own `bpe_simple_vocab_16e6.txt.gz`, whose vocabulary is implicit in its merges.
Whatever the files, the table must have CLIP's layout (`check_layout`), on which every id the BPE makes relies.
"""
import gzip
import json
import zlib
from pathlib import Path

from minitome.tokenizer import BOS, EOS, NUM_MERGES, Tokenizer, bytes_to_unicode, clip_vocab
from .checkpoint import WeightsError


class TokenizerError(WeightsError):
    """Tokenizer files that cannot be used; the message is one line naming the file and the problem."""


def read_text(path: Path) -> str:
    """A tokenizer file's text (gzip-compressed for .gz), every failure a TokenizerError naming the file."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as f:
                return f.read()
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TokenizerError(f"{path}: not UTF-8 text") from None
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError; a truncated .gz an EOFError
        raise TokenizerError(f"{path}: cannot be read ({error})") from None


def read_json(path: Path):
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise TokenizerError(f"{path}: not valid JSON ({error})") from None
    except RecursionError:
        raise TokenizerError(f"{path}: not valid JSON (nested too deep)") from None


def merge_pairs(lines: list, source) -> list:
    """The merge list: CLIP's first 48,894 "a b" lines after the version header."""
    merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]
    if len(merges) < NUM_MERGES or any(len(pair) != 2 for pair in merges):
        bad = next((i for i, pair in enumerate(merges) if len(pair) != 2), len(merges))
        raise TokenizerError(f"{source}: expected a version line and {NUM_MERGES:,} merges of two symbols each, "
                             f"line {bad + 2} is not one")
    return merges


def check_layout(vocab: dict, merges: list, source):
    """CLIP's vocabulary layout, which every id the BPE can produce relies on: ids 0–255 are the byte
    symbols, 256–511 the same with </w>, the merge of rank k is id 512 + k and is made of symbols
    that exist before it, then the two specials. A shuffled or foreign merges.txt breaks it."""
    if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
        raise TokenizerError(f"{source}: the vocabulary must map symbols to integer ids")
    base = list(bytes_to_unicode().values())
    expected = [(b, i) for i, b in enumerate(base)] + [(b + "</w>", 256 + i) for i, b in enumerate(base)]
    expected += [(BOS, 512 + len(merges)), (EOS, 513 + len(merges))]
    for symbol, i in expected:
        if vocab.get(symbol) != i:
            raise TokenizerError(f"{source}: {symbol!r} should be id {i} in CLIP's vocabulary, "
                                 f"found {vocab.get(symbol)}")
    for rank, (a, b) in enumerate(merges):
        made, limit = vocab.get(a + b), 512 + rank
        if made != limit or not vocab.get(a, limit) < limit or not vocab.get(b, limit) < limit:
            raise TokenizerError(f"{source}: merge {rank + 1} ({a} {b}) does not match the vocabulary "
                                 f"(CLIP's merge of rank k is id 512 + k, made of earlier symbols); "
                                 "are vocab.json and merges.txt from the same tokenizer?")



def checked(merges: list, vocab, source) -> Tokenizer:
    """The tokenizer, once its table (given, or CLIP's own from the merges) has CLIP's layout."""
    vocab = clip_vocab(merges) if vocab is None else vocab
    check_layout(vocab, merges, source)
    return Tokenizer(merges, vocab)


def read_tokenizer(path) -> Tokenizer:
    """A folder with vocab.json + merges.txt (the SD 1.5 repository's `tokenizer/`) or tokenizer.json
    (what newer transformers save), or CLIP's own `bpe_simple_vocab_16e6.txt.gz`."""
    path = Path(path)
    if path.is_dir():
        vocab_file, merges_file, single = path / "vocab.json", path / "merges.txt", path / "tokenizer.json"
        if not (vocab_file.is_file() and merges_file.is_file()) and single.is_file():
            model = read_json(single)
            model = model.get("model") if isinstance(model, dict) else None
            if not isinstance(model, dict) or not isinstance(model.get("merges"), list):
                raise TokenizerError(f"{single}: no BPE model (\"model\" with \"vocab\" and \"merges\")")
            lines = ["#version"] + [m if isinstance(m, str) else " ".join(map(str, m)) for m in model["merges"]]
            return checked(merge_pairs(lines, single), model.get("vocab"), single)
        missing = [f.name for f in (vocab_file, merges_file) if not f.is_file()]
        if missing:
            raise TokenizerError(f"{path}: tokenizer files missing: {', '.join(missing)} (or tokenizer.json)")
        merges, vocab = merge_pairs(read_text(merges_file).split("\n"), merges_file), read_json(vocab_file)
        source = f"{path} (vocab.json + merges.txt)"
    elif path.name.endswith(".txt.gz") and path.is_file():
        merges, vocab, source = merge_pairs(read_text(path).split("\n"), path), None, path
    else:
        raise TokenizerError(f"{path}: no tokenizer here (need a folder with vocab.json + merges.txt, "
                             "or bpe_simple_vocab_16e6.txt.gz)")
    return checked(merges, vocab, source)
