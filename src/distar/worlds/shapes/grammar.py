"""The prompt grammar of the shapes world: attributes, prompts that name some of them, parsing.

A scene has one to three shapes of one kind and colour on a flat background. A prompt always names
the shape kind and the count ("a", "two", "three") and may name the colour, the size, the position
(single shapes only) and the background; the renderer samples every attribute the prompt leaves out.

    [count] [size] [colour] shape[s] [position] [on a <background> background]

e.g. "a red circle", "two small blue squares", "a large triangle at the top on a black background".
"""

from __future__ import annotations

import dataclasses
import random
from typing import Mapping

SHAPES = ("circle", "square", "triangle", "diamond")
#: Shape colours, RGB in [0, 1].
COLOURS: Mapping[str, tuple[float, float, float]] = {
    "red": (0.86, 0.14, 0.14),
    "orange": (0.96, 0.55, 0.10),
    "yellow": (0.98, 0.87, 0.16),
    "green": (0.18, 0.68, 0.24),
    "cyan": (0.20, 0.80, 0.86),
    "blue": (0.14, 0.30, 0.86),
    "purple": (0.56, 0.24, 0.76),
    "pink": (0.97, 0.56, 0.73),
    "white": (0.97, 0.97, 0.97),
    "black": (0.06, 0.06, 0.06),
}
#: Background colours, RGB in [0, 1].
BACKGROUNDS: Mapping[str, tuple[float, float, float]] = {
    "white": (0.97, 0.97, 0.97),
    "black": (0.06, 0.06, 0.06),
    "gray": (0.50, 0.50, 0.50),
    "navy": (0.10, 0.13, 0.32),
}
#: Size name -> range of the shape's radius in pixels (of a 32-px image).
SIZES: Mapping[str, tuple[float, float]] = {"small": (2.8, 3.6), "medium": (4.4, 5.4), "large": (7.0, 8.8)}
#: Sizes allowed when a scene has more than one shape.
GROUP_SIZES = ("small", "medium")
COUNTS: Mapping[int, str] = {1: "a", 2: "two", 3: "three"}
#: Position name -> target centre (x, y) in pixels; the image spans [0, 32]², y grows downwards.
POSITIONS: Mapping[str, tuple[float, float]] = {
    "center": (16.0, 16.0),
    "left": (9.0, 16.0),
    "right": (23.0, 16.0),
    "top": (16.0, 9.0),
    "bottom": (16.0, 23.0),
}
POSITION_PHRASES: Mapping[str, str] = {
    "center": "in the center",
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
}
IMAGE_SIZE = 32

#: Probability that a sampled prompt names each optional attribute.
MENTION_PROBABILITY: Mapping[str, float] = {"colour": 0.7, "size": 0.5, "position": 0.5, "background": 0.5}
#: Sampling weights of the count.
COUNT_WEIGHTS: Mapping[int, float] = {1: 0.6, 2: 0.25, 3: 0.15}

