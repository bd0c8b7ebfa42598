"""The demo CLIP's tokenizer: a `CLIPTokenizer` whose BPE merges make every word of the caption grammar one token.

The vocabulary holds the printable ASCII characters (each also with CLIP's end-of-word suffix ``</w>``), so any text
tokenizes, plus the tokens of merges learned by byte-pair encoding on the grammar's words until each word is a
single token, plus CLIP's two special tokens. Learning runs here, deterministically (ties broken by the pair's
text), so the tokenizer is a pure function of the word list. In transformers 5 the tokenizer must be built from the
vocabulary dict and the merges list (`CLIPTokenizer(vocab_file=..., merges_file=...)` silently gives a 2-token
vocabulary).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

__all__ = ["MODEL_MAX_LENGTH", "build_tokenizer", "learn_merges"]

#: Token positions of the demo CLIP's text encoder (the longest caption takes 12 with its two special tokens).
MODEL_MAX_LENGTH = 24

_SUFFIX = "</w>"


def _symbols(word: str) -> list[str]:
    return [*word[:-1], word[-1] + _SUFFIX]


def learn_merges(words: Sequence[str]) -> list[tuple[str, str]]:
    """BPE merges, most frequent pair first, until every word of ``words`` is one symbol.

    Applying the merges in order to a word of ``words`` (what the BPE tokenizer does) retraces this learning, so each
    such word ends as one token.
    """
    pieces = {word: _symbols(word) for word in sorted(set(words))}
    merges: list[tuple[str, str]] = []
    while True:
        counts = Counter(pair for symbols in pieces.values() for pair in zip(symbols, symbols[1:]))
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        for word, symbols in pieces.items():
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            pieces[word] = merged


def build_tokenizer(words: Sequence[str] | None = None):
    """The demo `CLIPTokenizer` over ``words`` (default: `textures.grammar_words()`)."""
    from transformers import CLIPTokenizer

    if words is None:
        from .textures import grammar_words

        words = grammar_words()
    chars = [chr(i) for i in range(33, 127)]
    vocab: dict[str, int] = {}
    for token in chars + [c + _SUFFIX for c in chars]:
        vocab[token] = len(vocab)
    merges = learn_merges(words)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MODEL_MAX_LENGTH)
