//! Matrix products on the CPU through the `gemm` crate, behind strided views whose bounds are
//! checked on every call (a wrong stride is a panic naming the operand, never a read or write
//! outside a buffer). The large products of a step (input projections, the decoder, weight
//! gradients) go through here; the small per-step recurrent ones have their own register-tile
//! kernels (`recurrence`).

/// A strided, read-only matrix over a slice.
#[derive(Clone, Copy)]
pub struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    /// `rows × cols`, row-major with `row_stride` floats between rows.
    pub fn new(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        View {
            data,
            rows,
            cols,
            rs: row_stride,
            cs: 1,
        }
    }

    pub fn row_count(&self) -> usize {
        self.rows
    }

    /// The underlying slice and the (row, column) strides.
    pub fn raw(&self) -> (&'a [f32], usize, usize) {
        (self.data, self.rs, self.cs)
    }

    /// The element at row `i`, column `j` (a bounds-checked read).
    #[inline(always)]
    pub fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.rs + j * self.cs]
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        View {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Columns `from..from + n`.
    pub fn cols(self, from: usize, n: usize) -> Self {
        assert!(from + n <= self.cols, "gemm: columns out of range");
        let skip = (from * self.cs).min(self.data.len());
        View {
            data: &self.data[skip..],
            cols: n,
            ..self
        }
    }

    /// Rows `from..from + n`.
    pub fn rows(self, from: usize, n: usize) -> Self {
        assert!(from + n <= self.rows, "gemm: rows out of range");
        let skip = (from * self.rs).min(self.data.len());
        View {
            data: &self.data[skip..],
            rows: n,
            ..self
        }
    }

    fn check(&self, what: &str) {
        assert!(
            fits(self.data.len(), self.rows, self.cols, self.rs, self.cs),
            "gemm: {what} ({}×{}, strides {}/{}) does not fit its {} floats",
            self.rows,
            self.cols,
            self.rs,
            self.cs,
            self.data.len()
        );
    }
}

/// A strided, writable row-major matrix over a slice.
pub struct ViewMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    rs: usize,
}

impl<'a> ViewMut<'a> {
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        ViewMut {
            data,
            rows,
            cols,
            rs: row_stride,
        }
    }

    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The buffer and its row stride, after checking that the rows fit in it.
    pub fn into_raw(self) -> (&'a mut [f32], usize) {
        assert!(
            fits(self.data.len(), self.rows, self.cols, self.rs, 1),
            "gemm: destination does not fit"
        );
        (self.data, self.rs)
    }

    /// Columns `from..from + n`.
    pub fn cols(self, from: usize, n: usize) -> Self {
        assert!(from + n <= self.cols, "gemm: columns out of range");
        let skip = from.min(self.data.len());
        ViewMut {
            data: &mut self.data[skip..],
            cols: n,
            ..self
        }
    }

    /// Rows `from..from + n`.
    pub fn rows(self, from: usize, n: usize) -> Self {
        assert!(from + n <= self.rows, "gemm: rows out of range");
        let skip = (from * self.rs).min(self.data.len());
        ViewMut {
            data: &mut self.data[skip..],
            rows: n,
            ..self
        }
    }
}

fn fits(len: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    rows == 0 || cols == 0 || (rows - 1) * rs + (cols - 1) * cs < len
}

/// `dst = a · b`, or `dst += a · b` when `accumulate`; single-threaded (the CPU path runs one
/// group of batch rows per thread).
pub fn matmul(dst: ViewMut, a: View, b: View, accumulate: bool) {
    assert!(
        a.cols == b.rows && dst.rows == a.rows && dst.cols == b.cols,
        "gemm: shapes {}×{} · {}×{} → {}×{}",
        a.rows,
        a.cols,
        b.rows,
        b.cols,
        dst.rows,
        dst.cols
    );
    a.check("left operand");
    b.check("right operand");
    assert!(
        fits(dst.data.len(), dst.rows, dst.cols, dst.rs, 1),
        "gemm: destination does not fit"
    );
    if dst.rows == 0 || dst.cols == 0 {
        return;
    }
    if a.cols == 0 {
        if !accumulate {
            for r in 0..dst.rows {
                dst.data[r * dst.rs..][..dst.cols].fill(0.0);
            }
        }
        return;
    }
    // SAFETY: every index the product touches lies inside the checked views, and `dst` is a
    // `&mut` borrow distinct from `a` and `b`.
    unsafe {
        gemm::gemm(
            dst.rows,
            dst.cols,
            a.cols,
            dst.data.as_mut_ptr(),
            1,
            dst.rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_and_transposed_views_multiply_like_the_definition() {
        // a: 3×4 inside a row stride of 5; b used transposed from a 2×4 matrix.
        let a: Vec<f32> = (0..15).map(|x| x as f32 * 0.5 - 3.0).collect();
        let bt: Vec<f32> = (0..8).map(|x| (x * x) as f32 * 0.1).collect();
        let mut d = vec![1.0f32; 3 * 2];
        matmul(
            ViewMut::new(&mut d, 3, 2, 2),
            View::new(&a, 3, 4, 5),
            View::new(&bt, 2, 4, 4).t(),
            true,
        );
        for i in 0..3 {
            for j in 0..2 {
                let want: f32 = 1.0 + (0..4).map(|k| a[i * 5 + k] * bt[j * 4 + k]).sum::<f32>();
                assert!((d[i * 2 + j] - want).abs() < 1e-4);
            }
        }
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn a_view_past_its_buffer_is_refused() {
        let a = vec![0f32; 10];
        let mut d = vec![0f32; 4];
        matmul(
            ViewMut::new(&mut d, 2, 2, 2),
            View::new(&a, 2, 4, 7),
            View::new(&a, 4, 2, 2),
            false,
        );
    }
}
