// Convolution, pooling and batch norm on CUDA through cuDNN's legacy (descriptor) API, which
// cuDNN 9 still ships. Semantics are those of the reference kernels (kernels/cpu/ops_ref.h).
//
// Asymmetric padding. cuDNN pads symmetrically. Each padding is split into the symmetric part
// min(before, after), which cuDNN applies, and the remainder (at most one side per axis), which
// a helper kernel applies by copying the input into a larger temporary (zeros for convolution
// and average pooling, -inf for max pooling). Backward-data results on that larger geometry are
// cropped back. Average pooling that excludes padding from the divisor runs, when padding is
// asymmetric, as include-padding pooling (divisor kh*kw) followed by a per-output rescale by
// kh*kw / (window positions inside the input); its gradient is rescaled the same way first.
//
// Max-pool gradient. cuDNN does not document which of several equal maxima receives the
// gradient; the reference routes it to the first one. The gradient therefore comes from two
// kernels (kernels/cuda/dnn_helpers.cu maxpool_backward): each window's first maximum, exactly as
// the reference finds it, then a gather per input element over the windows containing it, with no
// atomics; cuDNN does the forward pass (CUDNN_POOLING_MAX_DETERMINISTIC).
//
// Algorithms and determinism. For each convolution geometry and direction, the candidates are
// cuDNN's heuristic ranking (cudnnGetConvolution*Algorithm_v7: no benchmarking, so the choice is
// the same in every run of the program), keeping only those reported CUDNN_DETERMINISTIC, with
// status success, a workspace under kMaxWorkspace, and never the algorithms documented as
// non-deterministic (backward data ALGO_0, backward filter ALGO_0/ALGO_3); a universally
// supported deterministic fallback comes last. A candidate is an (algorithm, math type) pair, as
// the heuristic returns it, and the descriptor is set to that math type before its workspace query
// and its launch. f32 keeps only CUDNN_FMA_MATH candidates (no TF32 tensor-core down-conversion,
// so fp32 results match the CPU closely). The list is cached per device and geometry; the first
// candidate whose workspace query and launch succeed is used. A candidate that fails with a
// bad-parameter, not-supported or internal status is skipped (an execution failure too, while the
// CUDA stream is still healthy); a status that says cuDNN itself cannot run here (a sub-library
// that does not load, a driver, runtime or architecture mismatch) is an error at once. Only
// candidates that failed for good (not supported, a shape not taken) are dropped from the cache;
// one whose failure belongs to the call (a pointer) or the moment (an allocation inside cuDNN) is
// tried again at the next call. A heuristic
// query that refuses the geometry leaves the fallback alone. When no candidate works: a
// channels-last geometry runs on NCHW copies, a bf16 one on f32 copies (widened, the f32
// convolution, rounded back: what the CPU path computes), each said once on stderr; an f32 NCHW
// one is an error. Pooling forward,
// average-pool backward, bias gradient and batch norm (CUDNN_BATCHNORM_SPATIAL) are
// deterministic in cuDNN.
//
// Workspace: the calling thread's DeviceContext (kernels/cuda/context.h). Everything is enqueued
// on cudaStreamPerThread; temporaries are freed stream-ordered.
//
// bf16 convolutions (precision "bf16"). The same code, parametrised by the element type: x, w,
// y (dx, dw, dy) descriptors CUDNN_DATA_BFLOAT16 with an f32 convolution compute type (cuDNN's
// PSEUDO_BFLOAT16 configuration: f32 accumulation, each output rounded to bf16 once) and
// CUDNN_TENSOR_OP_MATH (bf16 inputs lose nothing on tensor cores; f32 keeps CUDNN_FMA_MATH). The
// algorithm cache key includes the data type; padding, cropping (kernels/cuda/dnn_helpers.h,
// templates on the element type), ranking and workspace logic are shared. The f32 bias is added
// to the bf16 output by a kernel (y = round(y + bias[c]), so a biased output is rounded twice),
// and the f32 bias gradient is a per-channel sum of the bf16 dy in a fixed order (a kernel), not
// cudnnAddTensor / cudnnConvolutionBackwardBias. bf16 pooling and batch norm do not use cuDNN
// (kernels/cuda/ops_bf16.cu).
//
// Channels-last (Conv2dShape / BatchNormShape channels_last, set by kernels/ops.cpp). A
// convolution describes x and y as CUDNN_TENSOR_NHWC and its filter as NHWC (K x R x S x C/g, the
// layout cuDNN's NHWC tensor-core kernels take): the OIHW weights are permuted into a stream-ordered
// temporary first (forward, backward data), and the weight gradient is computed there and permuted
// back (backward filter). kernels/ops.cpp sends only symmetric padding and no bias this way. The
// layout is part of the algorithm cache key. A geometry for which cuDNN offers no deterministic
// NHWC algorithm (every candidate fails) runs on NCHW copies instead (permuted in, the NCHW
// convolution, permuted out), as kernels/ops.cpp does for the geometries it keeps. Batch
// norm describes x as N x C x S x 1 in CUDNN_TENSOR_NHWC, and falls back the same way when cuDNN
// refuses that layout (a not-supported or bad-parameter status).
#ifdef TTQ_HAVE_CUDNN

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <type_traits>
#include <vector>

#include "kernels/cuda/context.h"
#include "kernels/cuda/conv_algos.h"
#include "kernels/cuda/dnn_helpers.h"
#include "kernels/cuda/ops_cuda.h"

