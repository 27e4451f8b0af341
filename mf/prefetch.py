"""`prefetch(array, i, j)`, `prefetch_1d(array, i)`: ask the CPU for the cache line of an element,
from numba-compiled code.

Why: a LazyAdamW step (mf.fused_step) gathers its batch's ratings from the training columns at
random and reads and writes the few thousand table rows the batch touches, scattered over tables far
larger than the caches; a loop over them otherwise waits on one memory read after another. Asking
for them a few iterations ahead lets those reads overlap.
numba has no prefetch of its own, so this emits LLVM's `llvm.prefetch` intrinsic through numba's
public extension API (`numba.extending.intrinsic`). The intrinsic's name carries the pointer type
(`p0`: LLVM 15's opaque pointers, numba 0.60 and later); tests/test_fused_step.py compiles and runs
it, so a numba whose LLVM names it otherwise fails there, not in a trial. A prefetch never faults and
changes no value: only when a line arrives.
"""

from __future__ import annotations

try:
    from llvmlite import ir
    from numba.core import cgutils, types
    from numba.extending import intrinsic
except ImportError:  # no numba: mf.fused_step is not used
    intrinsic = None

if intrinsic is not None:

    def _codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        array_type, *index_types = signature.args
        ary = context.make_array(array_type)(context, builder, args[0])
        index = [
            context.cast(builder, value, kind, types.intp)
            for value, kind in zip(args[1:], index_types, strict=True)
        ]
        ptr = cgutils.get_item_pointer2(
            context,
            builder,
            data=ary.data,
            shape=cgutils.unpack_tuple(builder, ary.shape),
            strides=cgutils.unpack_tuple(builder, ary.strides),
            layout=array_type.layout,
            inds=index,
        )
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0"
        )
        # rw 1 (write: the rows are updated), locality 3 (keep in every cache level), data cache.
        builder.call(
            fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 1), ir.Constant(i32, 3), ir.Constant(i32, 1)]
        )
        return context.get_dummy_value()

    @intrinsic
    def prefetch(typingctx, array, i, j):  # type: ignore[no-untyped-def]
        """Prefetch, for a read and a write soon, the line holding `array[i, j]` (a 2-D array)."""
        return types.void(array, i, j), _codegen

    @intrinsic
    def prefetch_1d(typingctx, array, i):  # type: ignore[no-untyped-def]
        """Prefetch the line holding `array[i]` (a 1-D array)."""
        return types.void(array, i), _codegen

else:
    prefetch = prefetch_1d = None

__all__ = ["prefetch", "prefetch_1d"]
