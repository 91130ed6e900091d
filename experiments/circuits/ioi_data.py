"""An indirect-object-identification (IOI) dataset with aligned counterfactuals.

A prompt names two people, then repeats one of them (the subject S) as the giver; the
model should complete with the other (the indirect object IO):

    "When Mary and John went to the store, John gave a drink to"  ->  " Mary"

Templates, places and objects vary, the first clause names IO first (ABBA) or S first
(BABA), and names take one to four tokens, so prompts differ in length: they are padded
on the right, and each is read at its last real token.

Counterfactuals keep a prompt's token layout: the *ABC* version replaces the three name
mentions by three other distinct names with the same token counts (so S2 no longer
repeats anyone), and `n_means` more ABC versions per prompt give the mean activations that
mean ablation uses (the mean over the ABC distribution of that template and layout).
Every prompt is checked to tokenize as the concatenation of its pieces, so the name
positions are exact.
"""

import dataclasses
import re

import numpy as np

from converters.tokenizer import TextTokenizer

__all__ = ["NAMES", "TEMPLATES", "IoiData", "make_dataset"]

TEMPLATES = (
    "Then,{A} and{B} went to the {place}.{S} gave a {object} to",
    "When{A} and{B} got a {object} at the {place},{S} decided to give it to",
    "After{A} and{B} went to the {place},{S} gave a {object} to",
    "While{A} and{B} were working at the {place},{S} gave a {object} to",
    "Then,{A} and{B} had a long argument, and afterwards{S} said to",
    "When{A} and{B} arrived at the {place},{S} handed the {object} to",
    "Friends{A} and{B} found a {object} at the {place}.{S} gave it to",
    "After the lunch,{A} and{B} went to the {place}.{S} gave a {object} to",
    "Once{A} and{B} reached the {place},{S} passed the {object} to",
    "Later,{A} and{B} met at the {place}, and{S} brought a {object} to",
    "The {place} was quiet when{A} and{B} arrived.{S} offered a {object} to",
    "Yesterday{A} and{B} visited the {place}, where{S} showed a {object} to",
)
PLACES = (
    "store garden restaurant school hospital office station park house market "
    "library beach"
).split()
OBJECTS = (
    "drink book ring bone basketball computer necklace snack apple letter bag pencil"
).split()
NAMES = (
    "Mary John Alice Bob Tom Sarah James Emma David Anna Michael Laura Daniel Kate Paul "
    "Lisa Mark Rachel Peter Sophie Robert Emily Thomas Julia Andrew Grace Steven Claire "
    "Kevin Helen Brian Amy George Lucy Oliver Nina Victor Rose Henry Eva Anastasia "
    "Giuseppe Bartholomew Ximena Thaddeus Leopoldine Priyanka Sigourney Evangeline "
    "Maximilian Gwendolyn Ignatius Rosalind Cornelius Aurelio Berenice Casimir Dagny "
    "Eulalia Fitzgerald Griselda Hortense Isidore Jolanta Kasimir Ludovica Marisol "
    "Nikodem Ottoline Perpetua Quentin Radegund Severin Tatiana Ulrike Wenceslas Yevgeny "
    "Zephyrine"
).split()
_SLOT = re.compile(r"\{([ABS])\}")


@dataclasses.dataclass(frozen=True)
class IoiData:
    """Token arrays of an IOI dataset (right padded; `mask` 1 for real tokens).

    Attributes:
        tokens, abc: `[prompt, pos]` prompts and their ABC counterfactuals (one layout).
        means: `[prompt, n_means, pos]` more ABC versions of each prompt.
        mask: `[prompt, pos]`.
        io, s: `[prompt]` first tokens of the indirect object and of the subject.
        pos_io, pos_s1, pos_s2, end: `[prompt]` positions of the first token of IO's
            mention, S's first and second mentions, and of the last token.
        template, baba: `[prompt]` template index; True where S is named first.
        texts: the prompts' text.
    """

    tokens: np.ndarray
    abc: np.ndarray
    means: np.ndarray
    mask: np.ndarray
    io: np.ndarray
    s: np.ndarray
    pos_io: np.ndarray
    pos_s1: np.ndarray
    pos_s2: np.ndarray
    end: np.ndarray
    template: np.ndarray
    baba: np.ndarray
    texts: tuple[str, ...]