namespace ttq::cuda {
namespace {

using conv_algos::ConvAlgo;
using conv_algos::first_working;
using conv_algos::keep_deterministic;
using conv_algos::Outcome;

const float kOne = 1.0f;
const float kZero = 0.0f;

// Candidates needing more workspace than this are skipped.
constexpr size_t kMaxWorkspace = size_t{1} << 30;

// ---- descriptors (RAII) ---------------------------------------------------------------------

// One cuDNN descriptor, created and destroyed with it.
template <typename T, cudnnStatus_t (*Create)(T*), cudnnStatus_t (*Destroy)(T)>
class Descriptor {
 public:
  Descriptor() { CUDNN_CHECK(Create(&d_)); }
  ~Descriptor() { CUDNN_CHECK_NOTHROW(Destroy(d_)); }
  Descriptor(const Descriptor&) = delete;
  Descriptor& operator=(const Descriptor&) = delete;
  T get() const { return d_; }

 private:
  T d_ = nullptr;
};

using FilterDesc = Descriptor<cudnnFilterDescriptor_t, cudnnCreateFilterDescriptor, cudnnDestroyFilterDescriptor>;
using ConvDesc =
    Descriptor<cudnnConvolutionDescriptor_t, cudnnCreateConvolutionDescriptor, cudnnDestroyConvolutionDescriptor>;
using PoolDesc = Descriptor<cudnnPoolingDescriptor_t, cudnnCreatePoolingDescriptor, cudnnDestroyPoolingDescriptor>;

class TensorDesc
    : public Descriptor<cudnnTensorDescriptor_t, cudnnCreateTensorDescriptor, cudnnDestroyTensorDescriptor> {
 public:
  void set(int64_t n, int64_t c, int64_t h, int64_t w, cudnnDataType_t dtype = CUDNN_DATA_FLOAT,
           cudnnTensorFormat_t format = CUDNN_TENSOR_NCHW) {
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(get(), format, dtype, to_int(n, "n"), to_int(c, "channels"),
                                           to_int(h, "height"), to_int(w, "width")));
  }
};

// cuDNN's name for an element type.
template <class T> constexpr cudnnDataType_t cudnn_type();
template <> constexpr cudnnDataType_t cudnn_type<float>() { return CUDNN_DATA_FLOAT; }
template <> constexpr cudnnDataType_t cudnn_type<bf16>() { return CUDNN_DATA_BFLOAT16; }

// ---- padding split --------------------------------------------------------------------------

// sym_h/sym_w: the symmetric padding cuDNN applies; top/bottom/left/right: the rest, applied
// explicitly (at most one of top/bottom and one of left/right is non-zero).
struct PadSplit {
  int64_t sym_h = 0, sym_w = 0, top = 0, bottom = 0, left = 0, right = 0;
  bool explicit_pad() const { return top || bottom || left || right; }
};

PadSplit split_padding(int64_t pad_t, int64_t pad_l, int64_t pad_b, int64_t pad_r) {
  PadSplit p;
  p.sym_h = std::min(pad_t, pad_b);
  p.sym_w = std::min(pad_l, pad_r);
  p.top = pad_t - p.sym_h;
  p.bottom = pad_b - p.sym_h;
  p.left = pad_l - p.sym_w;
  p.right = pad_r - p.sym_w;
  return p;
}

size_t f32_bytes(int64_t count) { return static_cast<size_t>(count) * sizeof(float); }
template <class T> size_t bytes_of(int64_t count) { return static_cast<size_t>(count) * sizeof(T); }

// ---- convolution ----------------------------------------------------------------------------

// cuDNN's view of a convolution: input padded explicitly to hp x wp, symmetric padding after.
// dtype: the data type of x, w and y (CUDNN_DATA_FLOAT or CUDNN_DATA_BFLOAT16); the convolution
// itself always computes in f32.
struct ConvSetup {
  cudnnDataType_t dtype = CUDNN_DATA_FLOAT;
  PadSplit pad;
  int64_t hp = 0, wp = 0;
  TensorDesc x, y, bias;
  FilterDesc w;
  ConvDesc conv;

