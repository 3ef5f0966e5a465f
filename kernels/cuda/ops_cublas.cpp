// Linear on CUDA through cuBLAS SGEMM. Semantics of kernels/cpu/ops_ref.h:
//   y[n, o] = bias[o] + sum_i x[n, i] * w[o, i]      (x: n x in, w: out x in, y: n x out)
//   dx = dy w,  dw = dy^T x,  dbias[o] = sum_n dy[n, o]
// All row-major. cuBLAS is column-major: a row-major r x c matrix is the column-major c x r
// matrix (its transpose) with leading dimension c, so each row-major product is computed as its
// transpose:
//   y^T  (out x n)  = W^T_cm (out x in) * X_cm (in x n)     -> gemm(T, N, out, n, in)
//   dx^T (in x n)   = W_cm (in x out)   * dY_cm (out x n)   -> gemm(N, N, in, n, out)
//   dw^T (in x out) = X_cm (in x n)     * dY_cm^T (n x out) -> gemm(N, T, in, out, n)
// where X_cm, W_cm, dY_cm are the column-major views (in x n, in x out, out x n).
//
// Precision and determinism: the handle (kernels/cuda/context.h) uses CUBLAS_DEFAULT_MATH, which
// keeps single-precision GEMMs in fp32 FMA (no TF32 tensor cores, no BF16x9 emulation), so
// results match the CPU closely; atomics are disallowed, so cuBLAS gives bitwise-identical
// results run to run on the same GPU. The bias is broadcast by a kernel into y before a GEMM with
// beta = 1; the bias gradient is a per-column sum in a fixed order (kernels/cuda/dnn_helpers.cu),
// no atomics.
//
// bf16 (precision "bf16"): the same three products through cublasGemmEx with A and B in
// CUDA_R_16BF and CUBLAS_COMPUTE_32F (f32 accumulation, on tensor cores). Forward: the GEMM writes
// an f32 temporary (C in CUDA_R_32F), then one kernel writes y = round_bf16(tmp + bias), so each
// output is rounded once. Backward: dx and dw come out of the GEMM in bf16 (C in CUDA_R_16BF: the
// f32 result rounded once); the f32 bias gradient is the column sums of the bf16 dy (fixed order).
// Same handle, so the same no-atomics determinism.
#ifdef TTQ_HAVE_CUBLAS

#include "kernels/cuda/context.h"
#include "kernels/cuda/dnn_helpers.h"
#include "kernels/cuda/ops_cuda.h"

namespace ttq::cuda {

void linear_forward(int64_t n, int64_t in, int64_t out, const float* x, const float* w, const float* bias, float* y) {
  TTQ_CHECK(n >= 0 && in >= 0 && out >= 0, "linear_forward (CUDA): negative size n=" << n << " in=" << in
                                                                                      << " out=" << out);
  if (n == 0 || out == 0) return;
  const float one = 1.0f;
  float beta = 0.0f;
  if (bias) {
    helpers::broadcast_rows(n, out, bias, y);
    beta = 1.0f;
  }
  if (in == 0) {  // empty sum: y = bias (or 0)
    if (!bias) CUDA_CHECK(cudaMemsetAsync(y, 0, static_cast<size_t>(n * out) * sizeof(float), cudaStreamPerThread));
    return;
  }
  cublasHandle_t h = DeviceContext::current().cublas();
  const int N = to_int(n, "n"), IN = to_int(in, "in"), OUT = to_int(out, "out");
  CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, OUT, N, IN, &one, w, IN, x, IN, &beta, y, OUT));
}

