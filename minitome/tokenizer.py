"""The CLIP tokenizer, from scratch: a prompt becomes 77 token ids.

Where this sits: first stage of the pipeline (`minitome/pipeline.py`); its ids go to the text encoder
(`minitome/clip.py`). Mirrors OpenAI CLIP's `simple_tokenizer.py` and transformers' `CLIPTokenizer`
(whose text clean-up it follows, so that a prompt gives the same ids, and the same image, as diffusers).

Byte-level BPE in five steps:
1. clean: Unicode NFC, every run of whitespace → one space, lower-case;
2. split into pieces with CLIP's pattern: contractions ('s 't 're 've 'm 'll 'd), runs of letters,
   single digits, runs of other non-space symbols;
3. write each piece's UTF-8 bytes as printable characters (`bytes_to_unicode`), so any text,
   emoji included, is spelled with 256 base symbols and nothing is ever unknown;
4. byte-pair encoding: mark the end of the word (`</w>` on its last symbol), then merge the adjacent
   pair ranked highest in the merge list, again and again, until no pair is in the list;
5. look the symbols up in the vocabulary: 256 bytes, the same with `</w>`, one entry per merge
   (48,894) and the two specials `<|startoftext|>` (49406) and `<|endoftext|>` (49407): 49,408 ids.
A prompt becomes BOS + its first 75 ids + EOS, padded with EOS to 77.
"""
import gzip
import heapq
import json
import unicodedata
import warnings
import zlib
from functools import lru_cache
from pathlib import Path

import regex
import torch

PATTERN = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""")
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CONTEXT_LENGTH = 77
NUM_MERGES = 49152 - 256 - 2  # the merge list's length in CLIP: 48,894


@lru_cache()
def bytes_to_unicode() -> dict:
    """A printable character for each of the 256 byte values: printable bytes stand for themselves,
    the others (controls, space, …) are moved to code points 256 and up, in byte order.

    The dict's order is the vocabulary's: the 188 printable bytes first (`!`…`~`, `¡`…`¬`, `®`…`ÿ`),
    then the other 68, so "a" (byte 97) is id 64 and "a</w>" is 256 + 64 = 320, as in CLIP."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def clean(text: str) -> str:
    """Step 1: NFC, collapse whitespace runs to one space, lower-case (as transformers' CLIPTokenizer)."""
    return regex.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).lower()


class TokenizerError(ValueError):
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