  ConvSetup(const Conv2dShape& s, cudnnDataType_t dt) : dtype(dt) {
    pad = split_padding(s.pad_t, s.pad_l, s.pad_b, s.pad_r);
    TTQ_CHECK(!s.channels_last || !pad.explicit_pad(),
              "cuDNN convolution: channels-last with asymmetric padding " << s.str() << " (runs via NCHW copies)");
    hp = s.h + pad.top + pad.bottom;
    wp = s.w + pad.left + pad.right;
    const cudnnTensorFormat_t format = s.channels_last ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW;
    x.set(s.n, s.c_in, hp, wp, dtype, format);
    y.set(s.n, s.c_out, s.out_h(), s.out_w(), dtype, format);
    bias.set(1, s.c_out, 1, 1);  // f32 (used by the f32 path only)
    CUDNN_CHECK(cudnnSetFilter4dDescriptor(w.get(), dtype, format, to_int(s.c_out, "c_out"),
                                           to_int(s.c_in_per_group(), "c_in/groups"), to_int(s.kh, "kh"),
                                           to_int(s.kw, "kw")));
    // Compute type f32 for both: f32 data is the FLOAT configuration, bf16 data PSEUDO_BFLOAT16.
    CUDNN_CHECK(cudnnSetConvolution2dDescriptor(conv.get(), to_int(pad.sym_h, "pad_h"), to_int(pad.sym_w, "pad_w"),
                                                to_int(s.stride_h, "stride_h"), to_int(s.stride_w, "stride_w"), 1, 1,
                                                CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    CUDNN_CHECK(cudnnSetConvolutionGroupCount(conv.get(), to_int(s.groups, "groups")));
    // f32: FMA only, no TF32 (CUDNN_DEFAULT_MATH would allow it on Ampere and later). bf16: tensor
    // cores, which take bf16 inputs as they are and accumulate in f32.
    CUDNN_CHECK(cudnnSetConvolutionMathType(conv.get(),
                                            dtype == CUDNN_DATA_BFLOAT16 ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH));
    int on = 0, oc = 0, oh = 0, ow = 0;
    CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(conv.get(), x.get(), w.get(), &on, &oc, &oh, &ow));
    TTQ_CHECK(on == s.n && oc == s.c_out && oh == s.out_h() && ow == s.out_w(),
              "cuDNN convolution output " << on << "x" << oc << "x" << oh << "x" << ow << " differs from the expected "
                                          << s.n << "x" << s.c_out << "x" << s.out_h() << "x" << s.out_w()
                                          << " for " << s.str());
  }
};

enum class ConvDir : int64_t { Forward = 0, BackwardData = 1, BackwardFilter = 2 };
const char* dir_name(ConvDir d) {
  switch (d) {
    case ConvDir::Forward: return "cudnnConvolutionForward";
    case ConvDir::BackwardData: return "cudnnConvolutionBackwardData";
    default: return "cudnnConvolutionBackwardFilter";
  }
}

using ConvKey = std::array<int64_t, 16>;

ConvKey conv_key(ConvDir dir, int device, const Conv2dShape& s, const ConvSetup& cs) {
  return {static_cast<int64_t>(dir), device, static_cast<int64_t>(cs.dtype), s.n, s.c_in, cs.hp, cs.wp, s.c_out,
          s.kh, s.kw, s.stride_h, s.stride_w, cs.pad.sym_h, cs.pad.sym_w, s.groups, s.channels_last ? 1 : 0};
}

std::mutex g_algo_mu;
std::map<ConvKey, std::vector<ConvAlgo>> g_algo_cache;
std::map<ConvKey, cudnnStatus_t> g_no_algo;  // geometries no candidate runs (the last status)
std::set<ConvKey> g_noted;                    // geometries whose fallback was said on stderr
std::atomic<bool> g_refuse_for_testing{false};
std::atomic<int64_t> g_fallbacks{0};  // convolution directions run on copies

// A heuristic query's status: success; a refusal (the geometry is not supported or a parameter is
// not taken), after which only the fallback candidate is tried; anything else is an error.
bool heuristic_answered(cudnnStatus_t st, const char* call) {
  if (st == CUDNN_STATUS_SUCCESS) return true;
  TTQ_CHECK(!conv_algos::environment_error(st) && conv_algos::permanent_failure(st),
            call << " failed: " << cudnnGetErrorString(st) << " (" << static_cast<int>(st) << ") "
                 << detail::cudnn_last_error());
  return false;
}

// cuDNN's heuristic ranking, deterministic algorithms only, then the fallback.
std::vector<ConvAlgo> rank_algorithms(ConvDir dir, cudnnHandle_t h, const ConvSetup& cs) {
  std::vector<ConvAlgo> out;
  int max_count = 0, returned = 0;
  switch (dir) {
    case ConvDir::Forward: {
      CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithmMaxCount(h, &max_count));
      std::vector<cudnnConvolutionFwdAlgoPerf_t> perf(static_cast<size_t>(std::max(max_count, 1)));
      if (!heuristic_answered(cudnnGetConvolutionForwardAlgorithm_v7(h, cs.x.get(), cs.w.get(), cs.conv.get(),
                                                                     cs.y.get(), max_count, &returned, perf.data()),
                              "cudnnGetConvolutionForwardAlgorithm_v7"))
        returned = 0;
      keep_deterministic(perf, returned, {}, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, cs.dtype, kMaxWorkspace,
                         out);
      break;
    }
    case ConvDir::BackwardData: {
      CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithmMaxCount(h, &max_count));
      std::vector<cudnnConvolutionBwdDataAlgoPerf_t> perf(static_cast<size_t>(std::max(max_count, 1)));
      if (!heuristic_answered(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, cs.w.get(), cs.y.get(), cs.conv.get(),
                                                                          cs.x.get(), max_count, &returned,
                                                                          perf.data()),
                              "cudnnGetConvolutionBackwardDataAlgorithm_v7"))
        returned = 0;
      keep_deterministic(perf, returned, {CUDNN_CONVOLUTION_BWD_DATA_ALGO_0}, CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
                         cs.dtype, kMaxWorkspace, out);
      break;
    }
    case ConvDir::BackwardFilter: {
      CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(h, &max_count));
      std::vector<cudnnConvolutionBwdFilterAlgoPerf_t> perf(static_cast<size_t>(std::max(max_count, 1)));
      if (!heuristic_answered(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, cs.x.get(), cs.y.get(),
                                                                            cs.conv.get(), cs.w.get(), max_count,
                                                                            &returned, perf.data()),
                              "cudnnGetConvolutionBackwardFilterAlgorithm_v7"))
        returned = 0;
      keep_deterministic(perf, returned, {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3},
                         CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1, cs.dtype, kMaxWorkspace, out);
      break;
    }
  }
  return out;
}

// Thrown by run_convolution for a geometry that no candidate runs, before anything was written to
// the op's outputs; the public entry points then run copies (NCHW for channels-last, f32 for bf16).
struct NoAlgorithm {
  cudnnStatus_t last;
};

// Says once per geometry and direction that a convolution runs on copies (a slower path).
void note_fallback(ConvDir dir, const Conv2dShape& s, const char* dtype, cudnnStatus_t last, const char* instead) {
  std::fprintf(stderr, "ttq: %s: no deterministic cuDNN algorithm for %s %s (last status %s); running on %s\n",
               dir_name(dir), dtype, s.str().c_str(), cudnnGetErrorString(last), instead);
}

