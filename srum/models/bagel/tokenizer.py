# SPDX-License-Identifier: Apache-2.0
"""Text tokenizer for Bagel-7B-MoT.

Bagel uses the Qwen2 byte-level BPE tokenizer shipped in its checkpoint
directory (``vocab.json``, ``merges.txt``, ``tokenizer.json``,
``tokenizer_config.json``) and relies on four chat/vision marker tokens:

* ``<|im_start|>``     - begins every text segment (used as BOS)
* ``<|im_end|>``       - ends every text segment (used as EOS)
* ``<|vision_start|>`` - precedes the tokens of an image
* ``<|vision_end|>``   - follows the tokens of an image

A text segment is encoded as ``[bos] + ids(text) + [eos]`` where ``ids`` are
produced without any special tokens the tokenizer itself would add.

:func:`write_tiny_tokenizer` builds a small but genuine Qwen2-style tokenizer
offline so that tests and toy models exercise exactly the same loading path
as the published checkpoint.
"""

from __future__ import annotations

import inspect
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import transformers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase

__all__ = [
    "BOS_TOKEN",
    "EOS_TOKEN",
    "VISION_START_TOKEN",
    "VISION_END_TOKEN",
    "BAGEL_TOKENS",
    "SpecialTokens",
    "load_tokenizer",
    "encode_text",
    "write_tiny_tokenizer",
    "train_byte_level_bpe",
    "TINY_CORPUS",
]

BOS_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
VISION_START_TOKEN = "<|vision_start|>"
VISION_END_TOKEN = "<|vision_end|>"
BAGEL_TOKENS: tuple[str, ...] = (BOS_TOKEN, EOS_TOKEN, VISION_START_TOKEN, VISION_END_TOKEN)

# Qwen2's own unknown/padding token; it is the only special token that is part
# of the trained BPE vocabulary rather than an added token.
_ENDOFTEXT = "<|endoftext|>"

# Files a usable checkpoint tokenizer directory provides; listed in errors.
_EXPECTED_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")

# Qwen2's pre-tokenisation pattern (contractions, letter runs, single digits,
# punctuation runs, newlines, whitespace). The tiny tokenizer is trained with
# the same split so that its merges are meaningful under Qwen2Tokenizer.
_QWEN2_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of Bagel's four marker tokens in a particular tokenizer."""

    bos: int
    eos: int
    vision_start: int
    vision_end: int


def _describe_expected(model_dir: Path) -> str:
    return (
        f"expected a Qwen2 tokenizer in {str(model_dir)!r}: tokenizer.json and/or "
        f"vocab.json + merges.txt, plus tokenizer_config.json (files: {', '.join(_EXPECTED_FILES)})"
    )


