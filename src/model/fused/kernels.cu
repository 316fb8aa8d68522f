// The CUDA path's small kernels (src/model/fused/mod.rs drives them between cuBLAS products).
// Each one is mirrored line for line by `host.rs`, the reference the tests run on the CPU.
// Matrices are row-major with an explicit leading dimension (`ld*`), so a time step's rows of a
// [batch, steps, cols] activation are reached in place, with stride steps * cols.

__device__ __forceinline__ float sigm(float x) { return 1.0f / (1.0f + expf(-x)); }

__device__ __forceinline__ int flat_index() { return blockIdx.x * blockDim.x + threadIdx.x; }

extern "C" __global__ void fill(float* p, int n, float v) {
  int i = flat_index();
  if (i < n) p[i] = v;
}

// out[r, :] = table[ids[r], :]
extern "C" __global__ void gather(const float* table, const unsigned* ids, float* out, int rows, int cols) {
  int i = flat_index();
  if (i >= rows * cols) return;
  int r = i / cols, j = i % cols;
  out[i] = table[(size_t)ids[r] * cols + j];
}

// grad[ids[r], :] += d[r, :]
extern "C" __global__ void scatter_add(const float* d, const unsigned* ids, float* grad, int rows, int cols) {
  int i = flat_index();
  if (i >= rows * cols) return;
  int r = i / cols, j = i % cols;
  atomicAdd(&grad[(size_t)ids[r] * cols + j], d[i]);
}

// One time step of the cell for every stream b and unit j: the gates' pre-activations (input
// product plus recurrent product, without bias) become their activations in place (i, f, g, o:
// PyTorch's order), and the new cell and output are written.
extern "C" __global__ void lstm_step(float* gates, int ldg, const float* b_ih, const float* b_hh,
                                     const float* c_prev, int ld_prev, float* h, float* c, int ld,
                                     int batch, int hidden) {
  int i = flat_index();
  if (i >= batch * hidden) return;
  int b = i / hidden, j = i % hidden;
  float* g = gates + (size_t)b * ldg;
  float gi = sigm(g[j] + (b_ih[j] + b_hh[j]));
  float gf = sigm(g[hidden + j] + (b_ih[hidden + j] + b_hh[hidden + j]));
  float gg = tanhf(g[2 * hidden + j] + (b_ih[2 * hidden + j] + b_hh[2 * hidden + j]));
  float go = sigm(g[3 * hidden + j] + (b_ih[3 * hidden + j] + b_hh[3 * hidden + j]));
  float cn = gf * c_prev[(size_t)b * ld_prev + j] + gi * gg;
  c[(size_t)b * ld + j] = cn;
  h[(size_t)b * ld + j] = go * tanhf(cn);
  g[j] = gi;
  g[hidden + j] = gf;
  g[2 * hidden + j] = gg;
  g[3 * hidden + j] = go;
}

// The same step backwards: the activations in `gates` become the pre-activations' gradients in
// place; `dc` carries the cell's gradient from step t + 1 to step t ([batch, hidden]).
extern "C" __global__ void lstm_step_back(float* gates, int ldg, const float* c, const float* c_prev,
                                         const float* dh, int ld, float* dc, int batch, int hidden) {
  int i = flat_index();
  if (i >= batch * hidden) return;
  int b = i / hidden, j = i % hidden;
  float* g = gates + (size_t)b * ldg;
  float gi = g[j], gf = g[hidden + j], gg = g[2 * hidden + j], go = g[3 * hidden + j];
  float tc = tanhf(c[(size_t)b * ld + j]);
  float dhv = dh[(size_t)b * ld + j];
  float dcv = dc[i] + dhv * go * (1.0f - tc * tc);
  g[j] = dcv * gg * gi * (1.0f - gi);
  g[hidden + j] = dcv * c_prev[(size_t)b * ld + j] * gf * (1.0f - gf);
  g[2 * hidden + j] = dcv * gi * (1.0f - gg * gg);
  g[3 * hidden + j] = dhv * tc * go * (1.0f - go);
  dc[i] = dcv * gf;
}

// dst[b, t, :] = src[b, t - 1, :], and first[b, :] at t = 0: each step's previous state as one
// matrix, for the weight gradient's single product.
extern "C" __global__ void shift(const float* src, const float* first, float* dst, int batch, int steps, int cols) {
  int i = flat_index();
  if (i >= batch * steps * cols) return;
  int j = i % cols, t = (i / cols) % steps, b = i / (cols * steps);
  dst[i] = t == 0 ? first[(size_t)b * cols + j] : src[i - cols];
}

extern "C" __global__ void mul(const float* a, const float* b, float* out, int n) {
  int i = flat_index();
  if (i < n) out[i] = a[i] * b[i];
}

extern "C" __global__ void copy_rows(const float* src, int lds, float* dst, int ldd, int rows, int cols) {
  int i = flat_index();
  if (i >= rows * cols) return;
  int r = i / cols, j = i % cols;
  dst[(size_t)r * ldd + j] = src[(size_t)r * lds + j];
}