def _pieces(template: str, place: str, obj: str) -> tuple[list[str], list[str]]:
    """The text between name slots and the slot names, in order."""
    text = template.replace("{place}", place).replace("{object}", obj)
    parts = _SLOT.split(text)
    return parts[0::2], parts[1::2]


def _encode(tok: TextTokenizer, texts: list[str], names: list[str]):
    """Tokens of texts and ` name`s interleaved, and the start of each name; None when
    the whole text tokenizes differently (a merge across a piece boundary)."""
    ids, starts = list(tok.encode(texts[0])), []
    for name, text in zip(names, texts[1:], strict=True):
        starts.append(len(ids))
        ids += tok.encode(" " + name, prepend_bos=False)
        ids += tok.encode(text, prepend_bos=False) if text else []
    whole = "".join(
        t + (" " + n if n else "") for t, n in zip(texts, [*names, ""], strict=True)
    )
    if tok.encode(whole) != ids:
        return None
    return ids, starts


def make_dataset(
    tok: TextTokenizer, n: int, n_means: int, seed: int, max_tries: int = 50
) -> IoiData:
    """`n` IOI prompts with ABC counterfactuals (see the module docstring), seeded."""
    rng = np.random.default_rng(seed)
    length = {name: len(tok.encode(" " + name, prepend_bos=False)) for name in NAMES}
    first = {name: tok.encode(" " + name, prepend_bos=False)[0] for name in NAMES}
    by_len: dict[int, list[str]] = {}
    for name, k in length.items():
        by_len.setdefault(k, []).append(name)
    # an ABC version needs three names besides IO and S, at worst of one length
    usable = [name for name in NAMES if len(by_len[length[name]]) >= 5]
    if len(usable) < 2:
        raise ValueError("too few names of equal token length for the ABC versions")
    rows = []
    tries = 0
    while len(rows) < n:
        tries += 1
        if tries > max_tries * n:
            raise ValueError("could not build IOI prompts that tokenize piece by piece")
        t = int(rng.integers(len(TEMPLATES)))
        place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
        io, s = rng.choice(usable, 2, replace=False)
        if first[io] == first[s]:
            continue
        baba = bool(rng.integers(2))
        texts, slots = _pieces(TEMPLATES[t], place, obj)
        fill = {"A": s if baba else io, "B": io if baba else s, "S": s}
        clean = _encode(tok, texts, [fill[k] for k in slots])
        if clean is None:
            continue
        versions = []
        for _ in range(1 + n_means):
            names = []
            for k in slots:  # three distinct new names, lengths as in the prompt
                pool = [
                    m
                    for m in by_len[length[fill[k]]]
                    if m not in (io, s) and m not in names
                ]
                names.append(pool[int(rng.integers(len(pool)))])
            versions.append(_encode(tok, texts, names))
        if any(v is None or len(v[0]) != len(clean[0]) for v in versions):
            continue
        where = dict(zip(slots, clean[1], strict=True))
        rows.append(
            dict(
                ids=clean[0],
                abc=[v[0] for v in versions],
                io=first[io],
                s=first[s],
                pos_io=where["B"] if baba else where["A"],
                pos_s1=where["A"] if baba else where["B"],
                pos_s2=where["S"],
                template=t,
                baba=baba,
                text="".join(
                    p + (" " + fill[k] if k else "")
                    for p, k in zip(texts, [*slots, ""], strict=True)
                ),
            )
        )
    n_pos = max(len(r["ids"]) for r in rows)
    pad = tok.eos_id or 0

    def padded(ids):
        return ids + [pad] * (n_pos - len(ids))

    lengths = np.array([len(r["ids"]) for r in rows])
    return IoiData(
        tokens=np.array([padded(r["ids"]) for r in rows], np.int32),
        abc=np.array([padded(r["abc"][0]) for r in rows], np.int32),
        means=np.array([[padded(a) for a in r["abc"][1:]] for r in rows], np.int32),
        mask=(np.arange(n_pos)[None] < lengths[:, None]).astype(np.int32),
        io=np.array([r["io"] for r in rows], np.int32),
        s=np.array([r["s"] for r in rows], np.int32),
        pos_io=np.array([r["pos_io"] for r in rows]),
        pos_s1=np.array([r["pos_s1"] for r in rows]),
        pos_s2=np.array([r["pos_s2"] for r in rows]),
        end=lengths - 1,
        template=np.array([r["template"] for r in rows]),
        baba=np.array([r["baba"] for r in rows]),
        texts=tuple(r["text"] for r in rows),
    )
