//! 4-bit blocks unpacked to int8 ([`crate::quantize::Int4Blocks`]): each nibble `v` of a
//! block with multiplier `m` becomes the int8 `(v - 8) · m`, exact since `|v - 8| ≤ 7` and
//! `m ≤ 18`. The weight `[N, K]` comes out as it is stored (for the input gradient `dY · W`)
//! or transposed, `[K, N]` (for the forward `X · Wᵀ`, as `DynamicQuantizeMatMul` reads it).

use crate::quantize::INT4_BLOCK;

/// Bytes of one packed block.
const BLOCK_BYTES: usize = INT4_BLOCK / 2;

/// The int8 values of one packed block of multiplier `m`, in column order.
#[inline(always)]
fn unpack_block(bytes: &[u8], m: u8, out: &mut [i8]) {
    let m = m as i16;
    for (pair, &byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = ((i16::from(byte & 0x0f) - 8) * m) as i8;
        pair[1] = ((i16::from(byte >> 4) - 8) * m) as i8;
    }
}

/// Rows `rows` of the weight `[N, blocks · 32]` into `out` (those rows, row-major), from
/// `packed` `[N, blocks, 16]` and `multipliers` `[N, blocks]`.
pub(crate) fn rows(
    packed: &[u8],
    multipliers: &[u8],
    blocks: usize,
    rows: std::ops::Range<usize>,
    out: &mut [i8],
) {
    let width = blocks * INT4_BLOCK;
    for (row, out) in rows.zip(out.chunks_exact_mut(width)) {
        let bytes = &packed[row * blocks * BLOCK_BYTES..][..blocks * BLOCK_BYTES];
        let ms = &multipliers[row * blocks..][..blocks];
        for ((bytes, &m), out) in bytes
            .chunks_exact(BLOCK_BYTES)
            .zip(ms)
            .zip(out.chunks_exact_mut(INT4_BLOCK))
        {
            unpack_block(bytes, m, out);
        }
    }
}

/// Output rows `block · 32 .. block · 32 + 32` of the transposed weight `[blocks · 32, N]`
/// into `out` (`32 · N` values, row-major): column `block` of every row's blocks.
pub(crate) fn transposed_block(
    packed: &[u8],
    multipliers: &[u8],
    blocks: usize,
    block: usize,
    out: &mut [i8],
) {
    /// Rows of the weight unpacked together, then written out as runs of this many bytes.
    const TILE: usize = 16;
    let n = multipliers.len() / blocks.max(1);
    let mut tile = [[0i8; INT4_BLOCK]; TILE];
    for first in (0..n).step_by(TILE) {
        let width = TILE.min(n - first);
        for (t, row) in (first..first + width).enumerate() {
            let at = row * blocks + block;
            unpack_block(
                &packed[at * BLOCK_BYTES..][..BLOCK_BYTES],
                multipliers[at],
                &mut tile[t],
            );
        }
        for (k, out_row) in out.chunks_exact_mut(n).enumerate() {
            for (t, value) in out_row[first..first + width].iter_mut().enumerate() {
                *value = tile[t][k];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantize::Int4Blocks;

    /// A weight `[21, 70]` (three blocks, the last padded; a full and a part tile) quantized, and its integers
    /// `q · m` worked out from the dequantized values and the row scales.
    fn case() -> (Int4Blocks, Vec<i8>, usize, usize) {
        let (n, k) = (21, 70);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i as f32 * 0.71).sin() * (1.0 + (i % 37) as f32 / 9.0)))
            .collect();
        let q = Int4Blocks::quantize(&w, n, k);
        let back = q.dequantize(n, k);
        let mut integers = vec![0i8; n * 3 * INT4_BLOCK];
        for r in 0..n {
            for c in 0..k {
                integers[r * 3 * INT4_BLOCK + c] = (back[r * k + c] / q.scales[r]).round() as i8;
            }
        }
        (q, integers, n, 3)
    }

    #[test]
    fn rows_unpack_to_the_integers_the_blocks_stand_for() {
        let (q, want, n, blocks) = case();
        let mut out = vec![0i8; n * blocks * INT4_BLOCK];
        rows(&q.packed, &q.multipliers, blocks, 0..n, &mut out);
        assert_eq!(out, want);
        // A part of the rows, as a thread's chunk sees it.
        let mut part = vec![0i8; 2 * blocks * INT4_BLOCK];
        rows(&q.packed, &q.multipliers, blocks, 2..4, &mut part);
        assert_eq!(part, want[2 * blocks * INT4_BLOCK..4 * blocks * INT4_BLOCK]);
    }

    #[test]
    fn transposed_blocks_unpack_to_the_transposed_integers() {
        let (q, want, n, blocks) = case();
        let width = blocks * INT4_BLOCK;
        let mut out = vec![0i8; width * n];
        for (block, out) in out.chunks_exact_mut(INT4_BLOCK * n).enumerate() {
            transposed_block(&q.packed, &q.multipliers, blocks, block, out);
        }
        for r in 0..n {
            for c in 0..width {
                assert_eq!(out[c * n + r], want[r * width + c], "row {r}, column {c}");
            }
        }
    }
}
