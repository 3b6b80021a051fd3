"""Generate imgsvc/vision/data/imagenet_nouns.tsv: each ImageNet class folded to the noun a person would use.

    python scripts/imagenet_nouns.py SYNSETS DATA_NOUN > imgsvc/vision/data/imagenet_nouns.tsv

Throwaway inputs, needed only to regenerate the committed file (never at run time):
  SYNSETS    the 1,000 ImageNet wnids in class order: ``timm/data/_info/imagenet_synsets.txt`` inside
             timm's wheel (``pip download --no-deps timm -d /tmp/x`` and unzip that one file);
  DATA_NOUN  WordNet 3.0's noun database, ``/usr/share/wordnet/data.noun`` from Debian's ``wordnet-base``
             (``apt-get download wordnet-base && dpkg-deb -x wordnet-base_*.deb /tmp/wn``).

A wnid ``n02123045`` is the byte offset of its synset in ``data.noun``. Each class walks up its
hypernyms (breadth first, every path) to the nearest synset in FOLDS and takes that noun
(tabby, tiger cat, Egyptian cat -> cat; sorrel -> horse; Mexican hairless -> dog); a class under
none keeps its own name. GROUPS gives each class a coarse kind (animal, vehicle, ...) from the
nearest of a few ancestors, so the scene describer only lets the classifier overrule a detector
within one kind (a "dog" box may become a cat, never a cup).
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Iterator
from pathlib import Path

# WordNet offset -> the noun the sentence uses. COCO's names where COCO has the class, so a
# detector's label and the classifier's folded noun can be compared directly.
FOLDS = {
    "00007846": "person",  # scuba diver, groom, ballplayer
    "02121808": "cat",  # domestic_cat: tabby, tiger cat, Persian, Siamese, Egyptian cat
    "02084071": "dog",  # every breed
    "02374451": "horse",
    "02391049": "zebra",
    "02131653": "bear",
    "02503517": "elephant",
    "02402425": "cow",  # cattle: ox
    "02411705": "sheep",  # ram
    "01503061": "bird",
    "01482330": "shark",
    "02512053": "fish",
    "01726692": "snake",
    "01674464": "lizard",
    "01662784": "turtle",
    "01639765": "frog",
    "01772222": "spider",
    "02274259": "butterfly",
    "02164464": "beetle",
    "02159955": "insect",
    "02484322": "monkey",
    "02958343": "car",  # car, auto: cab, jeep, sports car, ambulance, limousine
    "02959942": "train",  # railway car: passenger car, freight car
    "03684823": "train",  # locomotive
    "04520170": "van",  # minivan, police van, moving van
    "04490091": "truck",
    "02924116": "bus",
    "03790512": "motorcycle",  # moped (via minibike)
    "03791053": "motorcycle",  # motor scooter: COCO's "motorcycle" covers it
    "02834778": "bicycle",
    "02691156": "airplane",
    "02858304": "boat",
    "04194289": "ship",
    "03001627": "chair",
    "04256520": "couch",
    "02818832": "bed",
    "04379243": "table",
    "02828884": "bench",
    "03046257": "clock",
    "02876657": "bottle",
    "02778669": "ball",  # game equipment: soccer ball, golf ball, ...
    "03815615": "tie",
    "03797390": "mug",
    "07929519": "coffee",  # espresso
}
# Single classes whose WordNet sense reads wrong in a photo description: wnid -> (noun, kind).
CLASS_NOUNS = {
    "n07930864": ("cup", "object"),  # ImageNet's "cup" is WordNet's punch cup (a drink); its photos show cups
    "n04404412": ("television", "object"),  # a "telecommunication system" in WordNet
    "n03782006": ("screen", "object"),  # monitor
    "n04152593": ("screen", "object"),
}
# Offset -> kind, nearest ancestor wins; a class under none is an "object".
GROUPS = {
    "00007846": "person",
    "00015388": "animal",
    "03100490": "vehicle",  # conveyance, transport
    "07881800": "drink",  # beverage
    "00021265": "food",
    "03051540": "clothing",
    "09287968": "place",  # geological formation: alp, seashore, valley
    "04341686": "structure",  # buildings, bridges, fences
}
WORDNET_NOTICE = """\
# Derived from WordNet 3.0 (the hypernym tree), under the WordNet 3.0 licence:
#   WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved.
#   THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON UNIVERSITY MAKES NO
#   REPRESENTATIONS OR WARRANTIES, EXPRESS OR IMPLIED. BY WAY OF EXAMPLE, BUT NOT LIMITATION,
#   PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES OF MERCHANTABILITY OR FITNESS
#   FOR ANY PARTICULAR PURPOSE OR THAT THE USE OF THE LICENSED SOFTWARE, DATABASE OR
#   DOCUMENTATION WILL NOT INFRINGE ANY THIRD PARTY PATENTS, COPYRIGHTS, TRADEMARKS OR OTHER RIGHTS.
#   The name of Princeton University or Princeton may not be used in advertising or publicity
#   pertaining to distribution of the software and/or database.
"""


def read_hypernyms(data_noun: Path) -> dict[str, list[str]]:
    """offset -> hypernym offsets (class and instance), from WordNet's ``data.noun`` lines."""
    hypernyms: dict[str, list[str]] = {}
    for line in data_noun.read_text("latin-1").splitlines():
        if line.startswith(" "):
            continue  # the licence header
        fields = line.split(" | ")[0].split()
        word_count = int(fields[3], 16)
        i = 4 + 2 * word_count
        pointers = []
        for _ in range(int(fields[i])):
            symbol, offset, pos = fields[i + 1 : i + 4]
            if symbol in {"@", "@i"} and pos == "n":
                pointers.append(offset)
            i += 4
        hypernyms[fields[0]] = pointers
    return hypernyms


