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
import json
import unicodedata
import warnings
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


class Tokenizer:
    def __init__(self, merges: list, vocab: dict = None):
        """merges: pairs ("a", "b") in rank order. vocab: symbol → id; built from the merges when None,
        as CLIP's own `bpe_simple_vocab_16e6.txt.gz` leaves it implicit."""
        if vocab is None:
            base = list(bytes_to_unicode().values())
            symbols = base + [b + "</w>" for b in base] + ["".join(pair) for pair in merges] + [BOS, EOS]
            vocab = {symbol: i for i, symbol in enumerate(symbols)}
        self.vocab, self.ranks = vocab, {pair: rank for rank, pair in enumerate(merges)}
        self.bos_id, self.eos_id = vocab[BOS], vocab[EOS]
        self.byte_chars = bytes_to_unicode()
        self.cache = {}

    @classmethod
    def from_files(cls, path) -> "Tokenizer":
        """A folder with vocab.json + merges.txt (the SD 1.5 repository's `tokenizer/`) or tokenizer.json
        (what newer transformers save), or CLIP's own `bpe_simple_vocab_16e6.txt.gz`."""
        path = Path(path)
        if path.is_dir():
            vocab_file, merges_file, single = path / "vocab.json", path / "merges.txt", path / "tokenizer.json"
            if not (vocab_file.exists() and merges_file.exists()) and single.exists():
                model = json.loads(single.read_text(encoding="utf-8"))["model"]
                merges = [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in model["merges"]]
                return cls(merges[:NUM_MERGES], model["vocab"])
            missing = [f.name for f in (vocab_file, merges_file) if not f.exists()]
            if missing:
                raise FileNotFoundError(f"{path}: tokenizer files missing: {', '.join(missing)} (or tokenizer.json)")
            lines = merges_file.read_text(encoding="utf-8").split("\n")
            vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
        elif path.name.endswith(".txt.gz") and path.exists():
            lines, vocab = gzip.open(path, "rt", encoding="utf-8").read().split("\n"), None
        else:
            raise FileNotFoundError(f"{path}: no tokenizer here (need a folder with vocab.json + merges.txt, "
                                    "or bpe_simple_vocab_16e6.txt.gz)")
        merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]  # line 0 is a version header
        return cls(merges, vocab)

    def bpe(self, piece: str) -> list:
        """Step 4 on one piece (already spelled in byte characters): its list of vocabulary symbols."""
        if piece in self.cache:
            return self.cache[piece]
        word = list(piece[:-1]) + [piece[-1] + "</w>"]
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            best = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):  # merge every occurrence of the best pair, left to right
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self.cache[piece] = word
        return word

    def encode_and_show_work(self, text: str) -> dict:
        """Every intermediate of encoding one prompt (without BOS/EOS or padding), for readers."""
        cleaned = clean(text)
        pieces = PATTERN.findall(cleaned)
        spelled = [p if p in (BOS, EOS) else "".join(self.byte_chars[b] for b in p.encode("utf-8")) for p in pieces]
        symbols = [[p] if p in (BOS, EOS) else self.bpe(p) for p in spelled]
        ids = [self.vocab[s] for word in symbols for s in word]
        return {"text": text, "cleaned": cleaned, "pieces": pieces, "spelled": spelled, "symbols": symbols, "ids": ids}

    def encode(self, text: str) -> list:
        return self.encode_and_show_work(text)["ids"]

    def __call__(self, prompts: list) -> torch.Tensor:
        """(B,) prompts → LongTensor (B, 77): BOS + at most 75 ids + EOS, padded with EOS."""
        rows = []
        for prompt in prompts:
            ids = self.encode(prompt)
            if len(ids) > CONTEXT_LENGTH - 2:
                warnings.warn(f"prompt is {len(ids)} tokens, the limit is {CONTEXT_LENGTH - 2}: "
                              f"the last {len(ids) - (CONTEXT_LENGTH - 2)} were dropped", stacklevel=2)
                ids = ids[:CONTEXT_LENGTH - 2]
            row = [self.bos_id] + ids + [self.eos_id]
            rows.append(row + [self.eos_id] * (CONTEXT_LENGTH - len(row)))
        return torch.tensor(rows, dtype=torch.long)
