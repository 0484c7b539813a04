"""Register micro-kernels and data-movement blocks written as LLVM vector IR (numba
``@intrinsic``), called from the numba drivers of the GEMM, sparse and probe modules.

Contents: ``make_int_tile`` (int8 / int4-weight GEMM, ``vpmaddwd``), ``make_f32_tile`` (fp32
GEMM), ``make_bsr_tile`` / ``make_nm_tile`` (sparse GEMMs), ``transpose8x8`` and
``make_pack_a_block`` (SIMD transposes for packing). All are generic IR (vector types,
``shufflevector``, ``llvm.fmuladd``; no target intrinsics), so they compile for any host LLVM
supports and become AVX2/FMA code on x86. Every intrinsic takes 1-D C-contiguous arrays plus
int64 offsets/counts, never checks bounds, and relies on its numba caller for valid ranges.

Integer kernels, why IR and not numba source: AVX2 has no int8 dot-product instruction (no
VNNI); the fast way is ``vpmaddwd``: 16 int16 x int16 products pair-added into 8 int32 lanes
per instruction. Scalar numba code never produced it in a register-blocked kernel (checked
with ``inspect_asm``): the SLP vectoriser widens ``c += int32(a) * int32(b)`` to ``vpmulld``
(8 MACs, 26-40 GOPS), and the loop vectoriser's reduction form only becomes ``vpmaddwd``
through LLVM's X86PartialReduction pass, which requires every sign-extended operand to have a
single use, i.e. a 1x1 dot product (~37 GOPS). The shape that works: ``sext <16 x i16>`` both
operands, ``mul <16 x i32>``, then add the even and the odd lanes; the x86 backend matches
exactly that to ``vpmaddwd``, and the micro-kernel loop becomes ``vmovdqu`` x nv, then per row
``vpbroadcastd`` + nv x (``vpmaddwd`` + ``vpaddd``) (115-150 GOPS in L1).

Operand layouts (flat int16 arrays, k-pairs interleaved so a 32-bit lane holds one pair):
    A panel  ap[(p * mr + i) * 2 + t] = A[row i, k = 2p + t]          (t = 0, 1)
    B sliver bp[(p * nr + j) * 2 + t] = B[k = 2p + t, col j]          (int8 variant)
    B sliver bq[p * nr + pos] = nibble pair of column PERM16[pos]     (int4 variant, uint8)
The int4 byte holds k = 2p in the low and k = 2p + 1 in the high nibble; PERM16 puts columns in
the order that AVX2's in-lane ``vpunpck{l,h}wd`` interleave turns back into 0..15.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_I16 = ir.IntType(16)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_V16I16 = ir.VectorType(_I16, 16)
_V16I32 = ir.VectorType(_I32, 16)
_V8I32 = ir.VectorType(_I32, 8)
_V16I8 = ir.VectorType(ir.IntType(8), 16)

#: Byte position -> column of a 16-column int4 group (see module docstring).
PERM16 = np.array([0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15], dtype=np.int64)


def _mask(values: list[int]) -> ir.Constant:
    return ir.Constant(ir.VectorType(_I32, len(values)), values)


def _pair_madd(builder: ir.IRBuilder, a: ir.Value, b: ir.Value) -> ir.Value:
    """<8 x i32> sum over pairs: lane l = a[2l]*b[2l] + a[2l+1]*b[2l+1] (selects vpmaddwd)."""
    prod = builder.mul(builder.sext(a, _V16I32), builder.sext(b, _V16I32))
    undef = ir.Constant(_V16I32, None)
    even = builder.shuffle_vector(prod, undef, _mask(list(range(0, 16, 2))))
    odd = builder.shuffle_vector(prod, undef, _mask(list(range(1, 16, 2))))
    return builder.add(even, odd)


def _vec_ptr(builder: ir.IRBuilder, base: ir.Value, offset: ir.Value, vty: ir.Type) -> ir.Value:
    return builder.bitcast(builder.gep(base, [offset], inbounds=True), vty.as_pointer())


def _b_vectors_i8(builder, bdata, p, nv):
    """nv vectors <16 x i16> (8 columns x 2 k each) of the int8-variant sliver at k-pair p."""
    base = builder.mul(p, ir.Constant(_I64, 16 * nv))
    return [builder.load(_vec_ptr(builder, bdata, builder.add(base, ir.Constant(_I64, 16 * v)),
                                  _V16I16), align=2) for v in range(nv)]


def _b_vectors_i4(builder, bdata, p, nv):
    """Unpack 16 columns x 2 k of nibbles per group into two <16 x i16> pair vectors."""
    out = []
    base = builder.mul(p, ir.Constant(_I64, 8 * nv))
    for g in range(nv // 2):
        raw = builder.load(_vec_ptr(builder, bdata, builder.add(base, ir.Constant(_I64, 16 * g)),
                                    _V16I8), align=1)
        wide = builder.sext(raw, _V16I16)  # signed byte: high nibble keeps its sign
        lo = builder.ashr(builder.shl(wide, ir.Constant(_V16I16, [12] * 16)),
                          ir.Constant(_V16I16, [12] * 16))
        hi = builder.ashr(wide, ir.Constant(_V16I16, [4] * 16))
        # in-lane interleave (vpunpcklwd / vpunpckhwd): pairs for columns 0-7, then 8-15
        out.append(builder.shuffle_vector(lo, hi, _mask(
            [0, 16, 1, 17, 2, 18, 3, 19, 8, 24, 9, 25, 10, 26, 11, 27])))
        out.append(builder.shuffle_vector(lo, hi, _mask(
            [4, 20, 5, 21, 6, 22, 7, 23, 12, 28, 13, 29, 14, 30, 15, 31])))
    return out


def make_int_tile(mr: int, nr: int, nibbles: bool):
    """Build the intrinsic ``tile(kp, ap, bp, out)`` for an mr x nr int32 micro-tile.

    ``kp`` k-pairs of the A panel ``ap`` (int16) and B sliver ``bp`` (int16 pairs, or uint8
    nibble pairs when ``nibbles``) are multiplied into ``out[i * nr + j]`` (int32, overwritten).
    nr must be a multiple of 8 (16 for nibbles).
    """
    if nr % (16 if nibbles else 8):
        raise ValueError(f"nr={nr} must be a multiple of {16 if nibbles else 8}")
    nv = nr // 8
    load_b = _b_vectors_i4 if nibbles else _b_vectors_i8

    @intrinsic
    def tile(typingctx, kp, ap, bp, out):
        sig = types.void(kp, ap, bp, out)

        def codegen(context, builder, signature, args):
            kp_v, ap_v, bp_v, out_v = args
            adata = context.make_array(signature.args[1])(context, builder, ap_v).data
            bdata = context.make_array(signature.args[2])(context, builder, bp_v).data
            odata = context.make_array(signature.args[3])(context, builder, out_v).data
            zero = ir.Constant(_V8I32, [0] * 8)
            accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(nv)]
                    for _ in range(mr)]
            with cgutils.for_range(builder, kp_v) as loop:
                p = loop.index
                bvecs = load_b(builder, bdata, p, nv)
                abase = builder.mul(p, ir.Constant(_I64, 2 * mr))
                for i in range(mr):
                    ptr = _vec_ptr(builder, adata, builder.add(abase, ir.Constant(_I64, 2 * i)),
                                   _I32)
                    pair = builder.load(ptr, align=2)
                    splat = builder.shuffle_vector(
                        builder.insert_element(ir.Constant(_V8I32, None), pair,
                                               ir.Constant(_I32, 0)),
                        ir.Constant(_V8I32, None), _mask([0] * 8))
                    avec = builder.bitcast(splat, _V16I16)
                    for v in range(nv):
                        acc = accs[i][v]
                        builder.store(builder.add(builder.load(acc),
                                                  _pair_madd(builder, avec, bvecs[v])), acc)
            for i in range(mr):
                for v in range(nv):
                    ptr = _vec_ptr(builder, odata, ir.Constant(_I64, i * nr + 8 * v), _V8I32)
                    builder.store(builder.load(accs[i][v]), ptr, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


# ---------------------------------------------------------------------------------------------
# fp32 sparse micro-kernels. The activations X (M x K) are packed transposed into panels
# xt[k * MB + mm] = X[m0 + mm, k] (MB = 8 * mv rows of M per panel), so a kept weight w at
# (k, n) contributes w * xt[k, :] to output column n: one broadcast and mv contiguous
# <8 x float> loads feed mv FMAs, and no zero is ever multiplied.
# ---------------------------------------------------------------------------------------------
_F32 = ir.FloatType()
_V8F32 = ir.VectorType(_F32, 8)


def _fmuladd(builder: ir.IRBuilder, a: ir.Value, b: ir.Value, c: ir.Value) -> ir.Value:
    fnty = ir.FunctionType(_V8F32, [_V8F32, _V8F32, _V8F32])
    fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.fmuladd.v8f32")
    return builder.call(fn, [a, b, c])


def _splat_f32(builder: ir.IRBuilder, x: ir.Value) -> ir.Value:
    v = builder.insert_element(ir.Constant(_V8F32, None), x, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(_V8F32, None), _mask([0] * 8))


def _load_f32_vectors(builder: ir.IRBuilder, data: ir.Value, base: ir.Value,
                      n: int) -> list[ir.Value]:
    """The ``n`` consecutive 8-float vectors at ``data[base:]``."""
    return [builder.load(_vec_ptr(builder, data, builder.add(base, ir.Constant(_I64, 8 * v)),
                                  _V8F32), align=4) for v in range(n)]


def _zero_f32_accs(builder: ir.IRBuilder, rows: int, nv: int) -> list[list[ir.Value]]:
    """``rows`` x ``nv`` accumulator slots of 8 floats, zeroed (mem2reg keeps them in ymm)."""
    zero = ir.Constant(_V8F32, [0.0] * 8)
    return [[cgutils.alloca_once_value(builder, zero) for _ in range(nv)] for _ in range(rows)]


def _fma_broadcast(builder: ir.IRBuilder, accs_row: list, data: ir.Value, offset: ir.Value,
                   vectors: list[ir.Value]) -> None:
    """``accs_row[v] += data[offset] * vectors[v]``: one broadcast of the float, then one FMA
    per vector."""
    s = _splat_f32(builder, builder.load(builder.gep(data, [offset], inbounds=True)))
    for acc, x in zip(accs_row, vectors):
        builder.store(_fmuladd(builder, s, x, builder.load(acc)), acc)


def _load_index(builder: ir.IRBuilder, data: ir.Value, offset: ir.Value) -> ir.Value:
    v = builder.load(builder.gep(data, [offset], inbounds=True))
    return builder.sext(v, _I64) if v.type.width < 64 else v


def _init_accs(builder, odata, rows, mv, accumulate):
    """Accumulator slots: out[r * MB + 8v : +8] when ``accumulate`` != 0, else zeros."""
    zero = ir.Constant(_V8F32, [0.0] * 8)
    flag = builder.icmp_signed("!=", accumulate, ir.Constant(accumulate.type, 0))
    accs = []
    for r in range(rows):
        row = []
        for v in range(mv):
            ptr = _vec_ptr(builder, odata, ir.Constant(_I64, r * 8 * mv + 8 * v), _V8F32)
            slot = cgutils.alloca_once_value(builder, zero)
            with builder.if_then(flag):
                builder.store(builder.load(ptr, align=4), slot)
            row.append(slot)
        accs.append(row)
    return accs


def _store_accs(builder, odata, accs, mb):
    for r, row in enumerate(accs):
        for v, acc in enumerate(row):
            ptr = _vec_ptr(builder, odata, ir.Constant(_I64, r * mb + 8 * v), _V8F32)
            builder.store(builder.load(acc), ptr, align=4)


def make_bsr_tile(rows: int, cols: int, mv: int):
    """Intrinsic ``tile(lo, hi, bcol, vals, xt, out)`` for one block row of a BSR matrix.

    For blocks e in [lo, hi): ``k0 = bcol[e] * cols``; block values ``vals[(e*rows + r)*cols
    + c]`` multiply X panel rows ``xt[(k0 + c) * MB : +MB]``; ``out[r * MB + mm]`` (float32,
    overwritten) receives output channel r of the block row for panel row mm. Each X vector
    load is shared by the ``rows`` channels of the block (4x4 blocks: 4 FMAs per load).
    CSR is the 1 x 1 case (``bcol`` = column indices, any integer dtype).
    """
    mb = 8 * mv

    @intrinsic
    def tile(typingctx, lo, hi, bcol, vals, xt, out):
        sig = types.void(lo, hi, bcol, vals, xt, out)

        def codegen(context, builder, signature, args):
            lo_v, hi_v = (builder.sext(v, _I64) if v.type.width < 64 else v for v in args[:2])
            arrs = [context.make_array(signature.args[i])(context, builder, args[i]).data
                    for i in (2, 3, 4, 5)]
            bdata, wdata, xdata, odata = arrs
            accs = _zero_f32_accs(builder, rows, mv)
            with cgutils.for_range_slice(builder, lo_v, hi_v, ir.Constant(_I64, 1)) as (e, _):
                k0 = builder.mul(_load_index(builder, bdata, e), ir.Constant(_I64, cols))
                wbase = builder.mul(e, ir.Constant(_I64, rows * cols))
                for c in range(cols):
                    xrow = builder.mul(builder.add(k0, ir.Constant(_I64, c)),
                                       ir.Constant(_I64, mb))
                    xs = _load_f32_vectors(builder, xdata, xrow, mv)
                    for r in range(rows):
                        _fma_broadcast(builder, accs[r], wdata,
                                       builder.add(wbase, ir.Constant(_I64, r * cols + c)), xs)
            _store_accs(builder, odata, accs, mb)
            return context.get_dummy_value()

        return sig, codegen

    return tile


def make_nm_tile(rows: int, mv: int, n: int, m: int):
    """Intrinsic ``tile(w0, nwords, ldw, meta, ldv, vals, xt, out, accumulate)`` for ``rows``
    n:m channels, decoding the packed positions in registers.

    Channel r of the block has its 64-bit metadata words at ``meta[r * ldw + i]`` and values at
    ``vals[r * ldv + t]``; entry t = i * E + e (E = 64 / bits codes per word) sits at
    K = (t // n) * m + code(t). Words w0 .. w0+nwords-1 are applied to
    ``out[r * MB : (r + 1) * MB]``, overwritten or, when ``accumulate`` is non-zero, added to
    (so the K loop can be blocked outside).

    The E entries of a word are unrolled, so a position costs two or three ALU ops (shift,
    mask, add) instead of a load per kept weight, and no decode pass over the metadata runs
    before the GEMM (a separate int32 index array cost 0.4 ms per call at 512 x 512 and one of
    the six loads per FMA group).
    Every n:m channel has the same number of entries per K range, so the channels of a block
    share one loop, rows * mv independent FMA chains.
    """
    mb = 8 * mv
    bits = (m - 1).bit_length()
    per_word = 64 // bits
    mask = m - 1

    @intrinsic
    def tile(typingctx, w0, nwords, ldw, meta, ldv, vals, xt, out, accumulate):
        sig = types.void(w0, nwords, ldw, meta, ldv, vals, xt, out, accumulate)

        def codegen(context, builder, signature, args):
            w0_v, nw_v, ldw_v = args[:3]
            ldv_v = args[4]
            mdata, wdata, xdata, odata = [
                context.make_array(signature.args[i])(context, builder, args[i]).data
                for i in (3, 5, 6, 7)]
            accs = _init_accs(builder, odata, rows, mv, args[8])
            c = lambda x: ir.Constant(_I64, x)  # noqa: E731
            with cgutils.for_range(builder, nw_v) as loop:
                i = builder.add(w0_v, loop.index)
                words = [builder.load(builder.gep(mdata, [builder.add(
                    builder.mul(ldw_v, c(r)), i)], inbounds=True)) for r in range(rows)]
                vbases = [builder.add(builder.mul(ldv_v, c(r)), builder.mul(i, c(per_word)))
                          for r in range(rows)]
                tbase = builder.mul(i, c(per_word))
                for e in range(per_word):
                    group = builder.udiv(builder.add(tbase, c(e)), c(n))
                    gbase = builder.mul(group, c(m * mb))
                    for r in range(rows):
                        code = builder.and_(builder.lshr(words[r], c(e * bits)), c(mask))
                        xrow = builder.add(gbase, builder.mul(code, c(mb)))
                        _fma_broadcast(builder, accs[r], wdata, builder.add(vbases[r], c(e)),
                                       _load_f32_vectors(builder, xdata, xrow, mv))
            _store_accs(builder, odata, accs, mb)
            return context.get_dummy_value()

        return sig, codegen

    return tile


def _shuf(builder, a, b, mask):
    return builder.shuffle_vector(a, b, _mask(mask))


@intrinsic
def transpose8x8(typingctx, src, src_off, src_ld, dst, dst_off, dst_ld):
    """``dst[dst_off + j*dst_ld + i] = src[src_off + i*src_ld + j]`` for i, j < 8 (float32).

    The AVX 8x8 transpose as generic shuffles (in-lane unpacks, 2-register shuffles, 128-bit
    lane swaps: 24 shuffles for 64 elements), ~5x faster than the scalar strided copy that
    packing and unpacking transposed panels otherwise cost.
    """
    sig = types.void(src, src_off, src_ld, dst, dst_off, dst_ld)

    def codegen(context, builder, signature, args):
        sdata = context.make_array(signature.args[0])(context, builder, args[0]).data
        ddata = context.make_array(signature.args[3])(context, builder, args[3]).data
        s_off, s_ld, d_off, d_ld = args[1], args[2], args[4], args[5]
        rows = [builder.load(_vec_ptr(builder, sdata, builder.add(
            s_off, builder.mul(s_ld, ir.Constant(_I64, i))), _V8F32), align=4) for i in range(8)]
        lo, hi = [0, 8, 1, 9, 4, 12, 5, 13], [2, 10, 3, 11, 6, 14, 7, 15]
        t = []
        for i in range(0, 8, 2):
            t += [_shuf(builder, rows[i], rows[i + 1], lo),
                  _shuf(builder, rows[i], rows[i + 1], hi)]
        # t[0]=unpacklo(r0,r1) t[1]=unpackhi(r0,r1) t[2]=unpacklo(r2,r3) ...
        s44, see = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
        u = [_shuf(builder, t[0], t[2], s44), _shuf(builder, t[0], t[2], see),
             _shuf(builder, t[1], t[3], s44), _shuf(builder, t[1], t[3], see),
             _shuf(builder, t[4], t[6], s44), _shuf(builder, t[4], t[6], see),
             _shuf(builder, t[5], t[7], s44), _shuf(builder, t[5], t[7], see)]
        # u[0..3]: columns 0,1,2,3 (and 4..7 in the high lane) of rows 0-3; u[4..7]: rows 4-7
        p20, p31 = [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]
        outs = [_shuf(builder, u[j], u[j + 4], p20) for j in range(4)]
        outs += [_shuf(builder, u[j], u[j + 4], p31) for j in range(4)]
        for j in range(8):
            ptr = _vec_ptr(builder, ddata, builder.add(
                d_off, builder.mul(d_ld, ir.Constant(_I64, j))), _V8F32)
            builder.store(outs[j], ptr, align=4)
        return context.get_dummy_value()

    return sig, codegen


def make_pack_a_block(mr: int):
    """Intrinsic ``pack(a, a_off, lda, ap, ap_off)``: an mr x 8 block of A (rows
    ``a[a_off + i*lda : +8]``) stored k-major, ``ap[ap_off + p*mr + i] = A[i, p]`` for p < 8.

    The 8*mr floats are one contiguous block of the packed panel, so the transpose is a single
    fixed permutation of mr loaded vectors, left to LLVM's shuffle lowering, and mr whole-vector
    stores; a scalar packing loop does one strided store per element instead.
    """
    n = 8 * mr
    perm = [i * 8 + p for p in range(8) for i in range(mr)]  # out index p*mr+i <- in i*8+p

    @intrinsic
    def pack(typingctx, a, a_off, lda, ap, ap_off):
        sig = types.void(a, a_off, lda, ap, ap_off)

        def codegen(context, builder, signature, args):
            adata = context.make_array(signature.args[0])(context, builder, args[0]).data
            pdata = context.make_array(signature.args[3])(context, builder, args[3]).data
            rows = [builder.load(_vec_ptr(builder, adata, builder.add(
                args[1], builder.mul(args[2], ir.Constant(_I64, i))), _V8F32), align=4)
                for i in range(mr)]
            # concatenate pairwise up to one <8*mr x float> value (widths must match per step)
            vals = rows
            while len(vals) > 1:
                nxt = []
                for j in range(0, len(vals) - 1, 2):
                    wa, wb = vals[j].type.count, vals[j + 1].type.count
                    if wa == wb:
                        nxt.append(_shuf(builder, vals[j], vals[j + 1], list(range(2 * wa))))
                    else:  # widen the shorter with undef lanes, then concatenate
                        wide = builder.shuffle_vector(vals[j + 1], ir.Constant(vals[j + 1].type,
                                                                              None),
                                                      _mask(list(range(wb)) + [wb] * (wa - wb)))
                        nxt.append(_shuf(builder, vals[j], wide,
                                         list(range(wa)) + list(range(wa, wa + wb))))
                if len(vals) % 2:
                    nxt.append(vals[-1])
                vals = nxt
            allv = vals[0]
            out = builder.shuffle_vector(allv, ir.Constant(allv.type, None), _mask(perm))
            vty = ir.VectorType(_F32, n)
            ptr = builder.bitcast(builder.gep(pdata, [args[4]], inbounds=True), vty.as_pointer())
            builder.store(out, ptr, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return pack


def make_f32_tile(mr: int, nr: int):
    """Intrinsic ``tile(kc, ap, bp, out)``: ``out[i*nr + j] = sum_p ap[p*mr + i] * bp[p*nr + j]``.

    The fp32 register micro-kernel as explicit vector IR: per k, nr/8 vector loads of the B
    sliver, then per row one broadcast and nr/8 FMAs into mr*nr/8 accumulators. This is the same
    loop the SLP vectoriser makes of the scalar-accumulator form
    (:func:`codesign.kernels.gemm_f32.micro_kernel_source`), without depending on its heuristics,
    and LLVM compiles it in a fraction of the time (no 96-wide scalar dependence graph to pack).
    """
    if nr % 8:
        raise ValueError(f"nr={nr} must be a multiple of 8")
    nv = nr // 8

    @intrinsic
    def tile(typingctx, kc, ap, bp, out):
        sig = types.void(kc, ap, bp, out)

        def codegen(context, builder, signature, args):
            adata, bdata, odata = [
                context.make_array(signature.args[i])(context, builder, args[i]).data
                for i in (1, 2, 3)]
            accs = _zero_f32_accs(builder, mr, nv)
            with cgutils.for_range(builder, args[0]) as loop:
                p = loop.index
                bbase = builder.mul(p, ir.Constant(_I64, nr))
                bvecs = _load_f32_vectors(builder, bdata, bbase, nv)
                abase = builder.mul(p, ir.Constant(_I64, mr))
                for i in range(mr):
                    _fma_broadcast(builder, accs[i], adata,
                                   builder.add(abase, ir.Constant(_I64, i)), bvecs)
            _store_accs(builder, odata, accs, nr)
            return context.get_dummy_value()

        return sig, codegen

    return tile
