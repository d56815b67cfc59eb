"""Low-level numba helpers: a scalar bit cast, a software prefetch, bit counts, and the
forward-entry codec.

The forward index packs one (term, value) entry into one machine word so that scoring a
document streams a single contiguous run of memory:

* ``float16`` words (``uint32``): bits 0-15 term id, bits 16-31 the IEEE-754 half-precision
  bits of the value (values are non-negative, so the half's sign bit is always 0).
* ``float32`` words (``uint64``): bits 0-31 term id, bits 32-63 the IEEE-754 single bits.

Both decode with one mask, two shifts and a bit cast, never a table lookup or a branch:
``term = w & term_mask`` and ``value_bits = (w >> hi_shift) << lo_shift`` read as float32.
For half words that float32 equals ``value * 2**-112`` (a half's exponent bias is 15, a
single's 127), which is exact for every finite non-negative half, subnormals included; the
search multiplies the query by ``2**112`` once instead, so every product is still exactly
``round(q * value)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def bits_to_f32(typingctx, bits):
    """Reinterpret a 32-bit unsigned integer as float32 (no conversion)."""
    if isinstance(bits, types.Integer) and bits.bitwidth == 32:
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.FloatType())
        return types.float32(bits), codegen
    return None


@intrinsic
def prefetch(typingctx, array, index):
    """Hint the CPU to bring ``array[index]`` into cache; never faults, even out of bounds."""
    if isinstance(array, types.Array) and isinstance(index, types.Integer):
        def codegen(context, builder, signature, args):
            aryty, _ = signature.args
            ary = context.make_array(aryty)(context, builder, args[0])
            ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]],
                                           wraparound=False)
            i8p = ir.IntType(8).as_pointer()
            i32 = ir.IntType(32)
            fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
            # read (0), high temporal locality (3), data cache (1)
            builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0),
                              ir.Constant(i32, 3), ir.Constant(i32, 1)])
            return context.get_dummy_value()
        return types.void(array, index), codegen
    return None


def _unary_u64(name):
    """An intrinsic calling the LLVM bit-count builtin ``name`` on a uint64 (int64 result)."""
    @intrinsic
    def op(typingctx, x):
        if isinstance(x, types.Integer) and x.bitwidth == 64 and not x.signed:
            def codegen(context, builder, signature, args):
                i64 = ir.IntType(64)
                if name == "ctpop":
                    fn = cgutils.get_or_insert_function(
                        builder.module, ir.FunctionType(i64, [i64]), "llvm.ctpop.i64")
                    return builder.call(fn, [args[0]])
                fn = cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(i64, [i64, ir.IntType(1)]), "llvm.cttz.i64")
                # is_zero_poison false: cttz(0) is 64
                return builder.call(fn, [args[0], ir.Constant(ir.IntType(1), 0)])
            return types.int64(x), codegen
        return None
    return op


popcount_u64 = _unary_u64("ctpop")
popcount_u64.__doc__ = "Set bits of a uint64 (one POPCNT)."
trailing_zeros_u64 = _unary_u64("cttz")
trailing_zeros_u64.__doc__ = "Trailing zero bits of a uint64, 64 for zero (one TZCNT)."


@njit(inline="always")
def read_varint(buf, b):
    """The LEB128 varint at ``buf[b]`` (7 bits a byte, low first, high bit on all but the
    last byte); returns (value, offset after it). Trusts the buffer: a loaded index is
    checked once by `search_kernels.check_structure`."""
    x = np.int64(buf[b])
    b += 1
    if x < 128:
        return x, b
    value = x & 127
    shift = 7
    while True:
        x = np.int64(buf[b])
        b += 1
        value |= (x & 127) << shift
        if x < 128:
            return value, b
        shift += 7


@njit(inline="always")
def read_bits(buf, base, pos, mask):
    """The ``mask``-wide field (at most 9 bits) at bit ``pos`` after byte ``base`` of ``buf``,
    little-endian: two byte loads, so ``buf`` needs one byte of slack after its last field."""
    i = base + (pos >> 3)
    return ((np.int64(buf[i]) | (np.int64(buf[i + 1]) << 8)) >> (pos & 7)) & mask


HALF_TO_SINGLE_SCALE = np.float32(2.0 ** 112)
"""Factor that turns a half word's decoded float32 back into the half's value."""

HALF_MAX = 65504.0
"""Largest finite float16: larger document weights need ``forward_values='float32'``."""


@dataclass(frozen=True)
class EntryCodec:
    """How one forward-index word holds a (term, value) entry; see the module docstring."""

    name: str                 # "float16" | "float32"
    word_dtype: type          # np.uint32 | np.uint64
    term_mask: int
    hi_shift: int
    lo_shift: int
    query_scale: float        # the query is multiplied by this before scoring
    max_vocab: int

    def encode(self, terms: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Pack int term ids and float32 values (validated by the caller) into words."""
        if self.name == "float16":
            half = values.astype(np.float16).view(np.uint16).astype(np.uint32)
            return terms.astype(np.uint32) | (half << np.uint32(16))
        single = values.astype(np.float32).view(np.uint32).astype(np.uint64)
        return terms.astype(np.uint64) | (single << np.uint64(32))

    def decode(self, words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unpack words into (int32 term ids, float32 values); numpy, for tests and export."""
        terms = (words & self.word_dtype(self.term_mask)).astype(np.int32)
        if self.name == "float16":
            values = (words >> np.uint32(16)).astype(np.uint16).view(np.float16).astype(np.float32)
        else:
            values = (words >> np.uint64(32)).astype(np.uint32).view(np.float32)
        return terms, values


CODECS: dict[str, EntryCodec] = {
    "float16": EntryCodec("float16", np.uint32, 0xFFFF, 16, 13, 2.0 ** 112, 1 << 16),
    "float32": EntryCodec("float32", np.uint64, 0xFFFFFFFF, 32, 0, 1.0, 1 << 31),
}


# -- inverted summary layout (documented in `pipeline.index.blocked`) ---------------------------

PAIR_GROUP_SHIFT = 5
PAIR_GROUP = 1 << PAIR_GROUP_SHIFT
"""Pairs per group. Each segment's pairs are cut into groups of this many (the last may be
shorter); a group stores its first pair's term and first entry offset absolutely, and the
other pairs' terms as varint deltas. A search jumps between groups by their first terms and
reads at most ``PAIR_GROUP - 1`` deltas inside one; 32 keeps the per-group arrays (12 bytes)
at 0.375 bytes a pair."""

ENTRY_BLOCK_SHIFT = 8
ENTRY_CODE_MASK = (1 << ENTRY_BLOCK_SHIFT) - 1
"""The build's summary entry, before packing: one uint16, bits 0-7 the block's u8 summary
code of the pair's term, bits 8-15 the block's index inside its segment. The index stores
the two halves apart: the code as one byte, the block in its segment's own width
(`block_id_bits`)."""

SEGMENT_BLOCKS = 1 << ENTRY_BLOCK_SHIFT
"""Blocks per summary segment at most: a segment-local block id fits in 8 bits."""


@njit(cache=True, nogil=True)
def block_id_bits(n_blocks):
    """Bits of a segment-local block id in a segment of ``n_blocks`` blocks (at most 256):
    the fewest that count them, 0 for one block."""
    bits = 0
    while (1 << bits) < n_blocks:
        bits += 1
    return bits


U8_LEVELS = ENTRY_CODE_MASK
"""Largest summary code: values are quantised to ``0..U8_LEVELS`` between a block's min and
max component."""
