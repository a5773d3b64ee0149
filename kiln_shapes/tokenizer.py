"""The CLIP tokenizer of kiln-shapes: byte-level BPE whose merges make every caption word one token.

`CLIPTokenizer` needs a `vocab.json` and a `merges.txt`. We write the 256 byte stand-ins of
byte-level BPE (GPT-2 / CLIP convention) and their end-of-word forms, so any text still tokenizes,
then left-to-right merges that build each caption word into the single token `word</w>`.
"""

from __future__ import annotations

import json
from pathlib import Path

from kiln_shapes.data import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 16  # longest caption is 13 words + BOS + EOS


def vocabulary() -> list[str]:
    """The words of every caption, sorted."""
    words = {"a", "on", "background", *SHAPES, *COLOURS, *SIZES, *BACKGROUNDS}
    for position in POSITIONS:
        words.update(position.split())
    return sorted(words)


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes used by byte-level BPE, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def bpe_pieces(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding of one word: repeatedly merge the lowest-ranked adjacent pair."""
    pieces = [*word[:-1], word[-1] + "</w>"]
    while len(pieces) > 1:
        pairs = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(pieces, pieces[1:]))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        pieces[i:i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def word_merges(words: list[str]) -> list[tuple[str, str]]:
    """Merges, in rank order, under which every word of `words` becomes the single token `word</w>`.

    Each new merge joins the first two pieces the current merges leave; appended last, it cannot
    change how earlier words (already single tokens) are split.
    """
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        pieces = bpe_pieces(word, ranks)
        while len(pieces) > 1:
            ranks[(pieces[0], pieces[1])] = len(ranks)
            pieces = bpe_pieces(word, ranks)
    return sorted(ranks, key=ranks.get)


def vocab_and_merges(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Token -> id (BOS 0, EOS 1, bytes, end-of-word bytes, merged pieces) and the merge list."""
    symbols = byte_symbols()
    vocab: dict[str, int] = {}
    for token in [BOS, EOS, *symbols, *(s + "</w>" for s in symbols)]:
        vocab.setdefault(token, len(vocab))
    merges = word_merges(words)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    return vocab, merges


def write_tokenizer_files(folder: str | Path) -> Path:
    """Write `vocab.json` and `merges.txt` for the caption vocabulary into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = vocab_and_merges(vocabulary())
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def build_tokenizer(folder: str | Path):
    """A `CLIPTokenizer` (BOS 0, EOS = pad 1, max length 16) over files written into `folder`."""
    from transformers import CLIPTokenizer

    folder = write_tokenizer_files(folder)
    return CLIPTokenizer(
        vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"),
        model_max_length=MAX_LENGTH, pad_token=EOS, bos_token=BOS, eos_token=EOS, unk_token=EOS,
    )
