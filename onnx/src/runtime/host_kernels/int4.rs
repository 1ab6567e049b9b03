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
/// into `out` (`32 · N` values, row-major): column `block` of every row's blocks. Eight rows
/// of the weight at a time are unpacked and transposed in registers (SSSE3 where the CPU
/// has it, else 8 × 8 byte squares in `u64`s), so each output row is written 8 bytes at a
/// time; the last rows, fewer than 8, one value at a time.
pub(crate) fn transposed_block(
    packed: &[u8],
    multipliers: &[u8],
    blocks: usize,
    block: usize,
    out: &mut [i8],
) {
    let column = Column {
        packed,
        multipliers,
        blocks,
        block,
    };
    let whole = column.rows() - column.rows() % 8;
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("ssse3") {
        // SAFETY: the CPU has SSSE3.
        unsafe { x86::squares(&column, whole, out) };
        return column.rows_one_by_one(whole, out);
    }
    column.squares(whole, out);
    column.rows_one_by_one(whole, out);
}

/// Column `block` of the blocks of every row of a packed weight.
struct Column<'a> {
    packed: &'a [u8],
    multipliers: &'a [u8],
    blocks: usize,
    block: usize,
}

impl Column<'_> {
    /// Rows of the weight (`N`).
    fn rows(&self) -> usize {
        self.multipliers.len() / self.blocks.max(1)
    }

    /// Row `row`'s packed block and its multiplier.
    fn block_of(&self, row: usize) -> (&[u8], u8) {
        let at = row * self.blocks + self.block;
        (
            &self.packed[at * BLOCK_BYTES..][..BLOCK_BYTES],
            self.multipliers[at],
        )
    }

    /// Weight rows `0..whole` (a multiple of 8) into `out`, 8 × 8 squares at a time.
    fn squares(&self, whole: usize, out: &mut [i8]) {
        let n = self.rows();
        let mut square = [[0i8; INT4_BLOCK]; 8];
        for first in (0..whole).step_by(8) {
            for (t, values) in square.iter_mut().enumerate() {
                let (bytes, m) = self.block_of(first + t);
                unpack_block(bytes, m, values);
            }
            for group in 0..INT4_BLOCK / 8 {
                let mut words = [0u64; 8];
                for (word, values) in words.iter_mut().zip(&square) {
                    let bytes: [i8; 8] = std::array::from_fn(|c| values[group * 8 + c]);
                    *word = u64::from_le_bytes(bytes.map(|v| v as u8));
                }
                transpose_8x8(&mut words);
                for (c, word) in words.iter().enumerate() {
                    let row = (group * 8 + c) * n + first;
                    let bytes = word.to_le_bytes().map(|v| v as i8);
                    out[row..row + 8].copy_from_slice(&bytes);
                }
            }
        }
    }

    /// Weight rows `from..` into `out`, one value at a time.
    fn rows_one_by_one(&self, from: usize, out: &mut [i8]) {
        let n = self.rows();
        let mut values = [0i8; INT4_BLOCK];
        for row in from..n {
            let (bytes, m) = self.block_of(row);
            unpack_block(bytes, m, &mut values);
            for (k, &value) in values.iter().enumerate() {
                out[k * n + row] = value;
            }
        }
    }
}

/// An 8 × 8 byte matrix, row `r` in `words[r]` (column `c` in byte `c`, little-endian),
/// transposed in place: three rounds of swapping the off-diagonal halves of 2 × 2 blocks of
/// 4, 2 and 1 bytes.
#[inline(always)]
fn transpose_8x8(words: &mut [u64; 8]) {
    for (shift, mask) in [
        (32, 0x0000_0000_FFFF_FFFFu64),
        (16, 0x0000_FFFF_0000_FFFF),
        (8, 0x00FF_00FF_00FF_00FF),
    ] {
        let step = shift / 8;
        for r in (0..8).filter(|r| r & step == 0) {
            let t = ((words[r] >> shift) ^ words[r + step]) & mask;
            words[r + step] ^= t;
            words[r] ^= t << shift;
        }
    }
}

