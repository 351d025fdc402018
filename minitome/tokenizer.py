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
import heapq
import unicodedata
import warnings
from functools import lru_cache

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


def clip_vocab(merges: list) -> dict:
    """CLIP's vocabulary from its merges: the 256 byte symbols, the same with </w>, one symbol per merge, the two
    specials."""
    base = list(bytes_to_unicode().values())
    symbols = base + [b + "</w>" for b in base] + ["".join(pair) for pair in merges] + [BOS, EOS]
    return {symbol: i for i, symbol in enumerate(symbols)}


class Tokenizer:
    def __init__(self, merges: list, vocab: dict = None):
        """merges: pairs ("a", "b") in rank order. vocab: symbol → id; built from the merges when None,
        as CLIP's own `bpe_simple_vocab_16e6.txt.gz` leaves it implicit. Either way the table has CLIP's
        layout (weights/tokenizer.py reads the files and checks it)."""
        vocab = clip_vocab(merges) if vocab is None else vocab
        self.vocab, self.ranks = vocab, {pair: rank for rank, pair in enumerate(merges)}
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

    def bpe(self, piece: str) -> list:
        """Step 4 on one piece (already spelled in byte characters): its list of vocabulary symbols.

        The rule: merge the adjacent pair of lowest rank, everywhere it occurs (left to right), until no
        pair is in the list. Done literally, that rescans the whole word after every merge, n² for a word
        of n symbols. Here the candidate pairs wait in a heap ordered by (rank, position), the symbols sit
        in a linked list, and each merge only adds the two pairs it creates: n log n, the same symbols.
        This order is the rule's because a pair that contains a merged symbol always ranks after the merge
        that made it (weights/tokenizer.py checks it), and position breaks ties left to right.
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