// Runs one convolution direction with the first workable cached candidate.
// workspace_size(algo, &bytes) and run(algo, workspace, bytes) return cuDNN statuses.
template <class WorkspaceSize, class Run>
void run_convolution(ConvDir dir, const Conv2dShape& s, const ConvSetup& cs, DeviceContext& ctx,
                     WorkspaceSize workspace_size, Run run) {
  if (g_refuse_for_testing && (s.channels_last || cs.dtype == CUDNN_DATA_BFLOAT16))
    throw NoAlgorithm{CUDNN_STATUS_NOT_SUPPORTED};
  const ConvKey key = conv_key(dir, ctx.device(), s, cs);
  std::vector<ConvAlgo> candidates;
  {
    std::lock_guard<std::mutex> lock(g_algo_mu);
    if (auto none = g_no_algo.find(key); none != g_no_algo.end()) throw NoAlgorithm{none->second};
    auto it = g_algo_cache.find(key);
    if (it != g_algo_cache.end()) candidates = it->second;
  }
  if (candidates.empty()) {
    candidates = rank_algorithms(dir, ctx.cudnn(), cs);
    std::lock_guard<std::mutex> lock(g_algo_mu);
    g_algo_cache[key] = candidates;
  }
  const Outcome o = first_working(
      candidates,
      [&](const ConvAlgo& c) {
        // The descriptor is this call's (ConvSetup): setting its math type touches no other call.
        cudnnStatus_t st = cudnnSetConvolutionMathType(cs.conv.get(), c.math);
        size_t bytes = 0;
        if (st == CUDNN_STATUS_SUCCESS) st = workspace_size(c.algo, &bytes);
        if (st == CUDNN_STATUS_SUCCESS && bytes > kMaxWorkspace) return CUDNN_STATUS_NOT_SUPPORTED;
        if (st == CUDNN_STATUS_SUCCESS) st = run(c.algo, ctx.workspace(bytes), bytes);
        // A launch that failed inside cuDNN leaves a (non-sticky) CUDA error behind, which the next
        // checked launch would report as its own: cleared here (a sticky one stays, and the stream
        // query below then sees it).
        if (st != CUDNN_STATUS_SUCCESS) (void)cudaGetLastError();
        return st;
      },
      [] {
        const cudaError_t e = cudaStreamQuery(cudaStreamPerThread);
        return e == cudaSuccess || e == cudaErrorNotReady;
      });
  if (o.fatal) {
    const ConvAlgo& c = candidates[o.index];
    TTQ_FAIL(dir_name(dir) << " (algorithm " << c.algo << ", math type " << static_cast<int>(c.math)
                           << ") failed: " << cudnnGetErrorString(o.status) << " (" << static_cast<int>(o.status)
                           << ") " << detail::cudnn_last_error() << " for " << s.str());
  }
  if (!o.failed_for_good.empty()) {  // forget the candidates that never work here
    std::lock_guard<std::mutex> lock(g_algo_mu);
    g_algo_cache[key] = conv_algos::without_failed(candidates, o);
  }
  if (o.index < candidates.size()) return;
  const cudnnStatus_t last = o.status;
  bool first_time = true;
  {
    std::lock_guard<std::mutex> lock(g_algo_mu);
    // Failed for good: marked, never tried again. Else (a failure of the moment, e.g. an
    // allocation inside cuDNN) the next call tries the candidates again; said once either way.
    if (o.permanent) g_no_algo[key] = last;
    first_time = g_noted.insert(key).second;
  }
  const bool bf16 = cs.dtype == CUDNN_DATA_BFLOAT16;
  if ((s.channels_last || bf16) && first_time)
    note_fallback(dir, s, bf16 ? "bf16" : "f32", last, s.channels_last ? "NCHW copies" : "f32 copies");
  throw NoAlgorithm{last};
}

// ---- pooling --------------------------------------------------------------------------------

helpers::PoolGeom pool_geom(const Pool2dShape& s) { return helpers::pool_geom(s, s.out_h(), s.out_w()); }

struct PoolSetup {
  PadSplit pad;
  int64_t hp = 0, wp = 0;
  bool rescale = false;  // include-padding pooling + per-output divisor fix (see the file comment)
  float pad_value = 0.0f;
  TensorDesc x, y;
  PoolDesc pool;

  PoolSetup(PoolKind kind, const Pool2dShape& s) {
    pad = split_padding(s.pad_t, s.pad_l, s.pad_b, s.pad_r);
    hp = s.h + pad.top + pad.bottom;
    wp = s.w + pad.left + pad.right;
    cudnnPoolingMode_t mode;
    if (kind == PoolKind::Max) {
      mode = CUDNN_POOLING_MAX_DETERMINISTIC;
      pad_value = -std::numeric_limits<float>::infinity();
    } else if (s.count_include_pad) {
      mode = CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING;
    } else if (pad.explicit_pad()) {
      mode = CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING;
      rescale = true;
    } else {
      mode = CUDNN_POOLING_AVERAGE_COUNT_EXCLUDE_PADDING;
    }
    x.set(s.n, s.c, hp, wp);
    y.set(s.n, s.c, s.out_h(), s.out_w());
    CUDNN_CHECK(cudnnSetPooling2dDescriptor(pool.get(), mode, CUDNN_PROPAGATE_NAN, to_int(s.kh, "kh"),
                                            to_int(s.kw, "kw"), to_int(pad.sym_h, "pad_h"), to_int(pad.sym_w, "pad_w"),
                                            to_int(s.stride_h, "stride_h"), to_int(s.stride_w, "stride_w")));
    int on = 0, oc = 0, oh = 0, ow = 0;
    CUDNN_CHECK(cudnnGetPooling2dForwardOutputDim(pool.get(), x.get(), &on, &oc, &oh, &ow));
    TTQ_CHECK(on == s.n && oc == s.c && oh == s.out_h() && ow == s.out_w(),
              "cuDNN pooling output " << on << "x" << oc << "x" << oh << "x" << ow << " differs from the expected "
                                      << s.n << "x" << s.c << "x" << s.out_h() << "x" << s.out_w() << " for "
                                      << s.str());
  }