def ancestors(offset: str, hypernyms: dict[str, list[str]]) -> Iterator[str]:
    """The synset itself, then every hypernym above it (every path), each once, nearest first."""
    seen, queue = {offset}, deque([offset])
    while queue:
        current = queue.popleft()
        yield current
        for parent in hypernyms.get(current, []):
            if parent not in seen:
                seen.add(parent)
                queue.append(parent)


def nearest(offset: str, hypernyms: dict[str, list[str]], targets: dict[str, str]) -> str | None:
    """The value of the closest synset (itself included) in ``targets``, breadth first."""
    return next((targets[s] for s in ancestors(offset, hypernyms) if s in targets), None)


def read_inputs(argv: list[str], usage: str) -> tuple[list[str], dict[str, list[str]], list[str]]:
    """The generators' two inputs, SYNSETS and DATA_NOUN, and the classifier's labels in its order:
    ImageNet wnids, WordNet's hypernyms, labels. Exits with ``usage`` (2) or a wrong count (1)."""
    if len(argv) != 2:
        print(usage, file=sys.stderr)
        raise SystemExit(2)
    wnids = Path(argv[0]).read_text().split()
    if len(wnids) != 1000:
        print(f"expected 1000 wnids, got {len(wnids)}", file=sys.stderr)
        raise SystemExit(1)
    labels = (Path(__file__).parent.parent / "imgsvc/vision/data/imagenet_classes.txt").read_text()
    return wnids, read_hypernyms(Path(argv[1])), labels.splitlines()


def print_header(columns: str, script: str) -> None:
    """The lines every table generated from WordNet starts with: its columns, its maker, the licence."""
    print(f"# ImageNet class (in the classifier's order) <TAB> {columns}.")
    print(f"# Generated by scripts/{script} (its docstring says from what); do not edit by hand.")
    print(WORDNET_NOTICE, end="")


def main(argv: list[str]) -> int:
    wnids, hypernyms, labels = read_inputs(argv, __doc__ or "")
    print_header("common noun <TAB> kind", "imagenet_nouns.py")
    for wnid, label in zip(wnids, labels, strict=True):
        offset = wnid.removeprefix("n")
        noun, group = CLASS_NOUNS.get(wnid) or (
            nearest(offset, hypernyms, FOLDS) or label,
            nearest(offset, hypernyms, GROUPS) or "object",
        )
        print(f"{label}\t{noun}\t{group}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