void linear_backward(int64_t n, int64_t in, int64_t out, const float* x, const float* w, const float* dy, float* dx,
                     float* dw, float* dbias) {
  TTQ_CHECK(n >= 0 && in >= 0 && out >= 0, "linear_backward (CUDA): negative size n=" << n << " in=" << in
                                                                                       << " out=" << out);
  auto zero_fill = [](float* p, int64_t count) {
    if (count > 0) helpers::zero_fill_bytes(p, static_cast<size_t>(count) * sizeof(float));
  };
  if (dbias) {
    if (n == 0)
      zero_fill(dbias, out);
    else
      helpers::column_sums(n, out, dy, dbias);
  }
  if (in == 0) return;  // dx and dw are empty
  if (n == 0 || out == 0) {  // empty sums
    if (out == 0) zero_fill(dx, n * in);
    zero_fill(dw, out * in);
    return;
  }
  cublasHandle_t h = DeviceContext::current().cublas();
  const int N = to_int(n, "n"), IN = to_int(in, "in"), OUT = to_int(out, "out");
  const float one = 1.0f, zero = 0.0f;
  if (dx) CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, IN, N, OUT, &one, w, IN, dy, OUT, &zero, dx, IN));
  CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_T, IN, OUT, N, &one, x, IN, dy, OUT, &zero, dw, IN));
}

// ---- bf16 ------------------------------------------------------------------------------------

namespace {

// C (m x n, column-major, leading dimension ldc, type c_type) = op(A) op(B) with A, B in bf16,
// computed in f32 (alpha = 1, beta = 0: C is overwritten).
void gemm_bf16(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const bf16* a, int lda,
               const bf16* b, int ldb, void* c, cudaDataType_t c_type, int ldc) {
  const float one = 1.0f, zero = 0.0f;
  CUBLAS_CHECK(cublasGemmEx(DeviceContext::current().cublas(), ta, tb, m, n, k, &one, a, CUDA_R_16BF, lda, b,
                            CUDA_R_16BF, ldb, &zero, c, c_type, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}


}  // namespace

void linear_forward(int64_t n, int64_t in, int64_t out, const bf16* x, const bf16* w, const float* bias, bf16* y) {
  TTQ_CHECK(n >= 0 && in >= 0 && out >= 0, "linear_forward (CUDA, bf16): negative size n=" << n << " in=" << in
                                                                                            << " out=" << out);
  if (n == 0 || out == 0) return;
  // y^T (out x n) = W^T_cm * X_cm into an f32 temporary, then y = round(tmp + bias).
  DeviceBuffer acc(static_cast<size_t>(n * out) * sizeof(float));
  if (in == 0)  // empty sum: y = bias (or 0)
    helpers::zero_fill_bytes(acc.get(), acc.bytes());
  else
    gemm_bf16(CUBLAS_OP_T, CUBLAS_OP_N, to_int(out, "out"), to_int(n, "n"), to_int(in, "in"), w,
              to_int(in, "in"), x, to_int(in, "in"), acc.get(), CUDA_R_32F, to_int(out, "out"));
  helpers::add_bias_rows(n, out, acc.f32(), bias, y);
}

void linear_backward(int64_t n, int64_t in, int64_t out, const bf16* x, const bf16* w, const bf16* dy, bf16* dx,
                     bf16* dw, float* dbias) {
  TTQ_CHECK(n >= 0 && in >= 0 && out >= 0, "linear_backward (CUDA, bf16): negative size n=" << n << " in=" << in
                                                                                             << " out=" << out);
  if (dbias) {
    if (n == 0)
      helpers::zero_fill_bytes(dbias, static_cast<size_t>(out) * sizeof(float));
    else
      helpers::column_sums(n, out, dy, dbias);
  }
  if (in == 0) return;  // dx and dw are empty
  if (n == 0 || out == 0) {  // empty sums (bf16 zero is all-zero bits)
    if (out == 0 && dx) helpers::zero_fill_bytes(dx, static_cast<size_t>(n * in) * sizeof(bf16));
    helpers::zero_fill_bytes(dw, static_cast<size_t>(out * in) * sizeof(bf16));
    return;
  }
  const int N = to_int(n, "n"), IN = to_int(in, "in"), OUT = to_int(out, "out");
  if (dx) gemm_bf16(CUBLAS_OP_N, CUBLAS_OP_N, IN, N, OUT, w, IN, dy, OUT, dx, CUDA_R_16BF, IN);
  gemm_bf16(CUBLAS_OP_N, CUBLAS_OP_T, IN, OUT, N, x, IN, dy, OUT, dw, CUDA_R_16BF, IN);
}

}  // namespace ttq::cuda

#endif  // TTQ_HAVE_CUBLAS