class Tokenizer:
    def __init__(self, merges: list, vocab: dict = None, source: str = "tokenizer"):
        """merges: pairs ("a", "b") in rank order. vocab: symbol → id; built from the merges when None,
        as CLIP's own `bpe_simple_vocab_16e6.txt.gz` leaves it implicit. Either way the table must have
        CLIP's layout (`check_layout`); source names the files in its errors."""
        base = list(bytes_to_unicode().values())
        if vocab is None:
            symbols = base + [b + "</w>" for b in base] + ["".join(pair) for pair in merges] + [BOS, EOS]
            vocab = {symbol: i for i, symbol in enumerate(symbols)}
        self.vocab, self.ranks = vocab, {pair: rank for rank, pair in enumerate(merges)}
        self.check_layout(merges, source)
        self.bos_id, self.eos_id = vocab[BOS], vocab[EOS]
        self.byte_chars = bytes_to_unicode()
        self.cache = {}
        self.added, self.added_pattern = {}, None  # textual inversion: a token's name (lower case) → its ids

    def add_token(self, name: str, ids: list):
        """A textual-inversion token (weights/embedding.py): `name` reads as `ids`, and for n ids the names
        name_1 … name_{n-1} read as one id each (as diffusers' load_textual_inversion adds them). Names are
        found anywhere in the cleaned (lower-cased) prompt, the longest first, before the text is split."""
        self.added[clean(name)] = list(ids)
        for i, one in enumerate(ids[1:], start=1):
            self.added[clean(f"{name}_{i}")] = [one]
        names = sorted(self.added, key=len, reverse=True)
        self.added_pattern = regex.compile("|".join(regex.escape(n) for n in names))

    def known(self, name: str) -> bool:
        """Whether a token name is taken: in the vocabulary (as diffusers asks, and lower-cased too, since names are
        found in the lower-cased prompt: "Fox" would take every "fox"), or already added."""
        return name in self.vocab or clean(name) in self.vocab or clean(name) in self.added

    def check_layout(self, merges: list, source):
        """CLIP's vocabulary layout, which every id the BPE can produce relies on: ids 0–255 are the byte
        symbols, 256–511 the same with </w>, the merge of rank k is id 512 + k and is made of symbols
        that exist before it, then the two specials. A shuffled or foreign merges.txt breaks it."""
        if not isinstance(self.vocab, dict) or not all(isinstance(i, int) for i in self.vocab.values()):
            raise TokenizerError(f"{source}: the vocabulary must map symbols to integer ids")
        base = list(bytes_to_unicode().values())
        expected = [(b, i) for i, b in enumerate(base)] + [(b + "</w>", 256 + i) for i, b in enumerate(base)]
        expected += [(BOS, 512 + len(merges)), (EOS, 513 + len(merges))]
        for symbol, i in expected:
            if self.vocab.get(symbol) != i:
                raise TokenizerError(f"{source}: {symbol!r} should be id {i} in CLIP's vocabulary, "
                                     f"found {self.vocab.get(symbol)}")
        for rank, (a, b) in enumerate(merges):
            made, limit = self.vocab.get(a + b), 512 + rank
            if made != limit or not self.vocab.get(a, limit) < limit or not self.vocab.get(b, limit) < limit:
                raise TokenizerError(f"{source}: merge {rank + 1} ({a} {b}) does not match the vocabulary "
                                     f"(CLIP's merge of rank k is id 512 + k, made of earlier symbols); "
                                     "are vocab.json and merges.txt from the same tokenizer?")

    @classmethod
    def from_files(cls, path) -> "Tokenizer":
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
                return cls(merge_pairs(lines, single), model.get("vocab"), str(single))
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
        return cls(merges, vocab, str(source))

    def bpe(self, piece: str) -> list:
        """Step 4 on one piece (already spelled in byte characters): its list of vocabulary symbols.

        The rule: merge the adjacent pair of lowest rank, everywhere it occurs (left to right), until no
        pair is in the list. Done literally, that rescans the whole word after every merge, n² for a word
        of n symbols. Here the candidate pairs wait in a heap ordered by (rank, position), the symbols sit
        in a linked list, and each merge only adds the two pairs it creates: n log n, the same symbols.
        This order is the rule's because a pair that contains a merged symbol always ranks after the merge
        that made it (checked by `check_layout`), and position breaks ties left to right.
        """
        if piece in self.cache:
            return self.cache[piece]
        symbols = list(piece[:-1]) + [piece[-1] + "</w>"]
        after = list(range(1, len(symbols))) + [None]   # the linked list: the next live symbol's index
        before = [None] + list(range(len(symbols) - 1))
        heap = []

        def push(i, j):  # the pair starting at symbol i, if it is a merge
            rank = self.ranks.get((symbols[i], symbols[j]))
            if rank is not None:
                heapq.heappush(heap, (rank, i, symbols[i], symbols[j]))

        for i in range(len(symbols) - 1):
            push(i, i + 1)
        while heap:
            _, i, a, b = heapq.heappop(heap)
            j = after[i]
            if symbols[i] != a or j is None or symbols[j] != b:
                continue  # stale: one of the two was merged into something else since
            symbols[i], symbols[j] = a + b, None  # j leaves the list
            after[i] = after[j]
            if after[j] is not None:
                before[after[j]] = i
                push(i, after[j])
            if before[i] is not None:
                push(before[i], i)
        word = [s for s in symbols if s is not None]
        self.cache[piece] = word
        return word

    def encode_and_show_work(self, text: str) -> dict:
        """Every intermediate of encoding one prompt (without BOS/EOS or padding), for readers."""
        cleaned = clean(text)
        pieces, start = [], 0
        for match in self.added_pattern.finditer(cleaned) if self.added_pattern else ():  # added tokens first
            pieces += PATTERN.findall(cleaned[start:match.start()]) + [match.group()]
            start = match.end()
        pieces += PATTERN.findall(cleaned[start:])
        added = lambda p: p in self.added and p not in (BOS, EOS)  # noqa: E731
        spelled = [p if p in (BOS, EOS) or added(p) else "".join(self.byte_chars[b] for b in p.encode("utf-8"))
                   for p in pieces]
        symbols = [[p] if p in (BOS, EOS) or added(p) else self.bpe(p) for p in spelled]
        ids = [i for word in symbols for s in word for i in (self.added[s] if added(s) else [self.vocab[s]])]
        return {"text": text, "cleaned": cleaned, "pieces": pieces, "spelled": spelled, "symbols": symbols, "ids": ids}

    def encode(self, text: str) -> list:
        return self.encode_and_show_work(text)["ids"]

    def __call__(self, prompts: list) -> torch.Tensor:
        """(B,) prompts → LongTensor (B, 77): BOS + at most 75 ids + EOS, padded with EOS."""
        rows = []
        for prompt in prompts:
            ids = self.encode(prompt)
            if len(ids) > CONTEXT_LENGTH - 2:
                start = prompt if len(prompt) <= 30 else prompt[:30] + "…"  # which prompt: the negative one too
                warnings.warn(f"prompt is {len(ids)} tokens, the limit is {CONTEXT_LENGTH - 2}: "
                              f"the last {len(ids) - (CONTEXT_LENGTH - 2)} were dropped (the prompt {start!r})",
                              stacklevel=2)
                ids = ids[:CONTEXT_LENGTH - 2]
            row = [self.bos_id] + ids + [self.eos_id]
            rows.append(row + [self.eos_id] * (CONTEXT_LENGTH - len(row)))
        return torch.tensor(rows, dtype=torch.long)
