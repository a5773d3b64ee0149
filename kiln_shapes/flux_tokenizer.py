"""The T5 tokenizer of kiln-shapes-flux, made offline: a Unigram model over the caption vocabulary.

Every caption word is one `▁word` piece (scored far above any spelling of it from letters), so the
Viterbi split of a caption is its words; single letters (with and without the word-start mark `▁`)
keep any other text tokenizable. `</s>` is appended by a template, as T5 does, and ids 0-2 are T5's
`<pad>`, `</s>`, `<unk>`. Saved by `T5TokenizerFast` as `tokenizer.json`, which Kiln and Diffusers read.
"""

from __future__ import annotations

import string

from kiln_shapes.tokenizer import vocabulary

MAX_SEQUENCE_LENGTH = 32  # T5 tokens the model is trained (and must be run) with; the longest caption has 14


def unigram_pieces() -> list[tuple[str, float]]:
    """(piece, log-probability) in id order: specials, `▁`, the caption words, then letters."""
    letters = string.ascii_lowercase
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{word}", -1.0) for word in vocabulary()]
    pieces += [(f"▁{c}", -4.0) for c in letters if f"▁{c}" not in dict(pieces)]
    pieces += [(c, -4.5) for c in letters]
    return pieces


def build_t5_tokenizer(max_length: int = MAX_SEQUENCE_LENGTH):
    """A `T5TokenizerFast` over `unigram_pieces` with `model_max_length` = `max_length`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    backend = Tokenizer(models.Unigram(unigram_pieces(), unk_id=2))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                           special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                           model_max_length=max_length, extra_ids=0)
