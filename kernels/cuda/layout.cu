// NCHW <-> NHWC permutation (kernels/cuda/ops_cuda.h permute_layout): per image, the c x hw
// matrix is transposed to hw x c (to channels-last) or back. A classic tiled transpose: a block of
// 32 x 8 threads moves one 32 x 32 tile through shared memory (one padding column against bank
// conflicts), so reads and writes are both row-contiguous. Elements are moved as raw 2- or 4-byte
// words: the permutation never looks at values, so f32 and bf16 share one kernel per width and the
// result is exact. Grid: x over tiles of columns, y over tiles of rows, z over images (y and z in
// slices of at most 65535 tiles / images).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/ops_cuda.h"

namespace ttq::cuda {
namespace {

constexpr int kTile = 32;
constexpr int kRowsPerPass = 8;
constexpr int64_t kMaxGridYZ = 65535;

// dst[b][j][i] = src[b][i][j] for each image b of a rows x cols matrix; this launch covers the
// row tiles from first_row_tile on.
template <class Word>
__global__ void __launch_bounds__(kTile* kRowsPerPass)
    transpose_kernel(int64_t rows, int64_t cols, int64_t first_row_tile, const Word* __restrict__ src,
                     Word* __restrict__ dst) {
  __shared__ Word tile[kTile][kTile + 1];
  const int64_t image = static_cast<int64_t>(blockIdx.z) * rows * cols;
  const int64_t r0 = (first_row_tile + blockIdx.y) * kTile, c0 = static_cast<int64_t>(blockIdx.x) * kTile;
  for (int k = threadIdx.y; k < kTile; k += kRowsPerPass) {
    const int64_t r = r0 + k, c = c0 + threadIdx.x;
    if (r < rows && c < cols) tile[k][threadIdx.x] = src[image + r * cols + c];
  }
  __syncthreads();
  for (int k = threadIdx.y; k < kTile; k += kRowsPerPass) {
    const int64_t c = c0 + k, r = r0 + threadIdx.x;  // dst row c, column r
    if (r < rows && c < cols) dst[image + c * rows + r] = tile[threadIdx.x][k];
  }
}

template <class Word>
void transpose(int64_t n, int64_t rows, int64_t cols, const Word* src, Word* dst) {
  const int64_t row_tiles = (rows + kTile - 1) / kTile, col_tiles = (cols + kTile - 1) / kTile;
  TTQ_CHECK(col_tiles <= 0x7fffffff,
            "permute_layout (CUDA): an image of " << rows << " x " << cols << " exceeds the grid");
  const int64_t per_image = rows * cols;
  for (int64_t b = 0; b < n; b += kMaxGridYZ) {
    const int64_t count = std::min(kMaxGridYZ, n - b);
    for (int64_t t = 0; t < row_tiles; t += kMaxGridYZ) {
      const int64_t tiles = std::min(kMaxGridYZ, row_tiles - t);
      const dim3 grid(static_cast<unsigned>(col_tiles), static_cast<unsigned>(tiles), static_cast<unsigned>(count));
      transpose_kernel<Word><<<grid, dim3(kTile, kRowsPerPass), 0, cudaStreamPerThread>>>(
          rows, cols, t, src + b * per_image, dst + b * per_image);
      CUDA_CHECK(cudaGetLastError());
    }
  }
}

}  // namespace

void permute_layout(int64_t n, int64_t c, int64_t hw, bool to_channels_last, size_t elem_size, const void* src,
                    void* dst) {
  TTQ_CHECK(n >= 0 && c >= 0 && hw >= 0, "permute_layout (CUDA): negative size " << n << "x" << c << "x" << hw);
  if (n == 0 || c == 0 || hw == 0) return;
  // NCHW -> NHWC transposes each image's c x hw matrix; NHWC -> NCHW its hw x c matrix.
  const int64_t rows = to_channels_last ? c : hw, cols = to_channels_last ? hw : c;
  switch (elem_size) {
    case 2:
      transpose(n, rows, cols, static_cast<const uint16_t*>(src), static_cast<uint16_t*>(dst));
      break;
    case 4:
      transpose(n, rows, cols, static_cast<const uint32_t*>(src), static_cast<uint32_t*>(dst));
      break;
    default:
      TTQ_FAIL("permute_layout (CUDA): elements of " << elem_size << " bytes (2 or 4 only)");
  }
}

}  // namespace ttq::cuda
