//! [`Ops`] on a CUDA device: the products through cuBLAS (on candle's stream and handle, so they
//! are ordered with candle's own work on the parameters), the kernels from `kernels.cu`, compiled
//! to PTX by nvcc at build time (build.rs) and loaded once.

use super::{Arg, At, Buf, Gemm, Grid, Kernel, Ops};
use crate::model::CharRnn;
use crate::{Error, Result};
use candle_core::cuda_backend::cudarc::cublas::{result as cublas, sys as cublas_sys};
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::CudaDevice;
use candle_core::{Device, Storage};
use std::collections::HashMap;
use std::sync::Arc;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused_kernels.ptx"));

fn err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Device(format!("cuda {what}: {e}"))
}

/// A buffer: our own memory, or a parameter's (candle's), by its base address.
enum Slot {
    Owned(CudaSlice<f32>, u64),
    Bound(u64),
}

pub struct CudaOps {
    dev: CudaDevice,
    stream: Arc<CudaStream>,
    funcs: HashMap<&'static str, CudaFunction>,
    bufs: Vec<Slot>,
    /// The parameters' slots, rebound by each [`Ops::bind_params`].
    params: Vec<Buf>,
}

impl CudaOps {
    pub fn new(device: &Device) -> Result<CudaOps> {
        let dev = device.as_cuda_device()?.clone();
        Ok(CudaOps {
            stream: dev.cuda_stream(),
            dev,
            funcs: HashMap::new(),
            bufs: Vec::new(),
            params: Vec::new(),
        })
    }

    fn ptr(&self, at: At) -> u64 {
        let base = match &self.bufs[at.buf.0] {
            Slot::Owned(_, p) | Slot::Bound(p) => *p,
        };
        base + 4 * at.off as u64
    }

    fn owned(&mut self, at: At) -> Result<&mut CudaSlice<f32>> {
        match &mut self.bufs[at.buf.0] {
            Slot::Owned(s, _) => Ok(s),
            Slot::Bound(_) => Err(Error::Device(
                "cuda: a parameter is not copied to or from".into(),
            )),
        }
    }

    fn launch(
        &mut self,
        name: &'static str,
        (grid, block): (u32, u32),
        args: &[Arg],
    ) -> Result<()> {
        if !self.funcs.contains_key(name) {
            // Loaded on first use: the module once, each function by the name it is launched by.
            let f = self
                .dev
                .get_or_load_custom_func(name, "charlab_fused", PTX)?;
            self.funcs.insert(name, f.into_cuda_function());
        }
        let f = &self.funcs[name];
        // Pointers resolved first: the builder keeps references to its arguments.
        let ptrs: Vec<u64> = args
            .iter()
            .map(|a| match a {
                Arg::Ptr(at) => self.ptr(*at),
                _ => 0,
            })
            .collect();
        let mut b = self.stream.launch_builder(f);
        for (a, p) in args.iter().zip(&ptrs) {
            match a {
                Arg::Ptr(_) => b.arg(p),
                Arg::Int(i) => b.arg(i),
                Arg::Float(x) => b.arg(x),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: (grid.max(1), 1, 1),
            block_dim: (block, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: each kernel's arguments are pushed in its signature's order and types
        // ([`Kernel::signature`]), and every pointer is inside a live allocation of the size the
        // kernel's bounds check assumes (the workspace is sized for the window it runs).
        unsafe { b.launch(cfg) }.map_err(|e| err(name, e))?;
        Ok(())
    }
}

impl Ops for CudaOps {
    fn alloc(&mut self, n: usize) -> Result<Buf> {
        let slice = self
            .stream
            .alloc_zeros::<f32>(n.max(1))
            .map_err(|e| err("alloc", e))?;
        let (base, sync) = slice.device_ptr(&self.stream);
        drop(sync);
        self.bufs.push(Slot::Owned(slice, base));
        Ok(Buf(self.bufs.len() - 1))
    }

    fn bind_params(&mut self, model: &CharRnn) -> Result<Vec<Buf>> {
        let mut bases = Vec::with_capacity(model.params().len());
        for (name, var) in model.params() {
            let (storage, layout) = var.as_tensor().storage_and_layout();
            let Storage::Cuda(cuda) = &*storage else {
                return Err(Error::Device(format!("{name} is not on a CUDA device")));
            };
            let slice = cuda.as_cuda_slice::<f32>()?;
            let (base, _sync) = slice.device_ptr(&self.stream);
            bases.push(base + 4 * layout.start_offset() as u64);
        }
        if self.params.is_empty() {
            for _ in &bases {
                self.bufs.push(Slot::Bound(0));
                self.params.push(Buf(self.bufs.len() - 1));
            }
        }
        for (buf, base) in self.params.iter().zip(bases) {
            self.bufs[buf.0] = Slot::Bound(base);
        }
        Ok(self.params.clone())
    }

    fn store_params(&mut self, _model: &CharRnn) -> Result<()> {
        Ok(())
    }

    fn upload(&mut self, at: At, data: &[f32]) -> Result<()> {
        let stream = self.stream.clone();
        let slice = self.owned(at)?;
        let mut view = slice.slice_mut(at.off..at.off + data.len());
        stream
            .memcpy_htod(data, &mut view)
            .map_err(|e| err("upload", e))
    }

    fn download(&mut self, at: At, n: usize) -> Result<Vec<f32>> {
        let stream = self.stream.clone();
        let slice = self.owned(at)?;
        stream
            .clone_dtoh(&slice.slice(at.off..at.off + n))
            .map_err(|e| err("download", e))
    }

    fn gemm(&mut self, g: &Gemm) -> Result<()> {
        // Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: the operands swap.
        let op = |t: bool| {
            if t {
                cublas_sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                cublas_sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let (alpha, beta) = (1.0f32, g.beta);
        let blas = self.dev.cublas_handle();
        // SAFETY: the pointers are device addresses inside live allocations that hold the
        // matrices with the given shapes and strides (the workspace and the parameters), and the
        // handle is bound to the stream every other operation here runs on.
        unsafe {
            cublas::sgemm(
                *blas.handle(),
                op(g.tb),
                op(g.ta),
                g.n as i32,
                g.m as i32,
                g.k as i32,
                &alpha,
                self.ptr(g.b) as *const f32,
                g.ldb as i32,
                self.ptr(g.a) as *const f32,
                g.lda as i32,
                &beta,
                self.ptr(g.c) as *mut f32,
                g.ldc as i32,
            )
        }
        .map_err(|e| err("sgemm", e))
    }

    fn run(&mut self, k: &Kernel) -> Result<()> {
        let (name, grid, args) = k.signature();
        let grid = match grid {
            Grid::Elements(n) => (n.div_ceil(256) as u32, 256),
            Grid::RowBlocks(rows) => (rows as u32, 256),
            Grid::Blocks(blocks) => (blocks as u32, 256),
        };
        self.launch(name, grid, &args)
    }
}
