"""Read a prompt of the bundled model's world back into the attributes it names.

The inverse of `world.caption`: which shape, which colour for the shape and which for the
background, size and position -- each only where the words name it. With the judge's
reading of an image, this scores whether an image shows what its prompt asked for.
"""

from __future__ import annotations

import re

from sdlab.tiny import world

_SIZES = {"small": "small", "little": "small", "tiny": "small", "large": "large",
          "big": "large"}
_POSITIONS = {"left": "left", "right": "right", "top": "top", "bottom": "bottom",
              "center": "center", "centered": "center", "middle": "center", "upper": "top",
              "lower": "bottom"}
_BACKGROUND_AFTER = {"background", "backdrop", "behind", "all"}  # "{bg} all around"
_BACKGROUND_BEFORE = {"on", "of"}  # "on {bg}", "in front of {bg}"


def parse_caption(text: str, swaps: tuple[str, ...] = ()) -> dict[str, str]:
    """The attributes `text` names, e.g. {"color": "red", "shape": "circle",
    "background": "white"} for "a red circle on a white background". `swaps` ("WORD=WORD",
    as `--swap` takes them) replace words first: the image should show the swapped word."""
    words = re.findall(r"[a-z]+", text.lower())
    for swap in swaps:
        old, _, new = swap.partition("=")
        words = [new.lower() if w == old.lower() else w for w in words]
    found: dict[str, str] = {}
    for word in words:
        if word in world.SHAPES:
            found.setdefault("shape", word)
        if word in _SIZES:
            found.setdefault("size", _SIZES[word])
        if word in _POSITIONS:
            found.setdefault("position", _POSITIONS[word])
    found.update(_colors(words))
    return found


def _colors(words: list[str]) -> dict[str, str]:
    """The shape's colour and the background's: a background colour is marked by the words
    around it; the other colour named is the shape's."""
    named = [(i, w) for i, w in enumerate(words) if w in world.COLORS]
    backgrounds = [w for i, w in named if _marks_background(words, i)]
    others = [w for i, w in named if not _marks_background(words, i)]
    found = {}
    if backgrounds:
        found["background"] = backgrounds[0]
    if others:
        found["color"] = others[0]
    return found


def _marks_background(words: list[str], i: int) -> bool:
    after = words[i + 1] if i + 1 < len(words) else ""
    before = words[i - 1] if i > 0 else ""
    return after in _BACKGROUND_AFTER or before in _BACKGROUND_BEFORE
