"""Generate imgsvc/vision/data/imagenet_kinds.tsv: each ImageNet class's kinds, most specific first.

    python scripts/imagenet_kinds.py SYNSETS DATA_NOUN > imgsvc/vision/data/imagenet_kinds.tsv

The same throwaway inputs as ``scripts/imagenet_nouns.py`` (timm's ``imagenet_synsets.txt`` and
WordNet 3.0's ``data.noun`` from Debian's ``wordnet-base``). ImageNet-1k has no "flower",
"building" or "tree" class but many specific ones (daisy, yellow lady's slipper; church, palace,
monastery, boathouse ...): every class lists each synset of KINDS among its hypernyms (every
path), most specific first (daisy -> flower, plant; church -> building); EXTRA adds what
WordNet files elsewhere (a castle is a fortification there, a flowerpot a container). The scene
describer sums the classifier's probabilities per kind and says "a flower" when the kind is sure
but no class is (``imgsvc/vision/scene/kinds.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from imagenet_nouns import ancestors, print_header, read_inputs

# WordNet offset -> the kind noun said for it, most specific first. Broad kinds (plant, animal,
# vehicle) catch what the narrow ones (flower, dog, boat) do not.
KINDS = {
    "11669921": "flower",  # angiosperm cultivated for its blooms: daisy, yellow lady's slipper
    "13104059": "tree",
    "12992868": "mushroom",  # fungus: agaric, bolete, stinkhorn, earthstar, coral fungus
    "07705931": "fruit",  # edible fruit: orange, lemon, fig, strawberry, pomegranate, banana
    "07707451": "vegetable",  # broccoli, cauliflower, zucchini, cucumber, bell pepper
    "04202417": "shop",  # bakery, bookshop, toyshop ...: shop fronts
    "02898711": "bridge",
    "02913152": "building",  # church, palace, monastery, boathouse, library, cinema, barn
    "01503061": "bird",
    "02084071": "dog",
    "02120997": "cat",  # feline: domestic and big cats
    "02274259": "butterfly",
    "02159955": "insect",
    "01769347": "spider",  # arachnid
    "02512053": "fish",
    "01726692": "snake",
    "01661091": "reptile",
    "01627424": "amphibian",
    "02858304": "boat",
    "04194289": "ship",
    "02686568": "aircraft",
    "02958343": "car",
    "00017222": "plant",  # flora
    "00021265": "food",
    "04341686": "structure",  # fences, walls, arches, towers, dams
    "01861778": "mammal",
    "01905661": "invertebrate",
    "00015388": "animal",
    "04576211": "vehicle",  # wheeled vehicle: bicycles, carts, trains' cars
    "03100490": "vehicle",  # conveyance
    "03051540": "clothing",
    "03800933": "musical instrument",
    "04451818": "tool",  # hammer, screwdriver, hatchet, plane, can opener, letter opener, corkscrew
    "03405725": "furniture",  # chairs, tables, desks, wardrobes, cradles, benches
    "03528263": "home appliance",  # toaster, iron, microwave, washer, vacuum
    "03278248": "electronic equipment",  # CD player, modem, monitor, telephones, printer
    "03733925": "measuring instrument",  # clocks, rule, scale, barometer, stopwatch
}
#: Classes WordNet files away from the kind their photos show, by hand: ImageNet's "pot" is the
#: flowerpot (its photos are potted plants), rapeseed a field in flower, a castle, a prison, a
#: mill, a lighthouse, a dome or a tiled roof a building; shops are buildings too.
EXTRA = {
    "pot": ("plant",),
    "rapeseed": ("flower", "plant"),
    "hip": ("plant",),
    "buckeye": ("plant",),
    "acorn": ("plant",),
    "castle": ("building",),
    "prison": ("building",),
    "lumbermill": ("building",),
    "cliff dwelling": ("building",),
    "dome": ("building",),
    "beacon": ("building",),  # a lighthouse
    "bell cote": ("building",),
    "tile roof": ("building",),
    "thatch": ("building",),
    "water tower": ("structure",),
}
#: Kinds from most to least specific: a class's kinds are listed in this order.
ORDER = list(dict.fromkeys(KINDS.values()))


def kinds_of(offset: str, hypernyms: dict[str, list[str]]) -> set[str]:
    """Every kind among the synset's hypernyms (itself included)."""
    return {KINDS[s] for s in ancestors(offset, hypernyms) if s in KINDS}


def main(argv: list[str]) -> int:
    wnids, hypernyms, labels = read_inputs(argv, __doc__ or "")
    print_header("its kinds, most specific first", "imagenet_kinds.py")
    for wnid, label in zip(wnids, labels, strict=True):
        found = kinds_of(wnid.removeprefix("n"), hypernyms) | set(EXTRA.get(label, ()))
        if "shop" in found:
            found.add("building")
        print(f"{label}\t{','.join(k for k in ORDER if k in found)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