  // x itself, or x copied into buf with the explicit padding.
  const float* input(const Pool2dShape& s, const float* xsrc, DeviceBuffer& buf) const {
    if (!pad.explicit_pad()) return xsrc;
    buf = DeviceBuffer(f32_bytes(s.n * s.c * hp * wp));
    helpers::pad_planes(s.n * s.c, s.h, s.w, pad.top, pad.left, hp, wp, pad_value, xsrc, buf.f32());
    return buf.f32();
  }
};

// ---- batch norm -----------------------------------------------------------------------------

// Whether cuDNN refused a channels-last batch norm for its layout (not supported, or the generic
// bad-parameter status; not a null or misaligned pointer), rather than being unable to run at all:
// then NCHW copies run.
bool nhwc_refused(cudnnStatus_t st) {
  return !conv_algos::environment_error(st) &&
         (conv_algos::category(st) == CUDNN_STATUS_NOT_SUPPORTED || st == CUDNN_STATUS_BAD_PARAM);
}

// x as N x C x S x 1 (S = H*W, or 1 for 1-d batch norm); per-channel tensors as 1 x C x 1 x 1.
struct BnSetup {
  TensorDesc x, param;
  explicit BnSetup(const BatchNormShape& s) {
    x.set(s.n, s.c, s.s, 1, CUDNN_DATA_FLOAT, s.channels_last ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW);
    param.set(1, s.c, 1, 1);
  }
};



}  // namespace

// ---- convolution ----------------------------------------------------------------------------
// One template per direction for f32 and bf16 (T); the public overloads below forward to them.

namespace {
// The weights cuDNN takes: w itself (NCHW), or w permuted to K x R x S x C/g into storage
// (channels-last).
template <class T>
const T* filter_input(const Conv2dShape& s, const T* w, DeviceBuffer& storage) {
  if (!s.channels_last) return w;
  storage = DeviceBuffer(bytes_of<T>(s.weight_numel()));
  permute_layout(s.c_out, s.c_in_per_group(), s.kh * s.kw, true, sizeof(T), w, storage.get());
  return static_cast<const T*>(storage.get());
}

// The input with the explicit part of the padding applied (x itself when there is none).
template <class T>
const T* padded_input(const Conv2dShape& s, const ConvSetup& cs, const T* x, DeviceBuffer& storage) {
  if (!cs.pad.explicit_pad()) return x;
  storage = DeviceBuffer(bytes_of<T>(s.n * s.c_in * cs.hp * cs.wp));
  T* out = static_cast<T*>(storage.get());
  helpers::pad_planes(s.n * s.c_in, s.h, s.w, cs.pad.top, cs.pad.left, cs.hp, cs.wp, 0.0f, x, out);
  return out;
}

template <class T>
void conv2d_forward_impl(const Conv2dShape& s, const T* x, const T* w, const float* bias, T* y) {
  s.validate("conv2d_forward (CUDA)");
  DeviceContext& ctx = DeviceContext::current();
  cudnnHandle_t h = ctx.cudnn();
  const ConvSetup cs(s, cudnn_type<T>());
  TTQ_CHECK(!s.channels_last || !bias, "conv2d_forward (CUDA): channels-last with a bias (runs via NCHW copies)");
  DeviceBuffer xpad, wperm;
  const T* xin = padded_input(s, cs, x, xpad);
  const T* win = filter_input(s, w, wperm);
  run_convolution(
      ConvDir::Forward, s, cs, ctx,
      [&](int algo, size_t* bytes) {
        return cudnnGetConvolutionForwardWorkspaceSize(h, cs.x.get(), cs.w.get(), cs.conv.get(), cs.y.get(),
                                                       static_cast<cudnnConvolutionFwdAlgo_t>(algo), bytes);
      },
      [&](int algo, void* ws, size_t bytes) {
        return cudnnConvolutionForward(h, &kOne, cs.x.get(), xin, cs.w.get(), win, cs.conv.get(),
                                       static_cast<cudnnConvolutionFwdAlgo_t>(algo), ws, bytes, &kZero, cs.y.get(), y);
      });
  if (!bias) return;
  if constexpr (std::is_same_v<T, float>)
    CUDNN_CHECK(cudnnAddTensor(h, &kOne, cs.bias.get(), bias, &kOne, cs.y.get(), y));
  else
    helpers::add_channel_bias(s.n, s.c_out, s.out_h() * s.out_w(), bias, y);
}

template <class T>
void conv2d_backward_data_impl(const Conv2dShape& s, const T* dy, const T* w, T* dx) {
  s.validate("conv2d_backward_data (CUDA)");
  DeviceContext& ctx = DeviceContext::current();
  cudnnHandle_t h = ctx.cudnn();
  const ConvSetup cs(s, cudnn_type<T>());
  DeviceBuffer dxpad, wperm;
  const T* win = filter_input(s, w, wperm);
  T* dxout = dx;
  if (cs.pad.explicit_pad()) {
    dxpad = DeviceBuffer(bytes_of<T>(s.n * s.c_in * cs.hp * cs.wp));
    dxout = static_cast<T*>(dxpad.get());
  }
  run_convolution(
      ConvDir::BackwardData, s, cs, ctx,
      [&](int algo, size_t* bytes) {
        return cudnnGetConvolutionBackwardDataWorkspaceSize(h, cs.w.get(), cs.y.get(), cs.conv.get(), cs.x.get(),
                                                            static_cast<cudnnConvolutionBwdDataAlgo_t>(algo), bytes);
      },
      [&](int algo, void* ws, size_t bytes) {
        return cudnnConvolutionBackwardData(h, &kOne, cs.w.get(), win, cs.y.get(), dy, cs.conv.get(),
                                            static_cast<cudnnConvolutionBwdDataAlgo_t>(algo), ws, bytes, &kZero,
                                            cs.x.get(), dxout);
      });
  if (cs.pad.explicit_pad())
    helpers::crop_planes(s.n * s.c_in, cs.hp, cs.wp, cs.pad.top, cs.pad.left, s.h, s.w,
                         static_cast<const T*>(dxout), dx);
}

template <class T>
void conv2d_backward_weights_impl(const Conv2dShape& s, const T* x, const T* dy, T* dw, float* dbias) {
  s.validate("conv2d_backward_weights (CUDA)");
  DeviceContext& ctx = DeviceContext::current();
  cudnnHandle_t h = ctx.cudnn();
  const ConvSetup cs(s, cudnn_type<T>());
  TTQ_CHECK(!s.channels_last || !dbias,
            "conv2d_backward_weights (CUDA): channels-last with a bias (runs via NCHW copies)");
  DeviceBuffer xpad, dwperm;
  const T* xin = padded_input(s, cs, x, xpad);
  T* dwout = dw;  // channels-last: K x R x S x C/g, permuted into dw afterwards
  if (s.channels_last) {
    dwperm = DeviceBuffer(bytes_of<T>(s.weight_numel()));
    dwout = static_cast<T*>(dwperm.get());
  }
  run_convolution(
      ConvDir::BackwardFilter, s, cs, ctx,
      [&](int algo, size_t* bytes) {
        return cudnnGetConvolutionBackwardFilterWorkspaceSize(h, cs.x.get(), cs.y.get(), cs.conv.get(), cs.w.get(),
                                                              static_cast<cudnnConvolutionBwdFilterAlgo_t>(algo),
                                                              bytes);
      },
      [&](int algo, void* ws, size_t bytes) {
        return cudnnConvolutionBackwardFilter(h, &kOne, cs.x.get(), xin, cs.y.get(), dy, cs.conv.get(),
                                              static_cast<cudnnConvolutionBwdFilterAlgo_t>(algo), ws, bytes, &kZero,
                                              cs.w.get(), dwout);
      });
  if (s.channels_last) permute_layout(s.c_out, s.c_in_per_group(), s.kh * s.kw, false, sizeof(T), dwout, dw);
  if (!dbias) return;
  if constexpr (std::is_same_v<T, float>)
    CUDNN_CHECK(cudnnConvolutionBackwardBias(h, &kOne, cs.y.get(), dy, &kZero, cs.bias.get(), dbias));
  else  // f32 sums of the bf16 gradient, fixed order
    helpers::channel_sums(s.n, s.c_out, s.out_h() * s.out_w(), dy, dbias);
}
}  // namespace