// One block per row of logits z [rows, cols]: adds the bias, writes the row's cross-entropy
// against targets[r] and whether its arg-max (first of equals) hits it; with grad, z becomes
// (softmax - onehot) * scale, the mean loss's gradient. blockDim.x must be 256.
extern "C" __global__ void softmax_xent(float* z, const float* bias, const unsigned* targets, float* loss,
                                        float* hit, int rows, int cols, float scale, int grad) {
  __shared__ float sv[256];
  __shared__ int si[256];
  int r = blockIdx.x, tid = threadIdx.x;
  if (r >= rows) return;
  float* zr = z + (size_t)r * cols;
  float m = -INFINITY;
  int arg = cols;
  for (int j = tid; j < cols; j += blockDim.x) {
    float x = zr[j] + bias[j];
    zr[j] = x;
    if (x > m) { m = x; arg = j; }
  }
  sv[tid] = m;
  si[tid] = arg;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (tid < s) {
      float o = sv[tid + s];
      int oi = si[tid + s];
      if (o > sv[tid] || (o == sv[tid] && oi < si[tid])) { sv[tid] = o; si[tid] = oi; }
    }
    __syncthreads();
  }
  float mx = sv[0];
  int best = si[0];
  __syncthreads();
  float s = 0.0f;
  for (int j = tid; j < cols; j += blockDim.x) s += expf(zr[j] - mx);
  sv[tid] = s;
  __syncthreads();
  for (int k = blockDim.x / 2; k > 0; k >>= 1) {
    if (tid < k) sv[tid] += sv[tid + k];
    __syncthreads();
  }
  float sum = sv[0];
  unsigned t = targets[r];
  if (tid == 0) {
    loss[r] = mx + logf(sum) - zr[t];
    hit[r] = best == (int)t ? 1.0f : 0.0f;
  }
  __syncthreads();
  if (!grad) return;
  float inv = 1.0f / sum;
  for (int j = tid; j < cols; j += blockDim.x) {
    float p = expf(zr[j] - mx) * inv;
    zr[j] = (p - (j == (int)t ? 1.0f : 0.0f)) * scale;
  }
}

// Partial sums of squares of x [n]: block k writes out[k]; gridDim.x * 256 threads stride over x
// (the host adds the partials in double: the global norm for clipping).
extern "C" __global__ void sum_squares(const float* x, int n, float* out) {
  __shared__ double sv[256];
  int tid = threadIdx.x;
  double s = 0.0;
  for (int i = blockIdx.x * blockDim.x + tid; i < n; i += gridDim.x * blockDim.x) s += (double)x[i] * x[i];
  sv[tid] = s;
  __syncthreads();
  for (int k = blockDim.x / 2; k > 0; k >>= 1) {
    if (tid < k) sv[tid] += sv[tid + k];
    __syncthreads();
  }
  if (tid == 0) out[blockIdx.x] = (float)sv[0];
}

// One optimizer step on one parameter, element i: optim.rs's `update`, rule for rule. `kind`:
// 0 sgd, 1 momentum, 2 nesterov, 3 adagrad, 4 rmsprop, 5 adam, 6 adamw.
extern "C" __global__ void optim_update(float* p, const float* g, float* s0, float* s1, int n, int kind,
                                        float lr, float grad_scale, float bc1, float bc2, float momentum,
                                        float beta1, float beta2, float rms_decay, float eps, float wd) {
  int i = flat_index();
  if (i >= n) return;
  float l2 = kind == 6 ? 0.0f : wd;
  float pv = p[i];
  float d = g[i] * grad_scale + l2 * pv;
  if (kind == 0) {
    p[i] = pv - lr * d;
  } else if (kind == 1) {
    s0[i] = momentum * s0[i] - lr * d;
    p[i] = pv + s0[i];
  } else if (kind == 2) {
    float v_prev = s0[i];
    s0[i] = momentum * s0[i] - lr * d;
    p[i] = pv + (-momentum * v_prev + (1.0f + momentum) * s0[i]);
  } else if (kind == 3) {
    s0[i] += d * d;
    p[i] = pv - lr * d / (sqrtf(s0[i]) + eps);
  } else if (kind == 4) {
    s0[i] = rms_decay * s0[i] + (1.0f - rms_decay) * d * d;
    p[i] = pv - lr * d / (sqrtf(s0[i]) + eps);
  } else {
    float decay = kind == 6 ? 1.0f - lr * wd : 1.0f;
    s0[i] = beta1 * s0[i] + (1.0f - beta1) * d;
    s1[i] = beta2 * s1[i] + (1.0f - beta2) * d * d;
    float m = s0[i] / bc1;
    float v = s1[i] / bc2;
    p[i] = pv * decay - lr * m / (sqrtf(v) + eps);
  }
}
