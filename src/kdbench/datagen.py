"""Deterministic generator of the embedded instruction dataset (DESIGN.md, "The embedded default").

Hubs are out of reach here, so the default grid trains and evaluates on generated instruction data
with learnable structure, in the MiniLLM processed format (see `kdbench.jsonl`). Every example comes
from one of thirteen task *families* over a closed vocabulary (colors, animals, fruits, objects,
people, the numbers zero to twenty, and the template words: about 230 word types in all), each
family with three paraphrased instruction templates and a canonical multi-word answer, so that
ROUGE-L gives partial credit. List inputs hold 3-10 words drawn without repetition from colors,
animals, fruits and objects (each word belongs to exactly one of these categories).

Families with an input:
  ``copy``        repeat the list                      -> ``cat red pear``
  ``reverse``     the list backwards                   -> ``pear red cat``
  ``sort``        the list in alphabetical order       -> ``cat pear red``
  ``count``       how many words / animals / ...       -> ``There are three words in the list.``
  ``filter``      only the words of one category       -> ``cat dog``
  ``take``        the first or last k words            -> ``cat red``
  ``first_last``  the first and the last word          -> ``The first word is cat and the last word is pear.``
  ``lookup``      a ``person: value`` table, one query -> ``The favorite fruit of bob is pear.``
Families without an input:
  ``arithmetic``  a plus/minus/times b within 0-20, asked in words or digits and answered in the
                  same style                           -> ``Three plus four is seven.``
  ``count_range`` count up or down between two numbers -> ``three four five six``
  ``describe``    one or two animals/fruits            -> ``The cat is an animal with four legs that says meow.``
  ``fact``        color/taste of a fruit, legs/sound of an animal -> ``A banana is yellow.``
  ``name_items``  name k members of a category (open-ended: any valid choice is right)
                                                       -> ``Here are three fruits: fig, lime, pear.``

Splits and their mix (family weights are relative; "all" means the thirteen families at weight 1):
  ``train``, ``valid`` all families, lists of 3-10 words, one reference (the canonical answer).
  ``dolly``     the training mix: all families, lists of 3-10 words, one reference.
  ``selfinst``  another weighting: sort 3, reverse 3, filter 2, lookup 2, take 2, arithmetic 2,
                copy, count, first_last, count_range, fact 1, describe, name_items 0.5; one reference.
  ``vicuna``    no-input, longer or open-ended families only: describe 3, name_items 2,
                count_range 2, fact 1; at most 80 examples (as the real Vicuna set); one reference.
  ``sni``       input families with long answers only: copy, reverse, sort, first_last, lookup at 1;
                lists of 7-10 words; ``output`` is a list of 2-3 references.
  ``unni``      unusual phrasing: each instruction wrapped in a chatty prefix or suffix never seen in
                training, list inputs separated by ", " and tables written ``person = value``;
                count, filter, take, first_last, lookup 2, the other families 1; 2-3 references.
References for ``sni``/``unni`` are other valid phrasings of the same answer (digits instead of
number words, a sentence instead of a bare list, another valid choice for ``name_items``); the
canonical answer is always the first.

Determinism and overlap: each split draws from its own ``random.Random`` seeded with
``f"kdbench:{seed}:{split}"`` (never the global generator), so the same seed gives byte-identical
files. Examples are unique within a split on (instruction, input); valid excludes train, and every
evaluation set excludes train and valid. A family whose fresh examples run out (e.g. ``fact`` when
the training set is very large) is dropped from that split's mix after 50 colliding draws.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kdbench.errors import KDBenchError
from kdbench.jsonl import write_jsonl_atomic
from kdbench.spec import SETS as EVAL_SETS

DEFAULT_N_EVAL = 100
VICUNA_CAP = 80
MAX_TRIES = 50

# ---------------------------------------------------------------- vocabulary

COLORS = ("red", "blue", "green", "yellow", "orange", "purple", "pink", "brown", "black", "white", "gray", "gold")
ANIMALS: dict[str, tuple[int, str]] = {  # name -> (legs, sound)
    "cat": (4, "meow"), "dog": (4, "woof"), "cow": (4, "moo"), "horse": (4, "neigh"),
    "sheep": (4, "baa"), "pig": (4, "oink"), "duck": (2, "quack"), "goat": (4, "bleat"),
    "lion": (4, "roar"), "tiger": (4, "growl"), "bear": (4, "grunt"), "wolf": (4, "howl"),
    "fox": (4, "yelp"), "mouse": (4, "squeak"), "frog": (4, "croak"), "owl": (2, "hoot"),
    "bee": (6, "buzz"), "snake": (0, "hiss"), "chicken": (2, "cluck"), "crow": (2, "caw"),
}
FRUITS: dict[str, tuple[str, str]] = {  # name -> (color, taste)
    "apple": ("red", "sweet"), "banana": ("yellow", "sweet"), "cherry": ("red", "sweet"),
    "grape": ("purple", "sweet"), "lemon": ("yellow", "sour"), "lime": ("green", "sour"),
    "mango": ("orange", "sweet"), "melon": ("green", "sweet"), "peach": ("pink", "sweet"),
    "pear": ("green", "sweet"), "plum": ("purple", "sour"), "kiwi": ("brown", "sour"),
    "fig": ("purple", "sweet"), "coconut": ("brown", "sweet"), "strawberry": ("red", "sweet"),
}
OBJECTS = ("chair", "table", "lamp", "cup", "spoon", "book", "pen", "clock", "door", "window",
           "bed", "shoe", "hat", "box", "key")
PEOPLE = ("alice", "bob", "carol", "dave", "emma", "frank", "grace", "henry", "iris", "jack", "kate", "leo")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
                "eighteen", "nineteen", "twenty")
CATEGORIES: dict[str, tuple[str, ...]] = {  # plural noun -> members; the four are disjoint
    "colors": COLORS, "animals": tuple(ANIMALS), "fruits": tuple(FRUITS), "objects": OBJECTS,
}
SINGULAR = {"colors": "color", "animals": "animal", "fruits": "fruit", "objects": "object"}
LIST_WORDS: tuple[str, ...] = tuple(w for members in CATEGORIES.values() for w in members)

UNUSUAL_WRAPPERS = (
    "Quick task for you: {}", "Hey there! {}", "{} Thanks a lot!", "Here is a small puzzle. {}",
    "{} Take your time.", "I need some help. {}",
)


# ---------------------------------------------------------------- examples and split shapes

@dataclass(frozen=True)
class Example:
    """One instruction with its input and valid answers; ``references[0]`` is the canonical one."""

    instruction: str
    input: str
    references: tuple[str, ...]


@dataclass(frozen=True)
class Shape:
    """How one split draws examples: family mix, list lengths, surface style, reference count."""

    weights: Mapping[str, float]
    list_len: tuple[int, int] = (3, 10)
    unusual: bool = False
    multi_ref: bool = False
    cap: int | None = None

    @property
    def sep(self) -> str:
        """Separator between the words of a list input."""
        return ", " if self.unusual else " "


def _number(n: int, digits: bool = False) -> str:
    return str(n) if digits else NUMBER_WORDS[n]


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def _unique(refs: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(refs))


def _list_refs(words: Sequence[str], phrase: str) -> tuple[str, ...]:
    """Canonical space-joined list, comma-joined list, and a sentence ``"{phrase} a b c."``."""
    return (" ".join(words), ", ".join(words), f"{phrase} {' '.join(words)}.")


def _mixed_list(rng: random.Random, shape: Shape) -> list[str]:
    return rng.sample(LIST_WORDS, rng.randint(*shape.list_len))


def _list_with_category(rng: random.Random, shape: Shape, min_k: int) -> tuple[str, list[str], list[str]]:
    """A list holding `min_k`-4 members of one category among other words: (category, list, members)."""
    n = rng.randint(*shape.list_len)
    category = rng.choice(sorted(CATEGORIES))
    k = rng.randint(min_k, min(4, n - 1))
    members = rng.sample(CATEGORIES[category], k)
    others = [w for w in LIST_WORDS if w not in CATEGORIES[category]]
    words = members + rng.sample(others, n - k)
    rng.shuffle(words)
    return category, words, [w for w in words if w in members]


# ---------------------------------------------------------------- families with an input

def _copy(rng: random.Random, shape: Shape) -> Example:
    words = _mixed_list(rng, shape)
    instruction = rng.choice(("Repeat the following words.", "Copy the list of words exactly.",
                              "Write the same words again."))
    return Example(instruction, shape.sep.join(words), _list_refs(words, "The words are"))


def _reverse(rng: random.Random, shape: Shape) -> Example:
    words = _mixed_list(rng, shape)
    instruction = rng.choice(("Reverse the order of these words.", "Write the words in reverse order.",
                              "List these words backwards, last word first."))
    return Example(instruction, shape.sep.join(words), _list_refs(words[::-1], "Reversed, the words are"))


def _sort(rng: random.Random, shape: Shape) -> Example:
    words = _mixed_list(rng, shape)
    instruction = rng.choice(("Sort these words in alphabetical order.", "Put the words in alphabetical order.",
                              "Arrange the following words from A to Z."))
    return Example(instruction, shape.sep.join(words), _list_refs(sorted(words), "In alphabetical order:"))


def _count(rng: random.Random, shape: Shape) -> Example:
    if rng.random() < 0.5:
        words = _mixed_list(rng, shape)
        noun, count = "words", len(words)
    else:
        noun, words, members = _list_with_category(rng, shape, min_k=1)
        count = len(members)
    instruction = rng.choice(("How many {} are in the list?", "Count the {} in the list.",
                              "Tell me how many {} the list has.")).format(noun)
    shown = noun if count != 1 else {**SINGULAR, "words": "word"}[noun]
    verb = "are" if count != 1 else "is"
    refs = (f"There {verb} {_number(count)} {shown} in the list.", f"There {verb} {count} {shown} in the list.",
            _number(count))
    return Example(instruction, shape.sep.join(words), refs)


def _filter(rng: random.Random, shape: Shape) -> Example:
    category, words, members = _list_with_category(rng, shape, min_k=2)
    instruction = rng.choice(("Which of these words are {}?", "List only the {} from the input.",
                              "Keep the {} and drop the other words.")).format(category)
    return Example(instruction, shape.sep.join(words), _list_refs(members, f"The {category} are"))


def _take(rng: random.Random, shape: Shape) -> Example:
    words = _mixed_list(rng, shape)
    k = rng.randint(2, min(5, len(words) - 1))
    end = rng.choice(("first", "last"))
    instruction = rng.choice(("Give the {} {} words of the list.", "Write only the {} {} words.",
                              "Copy just the {} {} words.")).format(end, _number(k))
    taken = words[:k] if end == "first" else words[-k:]
    return Example(instruction, shape.sep.join(words), _list_refs(taken, f"The {end} {_number(k)} words are"))


def _first_last(rng: random.Random, shape: Shape) -> Example:
    words = _mixed_list(rng, shape)
    instruction = rng.choice(("What are the first and last words of the list?",
                              "Name the first word and the last word.", "Tell me which words come first and last."))
    first, last = words[0], words[-1]
    refs = (f"The first word is {first} and the last word is {last}.", f"first: {first}, last: {last}",
            f"{first} and {last}")
    return Example(instruction, shape.sep.join(words), refs)


def _lookup(rng: random.Random, shape: Shape) -> Example:
    category = rng.choice(("colors", "animals", "fruits"))
    noun = SINGULAR[category]
    people = rng.sample(PEOPLE, rng.randint(3, 6))
    values = rng.sample(CATEGORIES[category], len(people))
    person = rng.choice(people)
    value = values[people.index(person)]
    instruction = rng.choice(("What is the favorite {0} of {1}?", "Look up the favorite {0} of {1}.",
                              "Which {0} does {1} like best?")).format(noun, person)
    row = "{} = {}" if shape.unusual else "{}: {}"
    table = "\n".join(row.format(p, v) for p, v in zip(people, values))
    refs = (f"The favorite {noun} of {person} is {value}.", f"{_capitalize(person)} likes {value}.", value)
    return Example(instruction, table, refs)


# ---------------------------------------------------------------- families without an input

_OPERATIONS: dict[str, Callable[[int, int], int]] = {
    "plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b,
}


def _arithmetic(rng: random.Random, shape: Shape) -> Example:
    op = rng.choice(sorted(_OPERATIONS))
    while True:
        a, b = rng.randint(0, 20), rng.randint(0, 10)
        if 0 <= _OPERATIONS[op](a, b) <= 20 and (op != "plus" or a <= 10):
            break
    c = _OPERATIONS[op](a, b)
    digits = rng.random() < 0.5
    template = rng.choice(("What is {} {} {}?", "Calculate {} {} {}.", "Work out {} {} {} and write the result."))
    instruction = template.format(_number(a, digits), op, _number(b, digits))
    canonical = _capitalize(f"{_number(a, digits)} {op} {_number(b, digits)} is {_number(c, digits)}.")
    other = _capitalize(f"{_number(a, not digits)} {op} {_number(b, not digits)} is {_number(c, not digits)}.")
    return Example(instruction, "", (canonical, other, f"The answer is {_number(c, digits)}."))


def _count_range(rng: random.Random, shape: Shape) -> Example:
    low = rng.randint(0, 15)
    high = rng.randint(low + 2, min(20, low + 9))
    digits = rng.random() < 0.5
    lo, hi = _number(low, digits), _number(high, digits)
    if rng.random() < 0.5:
        numbers = range(low, high + 1)
        instruction = rng.choice((f"Count from {lo} to {hi}.", f"Write the numbers from {lo} to {hi}.",
                                  f"List every number from {lo} up to {hi}."))
    else:
        numbers = range(high, low - 1, -1)
        instruction = rng.choice((f"Count down from {hi} to {lo}.", f"Write the numbers from {hi} down to {lo}.",
                                  f"List every number from {hi} down to {lo}."))
    refs = (" ".join(_number(n, digits) for n in numbers), " ".join(_number(n, not digits) for n in numbers),
            ", ".join(_number(n, digits) for n in numbers))
    return Example(instruction, "", refs)


def _description(item: str, short: bool) -> str:
    if item in ANIMALS:
        legs, sound = ANIMALS[item]
        if short:
            return f"{_capitalize(_article(item))} has {_number(legs)} legs and says {sound}."
        return f"The {item} is an animal with {_number(legs)} legs that says {sound}."
    color, taste = FRUITS[item]
    if short:
        return f"{_capitalize(_article(item))} is {color} and tastes {taste}."
    return f"The {item} is {_article(color)} fruit that tastes {taste}."


def _describe(rng: random.Random, shape: Shape) -> Example:
    items = rng.sample(tuple(ANIMALS) + tuple(FRUITS), rng.randint(1, 2))
    subject = " and the ".join(items)
    templates = ("Tell me about the {}.", "Describe the {}.", "What do you know about the {}?")
    instruction = rng.choice(templates).format(subject)
    refs = (" ".join(_description(i, short=False) for i in items), " ".join(_description(i, short=True) for i in items))
    return Example(instruction, "", refs)


_FACT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "color": ("What color is {}?", "Tell me the color of {}.", "Which color does {} have?"),
    "taste": ("How does {} taste?", "What is the taste of {}?", "Is {} sweet or sour?"),
    "legs": ("How many legs does {} have?", "Tell me how many legs {} has.", "Count the legs of {}."),
    "sound": ("What sound does {} make?", "What does {} say?", "Which sound does {} make?"),
}


def _fact(rng: random.Random, shape: Shape) -> Example:
    kind = rng.choice(tuple(_FACT_TEMPLATES))
    if kind in ("color", "taste"):
        item = rng.choice(tuple(FRUITS))
        color, taste = FRUITS[item]
        answer, predicate = (color, f"is {color}") if kind == "color" else (taste, f"tastes {taste}")
    else:
        item = rng.choice(tuple(ANIMALS))
        legs, sound = ANIMALS[item]
        answer, predicate = (_number(legs), f"has {_number(legs)} legs") if kind == "legs" else (sound, f"says {sound}")
    instruction = rng.choice(_FACT_TEMPLATES[kind]).format(_article(item))
    refs = (f"{_capitalize(_article(item))} {predicate}.", f"The answer is {answer}.", answer)
    return Example(instruction, "", refs)


def _name_items(rng: random.Random, shape: Shape) -> Example:
    category = rng.choice(sorted(CATEGORIES))
    k = rng.randint(2, 5)
    pool = list(CATEGORIES[category])
    instruction = rng.choice(("Name {} {}.", "List {} {}.", "Give me {} examples of {}.")).format(_number(k), category)
    if rng.random() < 0.5:
        excluded = rng.choice(pool)
        pool.remove(excluded)
        instruction = instruction[:-1] + f" other than {excluded}."
    chosen, alternative = rng.sample(pool, k), rng.sample(pool, k)
    refs = (f"Here are {_number(k)} {category}: {', '.join(chosen)}.",
            f"Here are {_number(k)} {category}: {', '.join(alternative)}.", " ".join(chosen))
    return Example(instruction, "", refs)


FAMILIES: dict[str, Callable[[random.Random, Shape], Example]] = {
    "copy": _copy, "reverse": _reverse, "sort": _sort, "count": _count, "filter": _filter, "take": _take,
    "first_last": _first_last, "lookup": _lookup, "arithmetic": _arithmetic, "count_range": _count_range,
    "describe": _describe, "fact": _fact, "name_items": _name_items,
}
_ALL = {name: 1.0 for name in FAMILIES}

SHAPES: dict[str, Shape] = {
    "train": Shape(_ALL),
    "valid": Shape(_ALL),
    "dolly": Shape(_ALL),
    "selfinst": Shape({"sort": 3, "reverse": 3, "filter": 2, "lookup": 2, "take": 2, "arithmetic": 2, "copy": 1,
                       "count": 1, "first_last": 1, "count_range": 1, "fact": 1, "describe": 0.5,
                       "name_items": 0.5}),
    "vicuna": Shape({"describe": 3, "name_items": 2, "count_range": 2, "fact": 1}, cap=VICUNA_CAP),
    "sni": Shape({"copy": 1, "reverse": 1, "sort": 1, "first_last": 1, "lookup": 1}, list_len=(7, 10),
                 multi_ref=True),
    "unni": Shape({**_ALL, "count": 2, "filter": 2, "take": 2, "first_last": 2, "lookup": 2}, unusual=True,
                  multi_ref=True),
}


# ---------------------------------------------------------------- drawing and writing splits

def _draw(split: str, seed: int, n: int, seen: set[tuple[str, str]]) -> list[dict[str, object]]:
    """Draw `n` records for `split` whose (instruction, input) is not in `seen`; adds them to `seen`."""
    shape = SHAPES[split]
    rng = random.Random(f"kdbench:{seed}:{split}")
    weights = dict(shape.weights)
    records: list[dict[str, object]] = []
    while len(records) < n:
        if not weights:
            raise KDBenchError(
                f"datagen: only {len(records)} fresh examples could be drawn for '{split}' (asked for {n}); "
                "every task family ran out of new examples. Ask for fewer training or evaluation examples."
            )
        family = rng.choices(list(weights), weights=list(weights.values()))[0]
        for _ in range(MAX_TRIES):
            example = FAMILIES[family](rng, shape)
            if shape.unusual:
                example = Example(rng.choice(UNUSUAL_WRAPPERS).format(example.instruction), example.input,
                                  example.references)
            key = (example.instruction, example.input)
            if key not in seen:
                break
        else:
            del weights[family]
            continue
        seen.add(key)
        refs = _unique(example.references)
        output: str | list[str] = list(refs[:3]) if shape.multi_ref else refs[0]
        records.append({"instruction": example.instruction, "input": example.input, "output": output})
    return records


def _check_size(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise KDBenchError(f"datagen: the size of '{name}' must be a whole number ≥ 1, got {value!r}.")
    return value


def _eval_sizes(n_eval: int | Mapping[str, int]) -> dict[str, int]:
    """Per-set sizes from an int (every set) or a mapping (missing sets get DEFAULT_N_EVAL), Vicuna capped."""
    if isinstance(n_eval, Mapping):
        unknown = sorted(set(n_eval) - set(EVAL_SETS))
        if unknown:
            raise KDBenchError(f"datagen: unknown evaluation set(s) {unknown} in n_eval; use any of {list(EVAL_SETS)}.")
        sizes = {name: _check_size(name, n_eval.get(name, DEFAULT_N_EVAL)) for name in EVAL_SETS}
    else:
        sizes = {name: _check_size(name, n_eval) for name in EVAL_SETS}
    return {name: min(n, SHAPES[name].cap or n) for name, n in sizes.items()}


def generate(
    out_dir: str | Path,
    seed: int = 0,
    n_train: int = 2000,
    n_valid: int = 100,
    n_eval: int | Mapping[str, int] = DEFAULT_N_EVAL,
) -> dict[str, Path]:
    """Write train.jsonl, valid.jsonl and eval/{set}.jsonl under `out_dir`; return name -> path.

    `n_eval` is one size for every evaluation set or a mapping set -> size (missing sets get 100);
    Vicuna is capped at 80. The same arguments always produce byte-identical files.
    """
    out = Path(out_dir)
    sizes = {"train": _check_size("train", n_train), "valid": _check_size("valid", n_valid), **_eval_sizes(n_eval)}
    seen: set[tuple[str, str]] = set()
    splits = {"train": _draw("train", seed, sizes["train"], seen)}
    splits["valid"] = _draw("valid", seed, sizes["valid"], seen)
    for name in EVAL_SETS:  # each set excludes train and valid, not the other evaluation sets
        splits[name] = _draw(name, seed, sizes[name], set(seen))
    paths = {name: out / f"{name}.jsonl" for name in ("train", "valid")}
    paths.update({name: out / "eval" / f"{name}.jsonl" for name in EVAL_SETS})
    for name, records in splits.items():
        write_jsonl_atomic(paths[name], records)
    return paths


def main(argv: list[str] | None = None) -> int:
    """``kdbench data``: generate the embedded dataset; prints one line per written file."""
    parser = argparse.ArgumentParser(prog="kdbench data", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="generation seed (default 0)")
    parser.add_argument("--n-train", type=int, default=2000, help="training examples (default 2000)")
    parser.add_argument("--n-valid", type=int, default=100, help="validation examples (default 100)")
    parser.add_argument("--n-eval", type=int, default=DEFAULT_N_EVAL,
                        help=f"examples per evaluation set (default {DEFAULT_N_EVAL}; Vicuna at most {VICUNA_CAP})")
    args = parser.parse_args(argv)
    paths = generate(args.out, seed=args.seed, n_train=args.n_train, n_valid=args.n_valid, n_eval=args.n_eval)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0