// ---- channels-last on NCHW copies (no NHWC algorithm) -------------------------------------------
namespace {
// A stream-ordered NCHW copy of a channels-last activation of n x c x hw (or the reverse).
template <class T>
DeviceBuffer permuted(int64_t n, int64_t c, int64_t hw, bool to_channels_last, const T* src) {
  DeviceBuffer out(bytes_of<T>(n * c * hw));
  permute_layout(n, c, hw, to_channels_last, sizeof(T), src, out.get());
  return out;
}
// The same geometry in NCHW (Conv2dShape, BatchNormShape).
template <class Shape>
Shape nchw(const Shape& s) {
  Shape c = s;
  c.channels_last = false;
  return c;
}

void check_status(cudnnStatus_t st, const char* call) {
  TTQ_CHECK(st == CUDNN_STATUS_SUCCESS, call << " failed: " << cudnnGetErrorString(st) << " (" << static_cast<int>(st)
                                             << ") " << detail::cudnn_last_error());
}

// An f32 copy of bf16 data.
DeviceBuffer widened(int64_t count, const bf16* src) {
  DeviceBuffer out(f32_bytes(count));
  cast(count, src, out.f32());
  return out;
}

[[noreturn]] void no_algorithm(ConvDir dir, const Conv2dShape& s, cudnnStatus_t last) {
  TTQ_FAIL(dir_name(dir) << ": no deterministic cuDNN algorithm ran " << s.str() << " (last status "
                         << cudnnGetErrorString(last) << " (" << static_cast<int>(last) << "))");
}

// Each entry point: the convolution as asked; when no candidate runs it, channels-last on NCHW
// copies (which may go on to f32), bf16 on f32 copies, and f32 NCHW is an error.

// Runs one direction (an _impl call): true when a cuDNN candidate ran it. Otherwise counts the
// fallback the caller then takes, or fails for an f32 NCHW geometry, which has none.
template <class T, class Impl>
bool ran_natively(ConvDir dir, const Conv2dShape& s, Impl impl) {
  try {
    impl();
    return true;
  } catch (const NoAlgorithm& e) {
    if (!s.channels_last && !std::is_same_v<T, bf16>) no_algorithm(dir, s, e.last);
  }
  ++g_fallbacks;
  return false;
}

template <class T>
void conv2d_forward_any(const Conv2dShape& s, const T* x, const T* w, const float* bias, T* y) {
  if (ran_natively<T>(ConvDir::Forward, s, [&] { conv2d_forward_impl(s, x, w, bias, y); })) return;
  if (s.channels_last) {
    const int64_t ohw = s.out_h() * s.out_w();
    const DeviceBuffer xc = permuted(s.n, s.c_in, s.h * s.w, false, x);
    DeviceBuffer yc(bytes_of<T>(s.out_numel()));
    conv2d_forward_any(nchw(s), static_cast<const T*>(xc.get()), w, bias, static_cast<T*>(yc.get()));
    permute_layout(s.n, s.c_out, ohw, true, sizeof(T), yc.get(), y);
  } else if constexpr (std::is_same_v<T, bf16>) {
    const DeviceBuffer xf = widened(s.in_numel(), x), wf = widened(s.weight_numel(), w);
    DeviceBuffer yf(f32_bytes(s.out_numel()));
    conv2d_forward_any(s, xf.f32(), wf.f32(), nullptr, yf.f32());
    cast(s.out_numel(), yf.f32(), y);
    if (bias) helpers::add_channel_bias(s.n, s.c_out, s.out_h() * s.out_w(), bias, y);  // as the bf16 path
  }
}

template <class T>
void conv2d_backward_data_any(const Conv2dShape& s, const T* dy, const T* w, T* dx) {
  if (ran_natively<T>(ConvDir::BackwardData, s, [&] { conv2d_backward_data_impl(s, dy, w, dx); })) return;
  if (s.channels_last) {
    const DeviceBuffer dyc = permuted(s.n, s.c_out, s.out_h() * s.out_w(), false, dy);
    DeviceBuffer dxc(bytes_of<T>(s.in_numel()));
    conv2d_backward_data_any(nchw(s), static_cast<const T*>(dyc.get()), w, static_cast<T*>(dxc.get()));
    permute_layout(s.n, s.c_in, s.h * s.w, true, sizeof(T), dxc.get(), dx);
  } else if constexpr (std::is_same_v<T, bf16>) {
    const DeviceBuffer dyf = widened(s.out_numel(), dy), wf = widened(s.weight_numel(), w);
    DeviceBuffer dxf(f32_bytes(s.in_numel()));
    conv2d_backward_data_any(s, dyf.f32(), wf.f32(), dxf.f32());
    cast(s.in_numel(), dxf.f32(), dx);
  }
}

template <class T>
void conv2d_backward_weights_any(const Conv2dShape& s, const T* x, const T* dy, T* dw, float* dbias) {
  if (ran_natively<T>(ConvDir::BackwardFilter, s, [&] { conv2d_backward_weights_impl(s, x, dy, dw, dbias); }))
    return;
  if (s.channels_last) {
    const DeviceBuffer xc = permuted(s.n, s.c_in, s.h * s.w, false, x);
    const DeviceBuffer dyc = permuted(s.n, s.c_out, s.out_h() * s.out_w(), false, dy);
    conv2d_backward_weights_any(nchw(s), static_cast<const T*>(xc.get()), static_cast<const T*>(dyc.get()), dw,
                                dbias);
  } else if constexpr (std::is_same_v<T, bf16>) {
    // The bias gradient stays the bf16 path's fixed-order sum of the bf16 dy.
    const DeviceBuffer xf = widened(s.in_numel(), x), dyf = widened(s.out_numel(), dy);
    DeviceBuffer dwf(f32_bytes(s.weight_numel()));
    conv2d_backward_weights_any(s, xf.f32(), dyf.f32(), dwf.f32(), nullptr);
    cast(s.weight_numel(), dwf.f32(), dw);
    if (dbias) helpers::channel_sums(s.n, s.c_out, s.out_h() * s.out_w(), dy, dbias);
  }
}
}  // namespace