/// The SSSE3 form of [`Column::squares`]: each block's nibbles looked up in a 16-entry
/// table of `(v - 8) · m` (`pshufb`), the 8 × 32 bytes transposed by three rounds of
/// interleaving.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Column, INT4_BLOCK};
    use crate::quantize::INT4_MAX_MULTIPLIER;

    /// `(v - 8) · m` for each nibble `v`, per multiplier `m` (larger ones read as the largest).
    static NIBBLES: [[i8; 16]; INT4_MAX_MULTIPLIER as usize + 1] = nibble_table();

    const fn nibble_table() -> [[i8; 16]; INT4_MAX_MULTIPLIER as usize + 1] {
        let mut table = [[0i8; 16]; INT4_MAX_MULTIPLIER as usize + 1];
        let mut m = 0;
        while m < table.len() {
            let mut v = 0;
            while v < 16 {
                table[m][v] = ((v as i16 - 8) * m as i16) as i8;
                v += 1;
            }
            m += 1;
        }
        table
    }

    /// Weight rows `0..whole` (a multiple of 8) of `column` into `out`.
    ///
    /// # Safety
    /// The CPU must have SSSE3.
    #[target_feature(enable = "ssse3")]
    pub(super) unsafe fn squares(column: &Column<'_>, whole: usize, out: &mut [i8]) {
        let n = column.rows();
        let low = _mm_set1_epi8(0x0f);
        for first in (0..whole).step_by(8) {
            // Per weight row: columns 0..16 and 16..32 of the block.
            let mut halves = [[_mm_setzero_si128(); 8]; 2];
            for (t, row) in (first..first + 8).enumerate() {
                let (bytes, m) = column.block_of(row);
                let table = &NIBBLES[usize::from(m).min(INT4_MAX_MULTIPLIER.into())];
                // SAFETY: both are 16 bytes long; unaligned loads.
                let (lut, p) = unsafe {
                    (
                        _mm_loadu_si128(table.as_ptr().cast()),
                        _mm_loadu_si128(bytes.as_ptr().cast()),
                    )
                };
                let lo = _mm_shuffle_epi8(lut, _mm_and_si128(p, low));
                let hi = _mm_shuffle_epi8(lut, _mm_and_si128(_mm_srli_epi16(p, 4), low));
                halves[0][t] = _mm_unpacklo_epi8(lo, hi);
                halves[1][t] = _mm_unpackhi_epi8(lo, hi);
            }
            for (half, r) in halves.iter().enumerate() {
                // Row pairs interleaved: columns 0..8 of rows (0, 1) in `pairs[0]`, 8..16 in
                // `pairs[1]`, rows (2, 3) in `pairs[2]` and `pairs[3]`, …
                let pairs: [__m128i; 8] = std::array::from_fn(|i| {
                    let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
                    match i % 2 {
                        0 => _mm_unpacklo_epi8(a, b),
                        _ => _mm_unpackhi_epi8(a, b),
                    }
                });
                for part in 0..2 {
                    let [p01, p23, p45, p67] = [0, 2, 4, 6].map(|i| pairs[i + part]);
                    let quads = [
                        _mm_unpacklo_epi16(p01, p23),
                        _mm_unpackhi_epi16(p01, p23),
                        _mm_unpacklo_epi16(p45, p67),
                        _mm_unpackhi_epi16(p45, p67),
                    ];
                    // Each holds two output rows' 8 bytes: columns (2i, 2i + 1) of this part.
                    let columns = [
                        _mm_unpacklo_epi32(quads[0], quads[2]),
                        _mm_unpackhi_epi32(quads[0], quads[2]),
                        _mm_unpacklo_epi32(quads[1], quads[3]),
                        _mm_unpackhi_epi32(quads[1], quads[3]),
                    ];
                    for (i, &two) in columns.iter().enumerate() {
                        let k = half * INT4_BLOCK / 2 + part * 8 + i * 2;
                        for (row, value) in [(k, two), (k + 1, _mm_unpackhi_epi64(two, two))] {
                            let at = row * n + first;
                            let eight = &mut out[at..at + 8];
                            // SAFETY: `eight` is 8 bytes long; an unaligned store.
                            unsafe { _mm_storel_epi64(eight.as_mut_ptr().cast(), value) };
                        }
                    }
                }
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
            .map(|i| (i as f32 * 0.71).sin() * (1.0 + (i % 37) as f32 / 9.0))
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
        let check = |out: &[i8], how: &str| {
            for r in 0..n {
                for c in 0..width {
                    assert_eq!(
                        out[c * n + r],
                        want[r * width + c],
                        "{how}: row {r}, column {c}"
                    );
                }
            }
        };
        let mut out = vec![0i8; width * n];
        for (block, out) in out.chunks_exact_mut(INT4_BLOCK * n).enumerate() {
            transposed_block(&q.packed, &q.multipliers, blocks, block, out);
        }
        check(&out, "transposed_block");
        // The portable squares too, where the CPU's own path is SSSE3.
        let mut out = vec![0i8; width * n];
        for (block, out) in out.chunks_exact_mut(INT4_BLOCK * n).enumerate() {
            let column = Column {
                packed: &q.packed,
                multipliers: &q.multipliers,
                blocks,
                block,
            };
            column.squares(16, out);
            column.rows_one_by_one(16, out);
        }
        check(&out, "portable");
    }
}
