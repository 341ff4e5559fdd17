"""``numpy.random.default_rng([seed, epoch, key]).random(count)`` for a whole batch of keys at once.

The training augmentation draws each scan's parameters from a generator seeded by (seed, epoch, scan id), so
that a resumed run, a re-sharded run and the per-image numpy path all give a scan the same augmentation.
Building one ``Generator`` per scan is Python work (most of it in ``SeedSequence``) held under the GIL, per
scan, on the thread that feeds the GPU (BENCHMARKS.md, GPU). :func:`uniforms` computes the same doubles, bit
for bit, with array arithmetic over the batch:

- ``SeedSequence`` (numpy's documented entropy pool: each entropy word hashed in with a multiplier that
  advances per use, the four pool words cross-mixed, any further words mixed into each pool word, then
  ``generate_state`` hashing the pool out with a second multiplier sequence);
- ``PCG64`` seeded from four of its 64-bit words (the 128-bit state and increment, the LCG stepped
  twice as ``pcg64_set_seed`` does), each draw one LCG step and the XSL-RR output;
- ``Generator.random``: the top 53 bits of each 64-bit output times 2**-53.

128-bit products are split into 32-bit halves of 64-bit words. tests/unit/test_training_cache.py compares
the result with numpy's own generators over keys of every size.
"""
from __future__ import annotations

import numpy as np

__all__ = ["uniforms"]

_M32 = np.uint64(0xFFFFFFFF)
# SeedSequence's hash constants (pool of 4 uint32 words).
_POOL = 4
_INIT_A, _MULT_A = np.uint32(0x43B0D7E5), np.uint32(0x931E8875)
_INIT_B, _MULT_B = np.uint32(0x8B51F9DD), np.uint32(0x58F38DED)
_MIX_L, _MIX_R = np.uint32(0xCA01F9DD), np.uint32(0x4973F715)
_XSHIFT = np.uint32(16)
# PCG64's 128-bit LCG multiplier, high and low words.
_PCG_MULT = (np.uint64(0x2360ED051FC65DA4), np.uint64(0x4385DF649FCCF645))


def _words(value: int) -> list[int]:
    """A non-negative int as numpy's SeedSequence takes it: 32-bit words, least significant first."""
    if value < 0:
        raise ValueError(f"seed entropy must be non-negative, got {value}")
    words = [value & 0xFFFFFFFF]
    value >>= 32
    while value:
        words.append(value & 0xFFFFFFFF)
        value >>= 32
    return words


class _Hash:
    """SeedSequence's hashmix with its advancing multiplier (one per call, the same for every key)."""

    def __init__(self, init: np.uint32, mult: np.uint32):
        self.const, self.mult = np.array(init, dtype=np.uint32), mult

    def __call__(self, value: np.ndarray) -> np.ndarray:
        value = value ^ self.const
        self.const = self.const * self.mult
        value = value * self.const
        return value ^ (value >> _XSHIFT)


def _mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    result = _MIX_L * x - _MIX_R * y
    return result ^ (result >> _XSHIFT)


def _pool(entropy: list[np.ndarray]) -> list[np.ndarray]:
    """SeedSequence's mixed pool for entropy words given as uint32 arrays (one value per key)."""
    hashmix = _Hash(_INIT_A, _MULT_A)
    zeros = np.zeros_like(entropy[0])
    pool = [hashmix(entropy[i] if i < len(entropy) else zeros) for i in range(_POOL)]
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                pool[dst] = _mix(pool[dst], hashmix(pool[src]))
    for src in range(_POOL, len(entropy)):
        for dst in range(_POOL):
            pool[dst] = _mix(pool[dst], hashmix(entropy[src]))
    return pool


def _state(pool: list[np.ndarray], words: int) -> list[np.ndarray]:
    """``generate_state(words // 2, np.uint64)``: uint64 arrays."""
    hashmix = _Hash(_INIT_B, _MULT_B)
    out32 = [hashmix(pool[i % _POOL]) for i in range(words)]
    return [out32[2 * i].astype(np.uint64) | (out32[2 * i + 1].astype(np.uint64) << np.uint64(32))
            for i in range(words // 2)]


def _mulhi(x: np.ndarray, y) -> np.ndarray:
    """The high 64 bits of the 128-bit products x * y (uint64)."""
    x0, x1 = x & _M32, x >> np.uint64(32)
    y0, y1 = y & _M32, y >> np.uint64(32)
    p00, p01, p10 = x0 * y0, x0 * y1, x1 * y0
    middle = (p00 >> np.uint64(32)) + (p01 & _M32) + (p10 & _M32)
    return x1 * y1 + (p01 >> np.uint64(32)) + (p10 >> np.uint64(32)) + (middle >> np.uint64(32))


def _step(hi, lo, inc_hi, inc_lo):
    """state * multiplier + increment (mod 2**128)."""
    m_hi, m_lo = _PCG_MULT
    new_hi = _mulhi(lo, m_lo) + lo * m_hi + hi * m_lo
    new_lo = lo * m_lo
    out_lo = new_lo + inc_lo
    carry = (out_lo < new_lo).astype(np.uint64)
    return new_hi + inc_hi + carry, out_lo


def _add(a_hi, a_lo, b_hi, b_lo):
    lo = a_lo + b_lo
    return a_hi + b_hi + (lo < a_lo).astype(np.uint64), lo


def _seeded_doubles(entropy: list[np.ndarray], count: int) -> np.ndarray:
    seed_hi, seed_lo, inc_hi, inc_lo = _state(_pool(entropy), 8)
    # pcg64_set_seed: increment = (initseq << 1) | 1; state = 0, step, add the initial state, step.
    inc_hi, inc_lo = (inc_hi << np.uint64(1)) | (inc_lo >> np.uint64(63)), (inc_lo << np.uint64(1)) | np.uint64(1)
    zero = np.zeros_like(seed_hi)
    hi, lo = _step(zero, zero, inc_hi, inc_lo)
    hi, lo = _add(hi, lo, seed_hi, seed_lo)
    hi, lo = _step(hi, lo, inc_hi, inc_lo)
    out = np.empty((len(seed_hi), count), dtype=np.float64)
    for k in range(count):
        hi, lo = _step(hi, lo, inc_hi, inc_lo)
        value, rotation = hi ^ lo, hi >> np.uint64(58)  # XSL-RR: rotate right by the top 6 bits
        value = (value >> rotation) | (value << ((np.uint64(64) - rotation) & np.uint64(63)))
        out[:, k] = (value >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)
    return out


def uniforms(seed: int, epoch: int, keys, count: int) -> np.ndarray:
    """(N, count) float64: row i is ``np.random.default_rng([seed, epoch, keys[i]]).random(count)``, for
    non-negative ints ``seed`` and ``epoch`` and unsigned 64-bit ``keys``."""
    keys = np.asarray(keys, dtype=np.uint64).reshape(-1)
    fixed = _words(int(seed)) + _words(int(epoch))
    out = np.empty((len(keys), count), dtype=np.float64)
    high = keys >> np.uint64(32)
    # A key below 2**32 is one entropy word, a larger one two: the two kinds mix differently.
    for wide in (False, True):
        rows = np.flatnonzero((high != 0) == wide)
        if not rows.size:
            continue
        words = [np.full(rows.size, word, dtype=np.uint32) for word in fixed]
        words.append((keys[rows] & _M32).astype(np.uint32))
        if wide:
            words.append(high[rows].astype(np.uint32))
        with np.errstate(over="ignore"):
            out[rows] = _seeded_doubles(words, count)
    return out