void refuse_conv_algorithms_for_testing(bool on) { g_refuse_for_testing = on; }
int64_t conv_fallbacks_for_testing() { return g_fallbacks; }

void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y) {
  conv2d_forward_any(s, x, w, bias, y);
}
void conv2d_forward(const Conv2dShape& s, const bf16* x, const bf16* w, const float* bias, bf16* y) {
  conv2d_forward_any(s, x, w, bias, y);
}

void conv2d_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx) {
  conv2d_backward_data_any(s, dy, w, dx);
}
void conv2d_backward_data(const Conv2dShape& s, const bf16* dy, const bf16* w, bf16* dx) {
  conv2d_backward_data_any(s, dy, w, dx);
}

void conv2d_backward_weights(const Conv2dShape& s, const float* x, const float* dy, float* dw, float* dbias) {
  conv2d_backward_weights_any(s, x, dy, dw, dbias);
}
void conv2d_backward_weights(const Conv2dShape& s, const bf16* x, const bf16* dy, bf16* dw, float* dbias) {
  conv2d_backward_weights_any(s, x, dy, dw, dbias);
}

// ---- pooling --------------------------------------------------------------------------------

void pool2d_forward(PoolKind kind, const Pool2dShape& s, const float* x, float* y) {
  s.validate("pool2d_forward (CUDA)");
  cudnnHandle_t h = DeviceContext::current().cudnn();
  const PoolSetup ps(kind, s);
  DeviceBuffer xpad;
  const float* xin = ps.input(s, x, xpad);
  CUDNN_CHECK(cudnnPoolingForward(h, ps.pool.get(), &kOne, ps.x.get(), xin, &kZero, ps.y.get(), y));
  if (ps.rescale) helpers::avgpool_exclude_rescale(pool_geom(s), y, y);
}

void pool2d_backward(PoolKind kind, const Pool2dShape& s, const float* x, const float* dy, float* dx) {
  s.validate("pool2d_backward (CUDA)");
  if (kind == PoolKind::Max) {
    // First-maximum routing, exactly as the reference (see the file comment).
    helpers::maxpool_backward(pool_geom(s), x, dy, dx);
    return;
  }
  cudnnHandle_t h = DeviceContext::current().cudnn();
  const PoolSetup ps(kind, s);
  DeviceBuffer xpad;
  const float* xin = ps.input(s, x, xpad);
  // cudnnPoolingBackward takes the forward output: recompute it (with the cuDNN mode, before any
  // rescale) into a temporary.
  DeviceBuffer ybuf(f32_bytes(s.out_numel()));
  CUDNN_CHECK(cudnnPoolingForward(h, ps.pool.get(), &kOne, ps.x.get(), xin, &kZero, ps.y.get(), ybuf.f32()));
  DeviceBuffer dyscaled;
  const float* dyin = dy;
  if (ps.rescale) {
    dyscaled = DeviceBuffer(f32_bytes(s.out_numel()));
    helpers::avgpool_exclude_rescale(pool_geom(s), dy, dyscaled.f32());
    dyin = dyscaled.f32();
  }
  DeviceBuffer dxpad;
  float* dxout = dx;
  if (ps.pad.explicit_pad()) {
    dxpad = DeviceBuffer(f32_bytes(s.n * s.c * ps.hp * ps.wp));
    dxout = dxpad.f32();
  }
  CUDNN_CHECK(cudnnPoolingBackward(h, ps.pool.get(), &kOne, ps.y.get(), ybuf.f32(), ps.y.get(), dyin, ps.x.get(),
                                   xin, &kZero, ps.x.get(), dxout));
  if (ps.pad.explicit_pad())
    helpers::crop_planes(s.n * s.c, ps.hp, ps.wp, ps.pad.top, ps.pad.left, s.h, s.w, dxout, dx);
}

