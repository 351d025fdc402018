"""The tokenizer against transformers' CLIPTokenizer on the real 49,408-token vocabulary."""
import random

import pytest
from hypothesis import given, settings, strategies as st
import torch

from minitome.tokenizer import bytes_to_unicode
from weights.tokenizer import TokenizerError, read_tokenizer

HAND_WRITTEN = [
    "a photo of a cat", "A PHOTO OF A CAT", "", " ", "astronaut riding a horse, 8k, trending on artstation",
    "it's a dog's life; they're here, we've gone, I'm in, you'll see, he'd say", "don't   stop\t\tbelieving\n\nnow",
    "café crème brûlée naïve façade", "Ångström über straße", "東京の夜景、ネオン", "한국어 프롬프트", "中文提示词：山水画",
    "emoji 🐱🐶🚀✨ party 🎉🎉", "family 👨‍👩‍👧 flag 🇯🇵", "&amp; &lt;b&gt; &quot;quoted&quot; &#39;", "<b>bold</b> <i>x</i>",
    "1234567890 3.14159 1e-5 #42 $100 50%", "(masterpiece:1.2), [[best quality]], {{detailed}}", "a--b__c..d!!e??f",
    "trailing spaces   ", "   leading spaces", "tabs\tand\nnewlines\r\nand\u00a0nbsp\u2003em space",
    "e\u0301 composed vs é", "ﬁ ligature ﬀ", "ⅷ roman ① circled ２ fullwidth", "Ελληνικά κείμενο", "русский текст",
    "العربية نص", "עברית", "हिन्दी पाठ", "ไทย", "'s't're've'm'll'd", "''quotes'' and `backticks`", "a/b\\c|d",
    "<|startoftext|> inside text", "ends with <|endoftext|>", "x" * 300, "word " * 100, "🙂" * 40,
    "a photo of an astronaut riding a horse on mars, highly detailed, sharp focus, cinematic lighting, by greg rutkowski and alphonse mucha",
]

POOL = list("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`") + \
    list("éèêëàâäôöûüçñßøåæœ") + list("日本語中文한국어") + ["🐱", "🚀", "👍🏽", "❤️", "  ", "\t", "\n", "&amp;", "'s", "'ll"]


def generated_prompts(n, seed=0):
    rng = random.Random(seed)
    return ["".join(rng.choice(POOL) for _ in range(rng.randint(1, 60))) for _ in range(n)]


PROMPTS = HAND_WRITTEN + generated_prompts(220)


@pytest.fixture(scope="module")
def reference(clip_tokenizer_folder):
    from transformers import CLIPTokenizer
    return CLIPTokenizer.from_pretrained(str(clip_tokenizer_folder))


@pytest.fixture(scope="module")
def ours(clip_vocab_gz):
    return read_tokenizer(clip_vocab_gz)


@pytest.fixture(scope="module")
def ours_from_folder(clip_tokenizer_folder):
    return read_tokenizer(clip_tokenizer_folder)


def test_published_facts_of_the_sd15_vocabulary(ours, ours_from_folder):
    """The SD 1.5 repository's tokenizer/vocab.json: 49,408 entries, "a</w>" 320, "photo</w>" 1125, and
    the specials last; the same table whether read from CLIP's .txt.gz or from vocab.json + merges.txt."""
    for tok in (ours, ours_from_folder):
        assert len(tok.vocab) == 49408 and len(tok.ranks) == 48894
        assert tok.vocab["a</w>"] == 320 and tok.vocab["photo</w>"] == 1125
        assert tok.vocab["<|startoftext|>"] == tok.bos_id == 49406 and tok.vocab["<|endoftext|>"] == tok.eos_id == 49407
    assert len(bytes_to_unicode()) == 256 and len(set(bytes_to_unicode().values())) == 256


def test_vocabulary_table_is_open_clips(ours, ours_from_folder, open_clip_tokenizer):
    """The whole table built from the .txt.gz, entry by entry, against open_clip's SimpleTokenizer's."""
    from conftest import OPEN_CLIP_SPECIALS
    expected = {OPEN_CLIP_SPECIALS.get(s, s): i for s, i in open_clip_tokenizer.encoder.items()}
    assert ours.vocab == expected and ours_from_folder.vocab == expected
    assert list(bytes_to_unicode().items()) == list(open_clip_tokenizer.byte_encoder.items())  # the order is the ids
    assert ours.ranks == open_clip_tokenizer.bpe_ranks


