# SPDX-License-Identifier: Apache-2.0
"""Tests for srum.models.bagel.tokenizer (offline, CPU)."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import transformers

from srum.models.bagel.tokenizer import (
    BAGEL_TOKENS,
    TINY_CORPUS,
    SpecialTokens,
    encode_text,
    load_tokenizer,
    train_byte_level_bpe,
    write_tiny_tokenizer,
)

SAMPLES = [
    "A red cube sits left of two blue spheres.",
    "Let me think... is it yes or no? 3 + 4 = 7!",
    "  leading spaces, trailing tabs\t\nand new\nlines  ",
    "Unseen words: xylophone, quixotic, zebra-crossing, Ünïcödé, 日本語, 🙂🚀",
    "",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_tok")
    size = write_tiny_tokenizer(out)
    return out, size


def test_tiny_tokenizer_files(tiny_dir):
    out, _ = tiny_dir
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    merges = (out / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0].startswith("#version")
    assert len(merges) > 1 and all(len(line.split(" ")) == 2 for line in merges[1:])
    # Byte-level alphabet (256) + <|endoftext|> + merges, like Qwen2's vocab.json.
    assert len(vocab) == 256 + 1 + len(merges) - 1
    assert "<|endoftext|>" in vocab


def test_round_trip_and_special_ids(tiny_dir):
    out, size = tiny_dir
    tok, special = load_tokenizer(out)
    assert isinstance(special, SpecialTokens)
    assert size == len(tok)
    ids = [special.bos, special.eos, special.vision_start, special.vision_end]
    assert len(set(ids)) == 4
    assert all(0 <= i < size for i in ids)
    for name, i in zip(BAGEL_TOKENS, ids):
        assert tok.convert_tokens_to_ids(name) == i
        assert tok.encode(name, add_special_tokens=False) == [i]
    assert special.bos == tok.convert_tokens_to_ids("<|im_start|>")
    assert special.eos == tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.unk_token == "<|endoftext|>" and tok.pad_token == "<|endoftext|>"

    for text in SAMPLES:
        plain = tok.encode(text, add_special_tokens=False)
        framed = encode_text(tok, special, text)
        assert framed == [special.bos, *plain, special.eos]
        assert tok.decode(plain) == text
        assert max(framed) < size and min(framed) >= 0
        # Ordinary text never produces the marker ids.
        assert not set(plain) & set(ids)

    # The BPE actually merged something: common words are shorter than their bytes.
    assert len(tok.encode(" the", add_special_tokens=False)) == 1


def test_vocab_size_argument(tmp_path):
    size = write_tiny_tokenizer(tmp_path, vocab_size=300)
    tok, _ = load_tokenizer(tmp_path)
    assert size == len(tok) == 300 + 4
    with pytest.raises(ValueError):
        write_tiny_tokenizer(tmp_path / "bad", vocab_size=100)


def test_custom_corpus(tmp_path):
    size = write_tiny_tokenizer(tmp_path, vocab_size=280, corpus=["banana bandana " * 20])
    tok, special = load_tokenizer(tmp_path)
    assert size == len(tok)
    text = "Completely different text, still fine: 123."
    assert tok.decode(encode_text(tok, special, text)[1:-1]) == text


def test_train_byte_level_bpe_vocab_and_merges():
    vocab, merges = train_byte_level_bpe(TINY_CORPUS, 300)
    assert len(vocab) == 300 and sorted(vocab.values()) == list(range(300))
    assert "<|endoftext|>" in vocab and "Ġ" in vocab and "a" in vocab          # byte symbols are all there
    assert len(merges) == 300 - 257 and all(a + b in vocab for a, b in merges)
    assert train_byte_level_bpe(TINY_CORPUS, 300) == (vocab, merges)            # deterministic


def test_empty_dir_raises_naming_dir(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_tokenizer(tmp_path)
    assert str(tmp_path) in str(err.value)
    assert "tokenizer.json" in str(err.value) and "vocab.json" in str(err.value)


def test_missing_dir_raises(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError) as err:
        load_tokenizer(missing)
    assert str(missing) in str(err.value)


def test_corrupt_tokenizer_raises_value_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{ not json", encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "Qwen2Tokenizer"}', encoding="utf-8")
    with pytest.raises(ValueError) as err:
        load_tokenizer(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_missing_tokens_are_added(tiny_dir, tmp_path):
    # A plain Qwen2 tokenizer built from the same BPE files, without Bagel's
    # markers (and with only one of them registered as special).
    out, _ = tiny_dir
    vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    merges = [
        tuple(line.split(" "))
        for line in (out / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
        if line
    ]
    base = transformers.Qwen2Tokenizer(
        vocab=vocab, merges=merges, additional_special_tokens=["<|im_start|>"]
    )
    base.save_pretrained(tmp_path)
    before = len(transformers.AutoTokenizer.from_pretrained(tmp_path))
    assert before == len(vocab) + 1

    tok, special = load_tokenizer(tmp_path)
    # Only the three missing tokens were added; <|im_start|> kept its id.
    assert len(tok) == before + 3
    assert special.bos == len(vocab)  # first added token after the BPE vocab
    ids = {special.bos, special.eos, special.vision_start, special.vision_end}
    assert len(ids) == 4 and max(ids) == len(tok) - 1
    for name in BAGEL_TOKENS:
        assert len(tok.encode(name, add_special_tokens=False)) == 1
    text = "still round-trips"
    assert tok.decode(encode_text(tok, special, text)[1:-1]) == text


def test_loads_from_bpe_files_without_tokenizer_json(tiny_dir, tmp_path):
    # vocab.json + merges.txt + tokenizer_config.json alone must suffice.
    out, size = tiny_dir
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    tok, special = load_tokenizer(tmp_path)
    ref, ref_special = load_tokenizer(out)
    assert len(tok) == size and special == ref_special
    for text in SAMPLES:
        assert encode_text(tok, special, text) == encode_text(ref, ref_special, text)