#: Attributes a prompt may leave out (the renderer then samples them).
OPTIONAL_ATTRIBUTES = ("colour", "size", "position", "background")
#: Attribute name -> its possible values (position only for single shapes).
ATTRIBUTE_VALUES: Mapping[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "count": tuple(COUNTS.values()),
    "colour": tuple(COLOURS),
    "size": tuple(SIZES),
    "position": tuple(POSITIONS),
    "background": tuple(BACKGROUNDS),
}


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a prompt asks for; ``None`` = unspecified (sampled by the renderer)."""

    shape: str
    count: int = 1
    colour: str | None = None
    size: str | None = None
    position: str | None = None
    background: str | None = None

    def __post_init__(self) -> None:
        checks = {
            "shape": (self.shape, SHAPES),
            "count": (self.count, tuple(COUNTS)),
            "colour": (self.colour, tuple(COLOURS)),
            "size": (self.size, tuple(SIZES) if self.count == 1 else GROUP_SIZES),
            "position": (self.position, tuple(POSITIONS) if self.count == 1 else ()),
            "background": (self.background, tuple(BACKGROUNDS)),
        }
        for name, (value, allowed) in checks.items():
            if value is not None and value not in allowed:
                raise ValueError(f"{name}={value!r} is not allowed here (choices: {', '.join(map(str, allowed))})")
        if self.colour is not None and self.colour == self.background:
            raise ValueError(f"shape colour and background are both {self.colour!r}")

    def attributes(self) -> dict[str, str]:
        """The named attributes as strings, e.g. {"shape": "circle", "count": "a", "colour": "red"}."""
        out = {"shape": self.shape, "count": COUNTS[self.count]}
        for name in OPTIONAL_ATTRIBUTES:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def prompt(self) -> str:
        """The prompt text in the grammar above."""
        noun = self.shape + ("s" if self.count > 1 else "")
        words = [COUNTS[self.count], self.size, self.colour, noun]
        if self.position is not None:
            words.append(POSITION_PHRASES[self.position])
        if self.background is not None:
            words.append(f"on a {self.background} background")
        return " ".join(w for w in words if w is not None)


def parse_prompt(prompt: str) -> Spec:
    """The inverse of :meth:`Spec.prompt`; raises ``ValueError`` on text outside the grammar."""
    text = " ".join(prompt.lower().split())
    background = None
    for name in BACKGROUNDS:
        suffix = f" on a {name} background"
        if text.endswith(suffix):
            background, text = name, text[: -len(suffix)]
            break
    position = None
    for name, phrase in POSITION_PHRASES.items():
        if text.endswith(" " + phrase):
            position, text = name, text[: -len(phrase) - 1]
            break
    words = text.split()
    counts = {word: n for n, word in COUNTS.items()}
    if len(words) < 2 or words[0] not in counts:
        raise ValueError(f"prompt {prompt!r} is outside the shapes grammar")
    count = counts[words[0]]
    noun = words[-1][:-1] if count > 1 and words[-1].endswith("s") else words[-1]
    size = colour = None
    for word in words[1:-1]:
        if word in SIZES and size is None and colour is None:
            size = word
        elif word in COLOURS and colour is None:
            colour = word
        else:
            raise ValueError(f"prompt {prompt!r} is outside the shapes grammar")
    if noun not in SHAPES:
        raise ValueError(f"prompt {prompt!r} is outside the shapes grammar")
    return Spec(shape=noun, count=count, colour=colour, size=size, position=position, background=background)


def sample_spec(rng: random.Random) -> Spec:
    """A random prompt specification (distribution documented in the module constants)."""
    count = rng.choices(list(COUNT_WEIGHTS), weights=list(COUNT_WEIGHTS.values()))[0]
    mention = {name: rng.random() < p for name, p in MENTION_PROBABILITY.items()}
    background = rng.choice(list(BACKGROUNDS)) if mention["background"] else None
    colours = [c for c in COLOURS if c != background]
    return Spec(
        shape=rng.choice(SHAPES),
        count=count,
        colour=rng.choice(colours) if mention["colour"] else None,
        size=rng.choice(list(SIZES) if count == 1 else GROUP_SIZES) if mention["size"] else None,
        position=rng.choice(list(POSITIONS)) if mention["position"] and count == 1 else None,
        background=background,
    )


def sample_prompts(n: int, seed: int) -> list[str]:
    """``n`` prompts drawn by :func:`sample_spec` with a seeded RNG (duplicates possible)."""
    rng = random.Random(seed)
    return [sample_spec(rng).prompt() for _ in range(n)]


def vocabulary() -> list[str]:
    """Every word the grammar can produce, sorted."""
    words = {"on", "background", *COUNTS.values(), *SIZES, *COLOURS, *BACKGROUNDS, *SHAPES, *(s + "s" for s in SHAPES)}
    return sorted(words.union(*(phrase.split() for phrase in POSITION_PHRASES.values())))
