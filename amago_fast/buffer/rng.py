"""The buffer's counter-based RNG (csrc/buffer/rng.h computes the same numbers).

Every random number the buffer draws is a pure function of ``(seed, call counter, window index,
draw index)``::

    x = mix64(seed + GOLDEN * (counter + 1))
    x = mix64(x + GOLDEN * (window + 1))
    x = mix64(x + GOLDEN * (draw + 1))

with ``mix64`` the SplitMix64 finaliser and all arithmetic mod 2**64. So windows do not depend on
how many threads gather them, or in which order. Integers in ``[0, n)`` are ``(x * n) >> 64``
(Lemire's multiply-shift), probabilities compare ``(x >> 11) * 2**-53 < p``.

Draw indices per window: 0 picks the trajectory, 1 the start row, 2 the relabel coin, 3 the
count ("some") or the row ("future"), 4.. the rows of the replacement goals (Floyd's sampling).
"""

from __future__ import annotations

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15

# Draw indices inside one window (see the module docstring).
DRAW_TRAJECTORY, DRAW_START, DRAW_COIN, DRAW_COUNT, DRAW_ROWS = 0, 1, 2, 3, 4


def mix64(z: int) -> int:
    """SplitMix64 finaliser on a 64-bit unsigned integer."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def draw(seed: int, counter: int, window: int, index: int) -> int:
    """The 64-bit random number for (seed, sample call counter, window, draw index)."""
    x = mix64((seed + GOLDEN * (counter + 1)) & MASK64)
    x = mix64((x + GOLDEN * (window + 1)) & MASK64)
    return mix64((x + GOLDEN * (index + 1)) & MASK64)


def uniform_int(x: int, n: int) -> int:
    """Map a 64-bit random number to [0, n) (multiply-shift)."""
    return (x * n) >> 64


def uniform_float(x: int) -> float:
    """Map a 64-bit random number to [0, 1) with 53 bits."""
    return (x >> 11) * (1.0 / 9007199254740992.0)