// ---- batch norm -----------------------------------------------------------------------------

void batchnorm_forward_train(const BatchNormShape& s, const float* x, const float* gamma, const float* beta,
                             float eps, float momentum, float* running_mean, float* running_var, float* y,
                             float* mean, float* var, float* inv_std) {
  if (s.numel() == 0) return;
  TTQ_CHECK(eps >= CUDNN_BN_MIN_EPSILON, "batchnorm_forward_train (CUDA): eps " << eps << " below cuDNN's minimum "
                                                                                << CUDNN_BN_MIN_EPSILON);
  cudnnHandle_t h = DeviceContext::current().cudnn();
  const BnSetup bs(s);
  // exponentialAverageFactor = momentum: running = (1 - momentum) * running + momentum * batch,
  // with cuDNN's unbiased (n / (n - 1)) batch variance for the running variance, as PyTorch.
  // Saved statistics: the batch mean and 1 / sqrt(biased var + eps).
  const cudnnStatus_t st = cudnnBatchNormalizationForwardTraining(
      h, CUDNN_BATCHNORM_SPATIAL, &kOne, &kZero, bs.x.get(), x, bs.x.get(), y, bs.param.get(), gamma, beta,
      static_cast<double>(momentum), running_mean, running_var, static_cast<double>(eps), mean, inv_std);
  if (s.channels_last && nhwc_refused(st)) {  // NCHW copies (see the file comment)
    const DeviceBuffer xc = permuted(s.n, s.c, s.s, false, x);
    DeviceBuffer yc(f32_bytes(s.numel()));
    batchnorm_forward_train(nchw(s), xc.f32(), gamma, beta, eps, momentum, running_mean, running_var, yc.f32(), mean,
                            var, inv_std);
    permute_layout(s.n, s.c, s.s, true, sizeof(float), yc.get(), y);
    return;
  }
  check_status(st, "cudnnBatchNormalizationForwardTraining");
  helpers::bn_var_from_inv_std(s.c, eps, inv_std, var);
}

void batchnorm_forward_infer(const BatchNormShape& s, const float* x, const float* gamma, const float* beta,
                             const float* running_mean, const float* running_var, float eps, float* y) {
  if (s.numel() == 0) return;
  TTQ_CHECK(eps >= CUDNN_BN_MIN_EPSILON, "batchnorm_forward_infer (CUDA): eps " << eps << " below cuDNN's minimum "
                                                                                << CUDNN_BN_MIN_EPSILON);
  cudnnHandle_t h = DeviceContext::current().cudnn();
  const BnSetup bs(s);
  const cudnnStatus_t st = cudnnBatchNormalizationForwardInference(
      h, CUDNN_BATCHNORM_SPATIAL, &kOne, &kZero, bs.x.get(), x, bs.x.get(), y, bs.param.get(), gamma, beta,
      running_mean, running_var, static_cast<double>(eps));
  if (s.channels_last && nhwc_refused(st)) {
    const DeviceBuffer xc = permuted(s.n, s.c, s.s, false, x);
    DeviceBuffer yc(f32_bytes(s.numel()));
    batchnorm_forward_infer(nchw(s), xc.f32(), gamma, beta, running_mean, running_var, eps, yc.f32());
    permute_layout(s.n, s.c, s.s, true, sizeof(float), yc.get(), y);
    return;
  }
  check_status(st, "cudnnBatchNormalizationForwardInference");
}

void batchnorm_backward(const BatchNormShape& s, const float* x, const float* dy, const float* gamma,
                        const float* mean, const float* inv_std, float eps, float* dx, float* dgamma, float* dbeta) {
  if (s.numel() == 0) {  // no values: the parameter gradients are 0, as on the CPU
    helpers::zero_fill_bytes(dgamma, static_cast<size_t>(s.c) * sizeof(float));
    helpers::zero_fill_bytes(dbeta, static_cast<size_t>(s.c) * sizeof(float));
    return;
  }
  cudnnHandle_t h = DeviceContext::current().cudnn();
  const BnSetup bs(s);
  // Data and parameter gradients both overwritten (beta factors 0).
  const cudnnStatus_t st = cudnnBatchNormalizationBackward(
      h, CUDNN_BATCHNORM_SPATIAL, &kOne, &kZero, &kOne, &kZero, bs.x.get(), x, bs.x.get(), dy, bs.x.get(), dx,
      bs.param.get(), gamma, dgamma, dbeta, static_cast<double>(eps), mean, inv_std);
  if (s.channels_last && nhwc_refused(st)) {
    const DeviceBuffer xc = permuted(s.n, s.c, s.s, false, x), dyc = permuted(s.n, s.c, s.s, false, dy);
    DeviceBuffer dxc(f32_bytes(s.numel()));
    batchnorm_backward(nchw(s), xc.f32(), dyc.f32(), gamma, mean, inv_std, eps, dxc.f32(), dgamma, dbeta);
    permute_layout(s.n, s.c, s.s, true, sizeof(float), dxc.get(), dx);
    return;
  }
  check_status(st, "cudnnBatchNormalizationBackward");
}

}  // namespace ttq::cuda

#endif  // TTQ_HAVE_CUDNN