def load_tokenizer(model_dir: str | os.PathLike) -> tuple[PreTrainedTokenizerBase, SpecialTokens]:
    """Load the checkpoint's tokenizer and make sure Bagel's four tokens exist.

    Tokens already registered as special tokens are left alone; only the
    missing ones are added (as regular added tokens, mirroring the reference
    model, which sizes its embedding with ``len(tokenizer)`` afterwards).

    Args:
        model_dir: directory holding the tokenizer files.

    Returns:
        ``(tokenizer, special)`` where ``special`` holds the four token ids.

    Raises:
        FileNotFoundError: the directory or its tokenizer files are missing.
        ValueError: the files exist but cannot be loaded, or a marker token
            does not resolve to a single distinct id.
    """
    path = Path(model_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory does not exist; {_describe_expected(path)}")
    has_serialized = (path / "tokenizer.json").is_file()
    has_bpe_files = (path / "vocab.json").is_file() and (path / "merges.txt").is_file()
    if not (has_serialized or has_bpe_files):
        raise FileNotFoundError(f"no tokenizer files found; {_describe_expected(path)}")

    try:
        # local_files_only: a local checkpoint must never fall back to the hub.
        # trust_remote_code stays off: the Qwen2 tokenizer is built into transformers.
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # transformers/tokenizers raise many unrelated types here
        raise ValueError(f"could not load the tokenizer ({exc}); {_describe_expected(path)}") from exc

    already_special = set(tokenizer.all_special_tokens)
    missing = [tok for tok in BAGEL_TOKENS if tok not in already_special]
    if missing:
        tokenizer.add_tokens(missing)

    ids = []
    for tok in BAGEL_TOKENS:
        tok_id = tokenizer.convert_tokens_to_ids(tok)
        # The literal token text must also encode to exactly that id, otherwise
        # prompts containing it would be split into several BPE pieces.
        encoded = tokenizer.encode(tok, add_special_tokens=False)
        if not isinstance(tok_id, int) or encoded != [tok_id]:
            raise ValueError(f"token {tok!r} does not map to a single id in the tokenizer at {str(path)!r}")
        ids.append(tok_id)
    if len(set(ids)) != len(ids):
        raise ValueError(f"Bagel marker tokens share ids {ids} in the tokenizer at {str(path)!r}")
    return tokenizer, SpecialTokens(*ids)


def encode_text(tokenizer: PreTrainedTokenizerBase, special: SpecialTokens, text: str) -> list[int]:
    """Encode one text segment as ``[bos] + ids(text) + [eos]``.

    Returns:
        list of ``len(ids(text)) + 2`` token ids.
    """
    # add_special_tokens=False: the framing is Bagel's, not the tokenizer's.
    return [special.bos, *tokenizer.encode(text, add_special_tokens=False), special.eos]


# English sentences in the domain of the prompts and judge questions (objects, colours,
# counts, relations, yes/no answers) plus digits, punctuation and non-ASCII text: the
# default training text of the tiny tokenizers (Bagel's here, the tiny Qwen2.5-VL judge's).
TINY_CORPUS: tuple[str, ...] = (
    "A red cube sits on top of a blue sphere.",
    "The green cylinder is to the left of the yellow cone.",
    "Two small purple balls rest beside a large orange box.",
    "There are three cats and four dogs in the image.",
    "Is the metal cube shinier than the rubber ball? Yes.",
    "Is there a triangle below the square? No.",
    "Let me think about the image step by step.",
    "I think the answer is yes, because the circle is inside the square.",
    "Count the objects: one, two, three, four, five, six, seven, eight, nine, ten.",
    "Digits: 0 1 2 3 4 5 6 7 8 9 10 11 12 42 100 256 1024 2025.",
    "A wooden table stands in front of a white wall.",
    "The glass bottle is behind the ceramic mug, near the window.",
    "A fluffy brown dog lies under a soft striped blanket.",
    "Five black birds sit on a thin wire above the street.",
    "The smooth marble floor reflects the bright light.",
    "A rough stone wall is covered with green moss.",
    "Draw a pink heart to the right of a gray star.",
    "The image shows a cozy room with a red sofa and a round rug.",
    "Generate an image of a silver car parked between two trees.",
    "Please describe the picture in detail; mention colours, shapes and textures.",
    "The tall tower is far away, while the small house is close.",
    "Six transparent marbles are scattered across the dark carpet.",
    "A hexagon, a pentagon, an oval and a rectangle are drawn in chalk.",
    "Which object is larger: the sphere or the cube?",
    "The answer is no; there are only two apples, not three.",
    "On the left there is a cup of coffee; on the right, a plate of cookies.",
    "A golden retriever runs across a sunny green field.",
    "An astronaut rides a horse on the surface of the moon.",
    "The velvet curtain is deep crimson and very soft to touch.",
    "Seven colourful kites fly high above the sandy beach.",
    "The matte plastic toy is next to the glossy metal robot.",
    "A blue vase with three white flowers stands on the shelf.",
    "Look closely: is the cat sitting on the chair or under it?",
    "The photo was taken at night, so the colors look darker.",
    "A checkerboard pattern of black and white squares covers the floor.",
    "Hmm... I need to think again (carefully!) before answering.",
    "Edit the image: replace the red ball with a green one.",
    "The sky is light blue, with a few fluffy white clouds.",
    "Stack the eight cubes into two towers of equal height.",
    "Quote: \"yes\" or 'no'? 50% of 8 is 4 & 3 + 4 = 7 #tag @home.",
    "Tabs\tand newlines\nshould survive, as should ünïcödé, 日本語 and emoji 🙂.",
    "Finally, the small yellow triangle is above the big purple circle.",
)


def train_byte_level_bpe(corpus: Iterable[str], vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a Qwen2-style byte-level BPE (Qwen2's pre-tokenizer split, NFC) on ``corpus``.

    Returns ``(vocab, merges)``: ``vocab`` maps token -> id and holds the 256 byte
    symbols, ``<|endoftext|>`` and one token per merge, at most ``vocab_size`` entries (a
    small corpus may stop short); ``merges`` lists the merged pairs in training order.
    Both are what ``vocab.json`` / ``merges.txt`` hold, or what a transformers
    tokenizer class takes in memory."""
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        # Seeding all 256 byte symbols guarantees that every string can be
        # encoded (and decoded back), whatever the corpus contained.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[_ENDOFTEXT],
        show_progress=False,
    )
    bpe.train_from_iterator(list(corpus), trainer=trainer)
    # Read the trained model back through its JSON form: this is the stable,
    # documented way to get at the ordered merge list.
    model_state = json.loads(bpe.to_str())["model"]
    vocab = dict(model_state["vocab"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model_state["merges"]]
    return vocab, merges


def _write_bpe_files(out_dir: Path, vocab: dict[str, int], merges: list[tuple[str, str]]) -> None:
    """Write GPT-2/Qwen2 style ``vocab.json`` and ``merges.txt``."""
    with open(out_dir / "vocab.json", "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(out_dir / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")


def write_tiny_tokenizer(
    out_dir: str | os.PathLike,
    vocab_size: int = 512,
    corpus: Iterable[str] | None = None,
) -> int:
    """Train and save a small Qwen2-compatible byte-level BPE tokenizer.

    The result loads with :func:`load_tokenizer` exactly like the published
    checkpoint: ``<|endoftext|>`` is unk/pad and Bagel's four marker tokens
    are registered as additional special tokens. Any text round-trips
    (``decode(encode(s)) == s`` for NFC-normalised ``s``).

    Args:
        out_dir: directory to create/fill with ``vocab.json``, ``merges.txt``,
            ``tokenizer.json``, ``tokenizer_config.json`` (and friends).
        vocab_size: target size of the trained BPE vocabulary (256 byte
            symbols + ``<|endoftext|>`` + merges); the four marker tokens
            come on top. A small corpus may stop short of the target.
        corpus: training sentences; defaults to a built-in English corpus.

    Returns:
        ``len(tokenizer)``: the number of rows the text embedding needs
        (greater than every id, special tokens included).
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 257:
        raise ValueError(f"vocab_size must be an int >= 257 (256 bytes + <|endoftext|>), got {vocab_size!r}")
    sentences = list(TINY_CORPUS if corpus is None else corpus)
    if not sentences or not all(isinstance(s, str) for s in sentences):
        raise ValueError("corpus must be a non-empty iterable of strings")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = train_byte_level_bpe(sentences, vocab_size)

    special_kwargs = dict(
        unk_token=_ENDOFTEXT,
        pad_token=_ENDOFTEXT,
        eos_token=_ENDOFTEXT,
        bos_token=None,
        additional_special_tokens=list(BAGEL_TOKENS),
    )
    # transformers 5 merged the slow/fast classes into one ``Qwen2Tokenizer``
    # that takes the vocabulary in memory (``Qwen2TokenizerFast`` is only an
    # alias, and file-path arguments are silently ignored there, yielding an
    # empty tokenizer). transformers 4 only accepts file paths.
    qwen2_cls = transformers.Qwen2Tokenizer
    if "vocab" in inspect.signature(qwen2_cls.__init__).parameters:
        tokenizer = qwen2_cls(vocab=vocab, merges=merges, **special_kwargs)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            _write_bpe_files(Path(tmp), vocab, merges)
            tokenizer = transformers.Qwen2TokenizerFast(
                vocab_file=os.path.join(tmp, "vocab.json"),
                merges_file=os.path.join(tmp, "merges.txt"),
                **special_kwargs,
            )

    # Guard against a silently empty or lossy tokenizer before saving it.
    probe = "Is the red cube left of 3 blue spheres? Yes!\n"
    if tokenizer.decode(tokenizer.encode(probe, add_special_tokens=False)) != probe or len(tokenizer) < len(vocab):
        raise RuntimeError("the tiny tokenizer does not round-trip text; transformers API mismatch")

    tokenizer.save_pretrained(str(out))
    # save_pretrained only writes tokenizer.json in transformers 5; the
    # published checkpoint also carries the plain BPE files, which some
    # loaders (and the reference code) read directly.
    _write_bpe_files(out, vocab, merges)
    return len(tokenizer)