def test_bpe_and_byte_order_match_open_clip(ours, ours_from_folder, open_clip_tokenizer):
    """On every prompt that open_clip's own clean-up (ftfy, HTML unescaping, stripping) leaves as it is,
    ours and open_clip's give the same ids, from both of our vocabulary paths. Prompts that spell a
    special token are left to the transformers tests: open_clip renamed its specials, so it reads
    `<|startoftext|>` as text where CLIP and transformers read the special token."""
    import sys
    open_clip = sys.modules[type(open_clip_tokenizer).__module__]
    unchanged = [p for p in PROMPTS if open_clip.basic_clean(p) == p and "<|" not in p]
    assert len(unchanged) >= 150
    for prompt in unchanged:
        expected = open_clip_tokenizer.encode(prompt)
        assert ours.encode(prompt) == expected, prompt
        assert ours_from_folder.encode(prompt) == expected, prompt


def test_tokenizer_json_as_newer_transformers_save_it(reference, ours, tmp_path):
    reference.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").exists() and not (tmp_path / "vocab.json").exists()
    from_json = read_tokenizer(tmp_path)
    assert from_json.vocab == ours.vocab and from_json.ranks == ours.ranks


def test_ids_match_transformers_on_over_200_prompts(ours, reference):
    assert len(PROMPTS) >= 200
    expected = reference(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with pytest.warns(UserWarning):  # some prompts are too long
        got = ours(PROMPTS)
    mismatched = [p for p, a, b in zip(PROMPTS, got, expected) if not torch.equal(a, b)]
    assert not mismatched, f"{len(mismatched)} prompts differ, first {mismatched[0]!r}"


def test_untruncated_ids_match_transformers(ours, reference):
    for prompt in PROMPTS:
        assert ours.encode(prompt) == reference(prompt, add_special_tokens=False).input_ids, prompt


def test_long_prompt_keeps_bos_first_75_ids_eos_and_warns(ours, reference):
    prompt = "word " * 100
    with pytest.warns(UserWarning, match="prompt is 100 tokens, the limit is 75: the last 25 were dropped"):
        ids = ours([prompt])[0]
    full = reference(prompt, add_special_tokens=False).input_ids
    assert len(full) == 100 and ids.tolist() == [49406] + full[:75] + [49407]


def test_short_prompt_is_padded_with_eos(ours):
    ids = ours(["a cat"])[0].tolist()
    assert len(ids) == 77 and ids[0] == 49406 and ids[3:] == [49407] * 74


def test_show_work_explains_each_step(ours):
    work = ours.encode_and_show_work("Hello,  World!!")
    assert work["cleaned"] == "hello, world!!"
    assert work["pieces"] == ["hello", ",", "world", "!!"]
    assert work["spelled"] == work["pieces"]  # printable ASCII stands for itself
    assert [s[-1].endswith("</w>") for s in work["symbols"]] == [True] * 4
    assert work["ids"] == [ours.vocab[s] for word in work["symbols"] for s in word]  # the last step is a lookup
    # a space or a non-ASCII byte is spelled with a stand-in character
    assert ours.encode_and_show_work("é")["spelled"] == ["".join(bytes_to_unicode()[b] for b in "é".encode())]


def test_missing_tokenizer_files_are_a_clear_error(tmp_path):
    with pytest.raises(TokenizerError, match=r"tokenizer files missing: vocab.json, merges.txt \(or tokenizer.json\)"):
        read_tokenizer(tmp_path)
    with pytest.raises(TokenizerError, match="no tokenizer here"):
        read_tokenizer(tmp_path / "nothing.txt.gz")


@settings(max_examples=300, deadline=None)
@given(text=st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cn")), max_size=40))
def test_any_text_gives_transformers_ids(ours, reference, text):
    """Any assigned Unicode text (controls, combining marks, emoji, every script), against CLIPTokenizer.
    Unassigned code points (category Cn in Python's Unicode database) are left out: the `regex` module's
    newer Unicode tables call some of them letters where the tokenizers library's tables do not."""
    assert ours.encode(text) == reference(text, add_special_tokens=False).input_ids
