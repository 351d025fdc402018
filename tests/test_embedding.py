"""Textual-inversion embeddings (`--embedding PATH[:TOKEN]`, weights/embedding.py) against diffusers'
`load_textual_inversion`, in float64: the same ids for the same prompt, and the same text-encoder output.

The files are written here in each format people have, on random vectors of the tiny text encoder's width:
A1111's `.pt` (`string_to_param["*"]`, read with torch.load(weights_only=True)), A1111's safetensors
(`emb_params`) and diffusers' `learned_embeds.safetensors` (`{token: vector}`); one and several vectors.
"""
import torch
from safetensors.torch import save_file

import weights
from conftest import F64_BOUND, relative_error


def embedding_files(folder, width: int) -> dict:
    """file → (the token it is loaded as, its vectors), in three formats."""
    g = torch.Generator().manual_seed(21)
    a1111_pt, a1111_st, learned = folder / "watercolour.pt", folder / "oil-style.safetensors", folder / "learned_embeds.safetensors"
    vectors = {a1111_pt: torch.randn(3, width, generator=g), a1111_st: torch.randn(2, width, generator=g),
               learned: torch.randn(width, generator=g)}
    torch.save({"string_to_param": {"*": vectors[a1111_pt]}, "name": "watercolour", "step": 1000}, a1111_pt)
    save_file({"emb_params": vectors[a1111_st]}, str(a1111_st))
    save_file({"<cat-toy>": vectors[learned]}, str(learned))
    return {a1111_pt: ("watercolour", vectors[a1111_pt]), a1111_st: ("oil-style", vectors[a1111_st]),
            learned: ("<cat-toy>", vectors[learned])}


PROMPTS = ["a <cat-toy> in the style of watercolour, oil-style", "watercolour", "WaterColour cat-toy <cat-toy>oil-style",
           "a plain prompt"]


@torch.no_grad()
def test_embeddings_match_load_textual_inversion(tiny_pipeline, tmp_path):
    import copy
    pipe, folder = tiny_pipeline
    files = embedding_files(tmp_path, pipe.text_encoder.config.hidden_size)
    reference = copy.deepcopy(pipe).to(torch.float64)
    for path, (token, _) in files.items():
        reference.load_textual_inversion(str(path), token=token)
    sd = weights.load(folder, dtype=torch.float64, embeddings=[(path, None) for path in files])
    assert sd.text_encoder.config.vocab_size == 49408 + 3 + 2 + 1
    for prompt in PROMPTS[:2] + PROMPTS[3:]:  # lower-case names: diffusers expands them to their vectors
        converted = reference.maybe_convert_prompt(prompt, reference.tokenizer)
        expected = reference.tokenizer([converted], padding="max_length", max_length=77, return_tensors="pt").input_ids
        ids = sd.tokenizer([prompt])
        assert torch.equal(ids, expected), prompt
        ours, theirs = sd.text_encoder(ids), reference.text_encoder(expected).last_hidden_state
        print(f"embeddings, {prompt!r}: text encoder {relative_error(ours, theirs):.1e}")
        assert relative_error(ours, theirs) < F64_BOUND
    # the table's new rows are the files' vectors, in the order given, at 49408 and up
    rows = torch.cat([v.reshape(-1, v.shape[-1]) for _, v in files.values()]).double()
    assert torch.equal(sd.text_encoder.embeddings.token_embedding.weight[49408:], rows)


def test_names_are_found_in_any_case_with_all_their_vectors(tiny_pipeline, tmp_path):
    """Upper case, a name inside a word, a name against punctuation: each reads as all of its ids (the prompt is
    lower-cased before the names are looked for). diffusers' maybe_convert_prompt replaces the lower-cased name in
    the original-case prompt, so a capitalised multi-vector name gets one vector there: minitome gives all of them."""
    pipe, folder = tiny_pipeline
    files = embedding_files(tmp_path, pipe.text_encoder.config.hidden_size)
    sd = weights.load(folder, embeddings=[(path, None) for path in files])
    water, oil, cat = [49408, 49409, 49410], [49411, 49412], [49413]
    encode = sd.tokenizer.encode
    assert encode("WaterColour") == encode("watercolour") == water
    assert encode("<cat-toy>oil-style,") == cat + oil + encode(",")
    assert encode("watercolour_2") == [49410] and encode("watercolour_1 watercolour") == [49409] + water
    torch.save(torch.randn(64), tmp_path / "bare.pt")  # a bare tensor, as diffusers also takes it: named by the flag
    sd = weights.load(folder, embeddings=[(tmp_path / "bare.pt", "<bare>")])
    assert sd.tokenizer.encode("a <bare>") == encode("a") + [49408] and sd.text_encoder.config.vocab_size == 49409
