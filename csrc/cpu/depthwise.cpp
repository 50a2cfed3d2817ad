// Depthwise convolution (groups == in_channels: one input channel per group, depth multiplier
// m = out_channels / in_channels; output channel o reads input channel o / m) on the CPU, and
// the fused depthwise-separable op. Direct kernels, no im2col.
//
// NCHW: one task per (image, input channel) plane. Stride 1 with out_w == in_w (MobileNet's
// "same" convs) uses the dense layout: the plane keeps its row stride, zero rows above and
// below, and is computed as one run of whole vectors straight into the output; lanes whose
// tap column leaves the row are cleared by per-lane masks (PaddedPlane::dense). Otherwise the
// plane is copied into a zero-padded buffer whose columns are split by phase (column q ->
// element q / stride_w of phase q % stride_w), so for a run of output columns every kernel
// tap reads one contiguous run of the buffer whatever the stride: the kernels are vector
// loads and FMAs along the width with no bounds checks. The input gradient is the exact adjoint: the same reads become
// read-add-writes into a zeroed buffer, whose interior is then the plane's gradient. The
// weight gradient reduces each plane into a per-(image, channel) partial sum, then over the
// images in a fixed order: deterministic whatever the thread count.
//
// channels_last (m == 1): one task per output row (input row for the input gradient),
// vectorised along the channels, which are contiguous. Other channels_last cases use NCHW
// copies.
//
// Vectors are GCC vector extensions of 64 bytes; each ISA clone (cpu_parallel.h) lowers them
// to one zmm, two ymm or four xmm registers.
#include <ATen/Parallel.h>
#include <torch/library.h>
#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <numeric>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "../common/conv_gemm.h"
#include "cpu_parallel.h"
#include "direct_kernels.h"

#pragma GCC diagnostic ignored "-Wpsabi"

namespace convops::cpu {
namespace {

typedef float VecF __attribute__((vector_size(64)));
typedef double VecD __attribute__((vector_size(64)));
template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  using type = VecF;
};
template <>
struct VecOf<double> {
  using type = VecD;
};
template <typename T>
using Vec = typename VecOf<T>::type;
template <typename T>
constexpr int64_t kLanes = 64 / sizeof(T);

template <typename T>
CONVOPS_INLINE Vec<T> load(const T* p) {
  Vec<T> v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
CONVOPS_INLINE void store(T* p, const Vec<T>& v) {
  __builtin_memcpy(p, &v, sizeof v);
}
// A whole cache line (p 64-byte aligned) past the caches: four SSE streaming stores, which
// every x86-64 clone has, combined into one line write with no read for ownership.
template <typename T>
CONVOPS_INLINE void store_streaming(T* p, const Vec<T>& v) {
#if defined(__x86_64__)
  const float* f = reinterpret_cast<const float*>(&v);
  float* d = reinterpret_cast<float*>(p);
  for (int i = 0; i < 4; ++i) _mm_stream_ps(d + 4 * i, _mm_loadu_ps(f + 4 * i));
#else
  store(p, v);
#endif
}
// Whether this CPU runs the AVX-512 clones.
bool has_avx512() {
  static const bool yes = std::strcmp(selected_isa(), "avx512f") == 0;
  return yes;
}

// p + step through a register the compiler cannot see into: left to itself, GCC keeps every
// pixel's offset (p * C, a runtime multiple) of a block live across its loops, more than the
// general registers hold, and reloads them from the stack for every load and store.
template <typename P>
CONVOPS_INLINE P* advance(P* p, int64_t step) {
  p += step;
  asm("" : "+r"(p));
  return p;
}
// Lane numbers 0, 1, ... as an integer vector of the same shape, for lane masks.
template <typename T>
using LaneInt = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
typedef int32_t VecI32 __attribute__((vector_size(64)));
typedef int64_t VecI64 __attribute__((vector_size(64)));
template <typename T>
CONVOPS_INLINE auto lane_index() {
  if constexpr (sizeof(T) == 4) {
    return VecI32{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  } else {
    return VecI64{0, 1, 2, 3, 4, 5, 6, 7};
  }
}

template <typename T>
using LaneVec = std::conditional_t<sizeof(T) == 4, VecI32, VecI64>;

// v where mask (a comparison's result) is set, zero elsewhere. A bitwise and: GCC lowers
// `mask ? v : 0` on these vector types lane by lane, with branches.
template <typename T>
CONVOPS_INLINE Vec<T> keep_lanes(const LaneVec<T>& mask, const Vec<T>& v) {
  return (Vec<T>)((LaneVec<T>)v & mask);  // vector casts reinterpret the bits
}

// Partial vectors go through a small array: subscripting a vector (v[i]) would make GCC keep
// it, and every accumulator it meets, in memory.
// The first n lanes from p, zeros in the others.
template <typename T>
CONVOPS_INLINE Vec<T> load_partial(const T* p, int64_t n) {
  alignas(64) T lanes[kLanes<T>] = {};
  for (int64_t i = 0; i < n; ++i) lanes[i] = p[i];
  return load(lanes);
}
template <typename T>
CONVOPS_INLINE void store_partial(T* p, const Vec<T>& v, int64_t n) {
  alignas(64) T lanes[kLanes<T>];
  store(lanes, v);
  for (int64_t i = 0; i < n; ++i) p[i] = lanes[i];
}
template <typename T>
CONVOPS_INLINE Vec<T> load_n(const T* p, int64_t n) {
  return n == kLanes<T> ? load(p) : load_partial(p, n);
}
template <typename T>
CONVOPS_INLINE void store_n(T* p, const Vec<T>& v, int64_t n) {
  if (n == kLanes<T>) {
    store(p, v);
  } else {
    store_partial(p, v, n);
  }
}
// Lanes summed in a fixed order.
template <typename T>
CONVOPS_INLINE T lane_sum(const Vec<T>& v) {
  alignas(64) T lanes[kLanes<T>];
  store(lanes, v);
  T s = 0;
  for (int64_t i = 0; i < kLanes<T>; ++i) s += lanes[i];
  return s;
}

// A runtime-sized array of vectors, 64-byte aligned (std::vector's allocation is not, here).
template <typename T>
class VecArray {
 public:
  explicit VecArray(int64_t n)
      : data_(static_cast<Vec<T>*>(std::aligned_alloc(64, std::max<int64_t>(1, n) * sizeof(Vec<T>)))) {
    TORCH_CHECK(data_ != nullptr, "convops: out of memory");
  }
  ~VecArray() { std::free(data_); }
  VecArray(const VecArray&) = delete;
  VecArray& operator=(const VecArray&) = delete;
  Vec<T>* data() const { return data_; }

 private:
  Vec<T>* data_;
};

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// A zero-padded input plane split by column phase (see the header comment). A buffer row
// holds `phases` phase rows of `width` elements each, wide enough for whole vectors of
// output columns.
struct PaddedPlane {
  int64_t phases = 1, width = 0, rows = 0;
  // Flat: stride-1 rows read consecutive buffer rows, so the whole plane is computed as one
  // long row (output (oh, ow) = flat element oh * row_elems + ow) and then compacted: fewer,
  // fuller vectors when the rows are narrow (7x7 planes: 4 vectors instead of 7).
  bool flat = false;
  // Dense: stride 1 and out_w == in_w, so output (oh, ow) = element oh * in_w + ow reads
  // buffer element (oh + ki * dilation_h) * in_w + ow + kj * dilation_w whatever the tap: the
  // buffer is the padded rows without their side columns (pad_w zeros lead the first row),
  // the plane is computed as one long run of whole vectors straight into the output, and the
  // side padding is a per-lane column mask. No padding, compaction or partial vectors per row.
  bool dense = false;
  int64_t lead = 0;  // dense: the zeros before the first row (pad_w)
  int64_t row_elems() const { return phases * width; }
  // Whole vectors read past the last row need a vector of slack; dense reads start pad_w
  // before the first row and end up to pad_w after the last.
  int64_t buffer_elems(int64_t buf_rows) const {
    return buf_rows * row_elems() + 64 + (dense ? 64 + 2 * lead : 0);
  }
  int64_t elems() const { return buffer_elems(rows); }
};

// The layouts a kernel driver can work with besides the padded rows.
struct PlaneLayouts {
  bool flat = false, dense = false;
};

PaddedPlane padded_plane(const Conv2dGeometry& g, int64_t lanes, PlaneLayouts allowed = {}) {
  PaddedPlane p;
  p.phases = g.stride_w;
  p.rows = g.in_h + 2 * g.pad_h;
  if (allowed.dense && g.stride_h == 1 && g.stride_w == 1 && g.out_w == g.in_w) {
    p.dense = true;
    p.width = g.in_w;
    p.lead = g.pad_w;
    return p;
  }
  const int64_t narrow = ceil_div(g.in_w + 2 * g.pad_w, g.stride_w);
  p.width = std::max(narrow, round_up(g.out_w, lanes) + (g.kernel_w - 1) * g.dilation_w / g.stride_w);
  const int64_t row_vectors = g.out_h * ceil_div(g.out_w, lanes);
  const int64_t flat_vectors = ceil_div((g.out_h - 1) * narrow * p.phases + g.out_w, lanes);
  if (allowed.flat && g.stride_h == 1 && 4 * flat_vectors < 3 * row_vectors) {
    p.flat = true;
    p.width = narrow;
  }
  return p;
}

// Input rows [r0, r1) of the padded plane that output rows [oh0, oh1) read.
struct RowRange {
  int64_t r0, r1;
};
RowRange rows_read(const Conv2dGeometry& g, int64_t oh0, int64_t oh1) {
  return {oh0 * g.stride_h, (oh1 - 1) * g.stride_h + (g.kernel_h - 1) * g.dilation_h + 1};
}

// Offset of each kernel tap in a PaddedPlane from the element that output (0, 0) reads first.
std::vector<int64_t> tap_offsets(const Conv2dGeometry& g, const PaddedPlane& p) {
  std::vector<int64_t> off;
  for (int64_t ki = 0; ki < g.kernel_h; ++ki) {
    for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
      const int64_t col = kj * g.dilation_w;
      off.push_back(ki * g.dilation_h * p.row_elems() + (col % g.stride_w) * p.width +
                    col / g.stride_w);
    }
  }
  return off;
}

// The fused separable backward's tile of the depthwise output's gradient, for one image:
// rows [t0, t1) of every channel, channels `stride` elements apart, rows out_w apart.
struct GradTile {
  int64_t t0 = 0, t1 = 0, stride = 0;
};

// The arguments of every kernel driver below; each says what its pointers hold.
template <typename T>
struct DwCall {
  const T* src;           // input planes / grad_output planes
  const T* src2;          // second operand (grad_output of the weight gradient)
  const T* weight;        // (C*m, taps), or channels_last (taps, C rounded up to lanes)
  const T* bias;          // or null
  T* dst;                 // output
  const Conv2dGeometry* g;
  const int64_t* taps;    // tap_offsets (NCHW kernels)
  PaddedPlane plane;
  T* buf;                 // a PaddedPlane of scratch (NCHW kernels)
  int64_t begin, end;     // task range
  GradTile tile;          // the separable backward's band drivers
  int64_t dst_stride;     // forward_band: elements between output channels (0: the band's area)
  int64_t rows_per_task;  // channels_last weight gradient: output rows per task
  bool streaming;         // channels_last forward: interior stores bypass the caches
};

// The channels_last forward streams its output past the caches (no read for ownership of
// lines it overwrites whole) when the output is at least a third of the last-level cache:
// 0.75-0.85x of the regular stores' time on 32ch@112 and 144ch@56 (12.8 and 14.5 MB, batch
// 8, Zen 4 with 32 MB L3), and with the output's consumer timed too (a ReLU or a 1x1 conv
// reading it back from memory) 0.95-1.01x. Smaller outputs keep the regular stores, which
// leave them in cache for the consumer: 9.6 MB (96ch@112 stride 2) streamed was 0.96x alone
// but 1.05-1.08x with its consumer. CONVOPS_DW_STREAMING_BYTES overrides the threshold (read
// at every call, for tests and benchmarks).
int64_t streaming_bytes() {
  if (const char* env = std::getenv("CONVOPS_DW_STREAMING_BYTES")) return std::atoll(env);
  // sysfs, as lscpu reads it (glibc's sysconf(_SC_LEVEL3_CACHE_SIZE) reported the host's
  // 320 MB on our 32 MB VMs); 32 MB where there is none.
  static const int64_t third_of_llc = [] {
    int64_t llc = 0;
    std::ifstream file("/sys/devices/system/cpu/cpu0/cache/index3/size");
    std::string size;
    if (file >> size && !size.empty()) {
      const char unit = size.back();
      llc = std::atoll(size.c_str()) * (unit == 'K' ? 1024 : unit == 'M' ? 1024 * 1024 : 1);
    }
    return (llc > 0 ? llc : int64_t(32) << 20) / 3;
  }();
  return third_of_llc;
}

// even = (a0, a2, .., b0, b2, ..), odd = (a1, a3, .., b1, b3, ..).
CONVOPS_INLINE void split_even_odd(const VecF& a, const VecF& b, VecF& even, VecF& odd) {
  even = __builtin_shuffle(a, b, VecI32{0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30});
  odd = __builtin_shuffle(a, b, VecI32{1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31});
}
CONVOPS_INLINE void split_even_odd(const VecD& a, const VecD& b, VecD& even, VecD& odd) {
  even = __builtin_shuffle(a, b, VecI64{0, 2, 4, 6, 8, 10, 12, 14});
  odd = __builtin_shuffle(a, b, VecI64{1, 3, 5, 7, 9, 11, 13, 15});
}

// Rows [r0, r1) of the padded plane of `plane` into buf (buf row 0 = padded row r0).
template <typename T>
CONVOPS_INLINE void fill_padded_rows(const T* plane, T* buf, const Conv2dGeometry& g,
                                     const PaddedPlane& p, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    T* dst = buf + (r - r0) * p.row_elems();
    const int64_t ih = r - g.pad_h;
    if (ih < 0 || ih >= g.in_h) {
      std::fill(dst, dst + p.row_elems(), T(0));
      continue;
    }
    const T* src = plane + ih * g.in_w;
    if (p.phases == 1) {
      // Whole vectors (small planes would pay more for memset/memcpy calls than for the
      // copy); the zeros may run into the next row, which is written after this one, or into
      // the buffer's slack.
      constexpr int64_t V = kLanes<T>;
      for (int64_t i = 0; i < p.width; i += V) store(dst + i, Vec<T>{});
      int64_t i = 0;
      for (; i + V <= g.in_w; i += V) store(dst + g.pad_w + i, load(src + i));
      if (i < g.in_w) store_partial(dst + g.pad_w + i, load_partial(src + i, g.in_w - i), g.in_w - i);
      continue;
    }
    int64_t vec_lo = 0, vec_hi = 0;  // stride 2: [vec_lo, vec_hi) of both phases split by vectors
    if (p.phases == 2) {
      // Columns 2i - pad_w and 2i + 1 - pad_w, whole inside the row for i in [vec_lo, vec_hi):
      // two vector loads split into even and odd lanes per V elements of each phase. Element
      // by element, the strided copy was 73% of the 96ch@112 stride-2 forward's time; split
      // by vectors the forward takes 0.69x of that time on 96ch@112 and 32ch@112, 0.85x on
      // 144ch@56 (batch 8, in-process A/B, Zen 4).
      constexpr int64_t V = kLanes<T>;
      vec_lo = std::min(p.width, ceil_div(g.pad_w, int64_t(2)));
      vec_hi = vec_lo;
      while (vec_hi + V <= p.width && 2 * (vec_hi + V) - g.pad_w <= g.in_w) {
        const T* from = src + 2 * vec_hi - g.pad_w;
        Vec<T> even, odd;
        split_even_odd(load(from), load(from + V), even, odd);
        store(dst + vec_hi, even);
        store(dst + p.width + vec_hi, odd);
        vec_hi += V;
      }
    }
    for (int64_t ph = 0; ph < p.phases; ++ph, dst += p.width) {
      // Element i holds input column i * phases + ph - pad_w: inside the row for i in [lo, hi).
      const int64_t first = ph - g.pad_w;
      const int64_t lo = std::min(p.width, first >= 0 ? 0 : ceil_div(-first, p.phases));
      const int64_t hi = std::max(lo, std::min(p.width, ceil_div(g.in_w - first, p.phases)));
      std::fill(dst, dst + lo, T(0));
      const T* from = src + first;
      const int64_t step = p.phases;
      for (int64_t i = lo; i < std::min(hi, vec_lo); ++i) dst[i] = from[i * step];
      for (int64_t i = std::max(lo, vec_hi); i < hi; ++i) dst[i] = from[i * step];
      std::fill(dst + hi, dst + p.width, T(0));
    }
  }
}

// The inverse of fill_padded_rows for input rows [ih0, ih1): plane[ih][iw] = padded + bias,
// from buf holding padded rows `rows` (rows outside them are bias alone).
template <typename T>
CONVOPS_INLINE void unpad_rows(const T* buf, T* plane, const Conv2dGeometry& g,
                               const PaddedPlane& p, T bias, int64_t ih0, int64_t ih1,
                               RowRange rows) {
  for (int64_t ih = ih0; ih < ih1; ++ih) {
    T* dst = plane + ih * g.in_w;
    const int64_t r = ih + g.pad_h;
    if (r < rows.r0 || r >= rows.r1) {
      std::fill(dst, dst + g.in_w, bias);
      continue;
    }
    const T* src = buf + (r - rows.r0) * p.row_elems();
    if (p.phases == 1) {
      for (int64_t iw = 0; iw < g.in_w; ++iw) dst[iw] = src[iw + g.pad_w] + bias;
      continue;
    }
    for (int64_t ph = 0; ph < p.phases; ++ph) {
      // Columns iw with (iw + pad_w) % phases == ph, element (iw + pad_w) / phases of phase ph.
      const int64_t first = ((ph - g.pad_w) % p.phases + p.phases) % p.phases;
      const T* from = src + ph * p.width + (first + g.pad_w) / p.phases;
      for (int64_t iw = first, i = 0; iw < g.in_w; iw += p.phases, ++i) dst[iw] = from[i] + bias;
    }
  }
}

template <typename T>
CONVOPS_INLINE void unpad_plane(const T* buf, T* plane, const Conv2dGeometry& g,
                                const PaddedPlane& p, T bias) {
  unpad_rows(buf, plane, g, p, bias, 0, g.in_h, RowRange{0, p.rows});
}

// Output rows [oh0, oh1) of one output plane (row stride out_w) from the padded plane in buf,
// whose row 0 is padded row r0. kTaps > 0: the tap count is known at compile time.
template <typename T, int kTaps>
CONVOPS_INLINE void forward_rows(const T* buf, int64_t r0, const DwCall<T>& a, const T* w,
                                 T bias, T* out, int64_t oh0, int64_t oh1) {
  constexpr int64_t V = kLanes<T>;
  const Conv2dGeometry& g = *a.g;
  const int64_t taps = kTaps > 0 ? kTaps : g.kernel_area();
  const int64_t* off = a.taps;
  for (int64_t oh = oh0; oh < oh1; ++oh) {
    const T* base = buf + (oh * g.stride_h - r0) * a.plane.row_elems();
    T* dst = out + (oh - oh0) * g.out_w;
    int64_t ow = 0;
    // Four independent accumulators hide the FMA latency.
    for (; ow + 4 * V <= g.out_w; ow += 4 * V) {
      Vec<T> acc0 = Vec<T>{} + bias, acc1 = acc0, acc2 = acc0, acc3 = acc0;
      for (int64_t t = 0; t < taps; ++t) {
        const T* src = base + off[t] + ow;
        acc0 += w[t] * load(src);
        acc1 += w[t] * load(src + V);
        acc2 += w[t] * load(src + 2 * V);
        acc3 += w[t] * load(src + 3 * V);
      }
      store(dst + ow, acc0);
      store(dst + ow + V, acc1);
      store(dst + ow + 2 * V, acc2);
      store(dst + ow + 3 * V, acc3);
    }
    for (; ow + 2 * V <= g.out_w; ow += 2 * V) {
      Vec<T> acc0 = Vec<T>{} + bias, acc1 = acc0;
      for (int64_t t = 0; t < taps; ++t) {
        const T* src = base + off[t] + ow;
        acc0 += w[t] * load(src);
        acc1 += w[t] * load(src + V);
      }
      store(dst + ow, acc0);
      store(dst + ow + V, acc1);
    }
    for (; ow < g.out_w; ow += V) {
      Vec<T> acc = Vec<T>{} + bias;
      for (int64_t t = 0; t < taps; ++t) acc += w[t] * load(base + off[t] + ow);
      store_n(dst + ow, acc, std::min(V, g.out_w - ow));
    }
  }
}

// forward_rows over a whole flat plane (PaddedPlane::flat): the flat result goes to `flat`
// (round_up(length, lanes) elements), then its rows to the output plane.
template <typename T, int kTaps>
CONVOPS_INLINE void forward_plane_flat(const T* buf, const DwCall<T>& a, const T* w, T bias,
                                       T* out, T* flat) {
  constexpr int64_t V = kLanes<T>;
  const Conv2dGeometry& g = *a.g;
  const int64_t taps = kTaps > 0 ? kTaps : g.kernel_area();
  const int64_t* off = a.taps;
  const int64_t row = a.plane.row_elems(), length = (g.out_h - 1) * row + g.out_w;
  int64_t i = 0;
  for (; i + 2 * V <= length + V - 1; i += 2 * V) {
    Vec<T> acc0 = Vec<T>{} + bias, acc1 = acc0;
    for (int64_t t = 0; t < taps; ++t) {
      acc0 += w[t] * load(buf + off[t] + i);
      acc1 += w[t] * load(buf + off[t] + i + V);
    }
    store(flat + i, acc0);
    store(flat + i + V, acc1);
  }
  for (; i < length; i += V) {
    Vec<T> acc = Vec<T>{} + bias;
    for (int64_t t = 0; t < taps; ++t) acc += w[t] * load(buf + off[t] + i);
    store(flat + i, acc);
  }
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    const T* src = flat + oh * row;
    T* dst = out + oh * g.out_w;
    int64_t ow = 0;
    for (; ow + V <= g.out_w; ow += V) store(dst + ow, load(src + ow));
    if (ow < g.out_w) store_partial(dst + ow, load(src + ow), g.out_w - ow);
  }
}

// ---- dense planes (PaddedPlane::dense)


// n elements from src to dst in whole vectors, the last one overlapping its predecessor.
template <typename T>
CONVOPS_INLINE void copy_run(const T* src, T* dst, int64_t n) {
  constexpr int64_t V = kLanes<T>;
  if (n < V) {
    for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
    return;
  }
  int64_t i = 0;
  for (; i + V <= n; i += V) store(dst + i, load(src + i));
  if (i < n) store(dst + n - V, load(src + n - V));
}

// Padded rows [r0, r1) of `plane` into buf in the dense layout: rows outside the input are
// zeros, the input rows one contiguous copy.
template <typename T>
CONVOPS_INLINE void fill_dense_rows(const T* plane, T* buf, const Conv2dGeometry& g, int64_t r0,
                                    int64_t r1) {
  constexpr int64_t V = kLanes<T>;
  const int64_t W = g.in_w;
  const int64_t first = std::clamp(g.pad_h, r0, r1);
  const int64_t last = std::clamp(g.pad_h + g.in_h, first, r1);
  const int64_t data_begin = g.pad_w + (first - r0) * W, data_end = g.pad_w + (last - r0) * W;
  // Zero vectors may run on past their region: into the copy, written after them, or slack.
  for (int64_t i = 0; i < data_begin; i += V) store(buf + i, Vec<T>{});
  copy_run(plane + (first - g.pad_h) * W, buf + data_begin, data_end - data_begin);
  const int64_t end = (r1 - r0) * W + 2 * g.pad_w;
  for (int64_t i = data_end; i < end; i += V) store(buf + i, Vec<T>{});
}

// Per-lane masks of the dense layout, built once per call: a lane whose tap column kj falls
// outside the row reads the neighbouring row where the padding would be, so it is cleared.
// Masks are data, not computed per vector: inside the ISA clones GCC lowers vector
// comparisons lane by lane. Vector v starts at element v * lanes; its pattern repeats every
// `period` vectors. The last vector of an area that is not whole vectors overlaps its
// predecessor (or is the only, partial, one) and has its own masks, plus `live`: the lanes not
// already counted by its predecessor.
template <typename T>
class DenseMasks {
 public:
  DenseMasks(const Conv2dGeometry& g, int64_t area)
      : area_(area),
        period_(g.out_w / std::gcd(g.out_w, kLanes<T>)),
        kernel_w_(g.kernel_w),
        masks_((period_ + 1) * kernel_w_ + 1) {
    constexpr int64_t V = kLanes<T>;
    const int64_t last_start = std::max<int64_t>(0, area - V);
    for (int64_t p = 0; p <= period_; ++p) {
      const int64_t start = p < period_ ? p * V : last_start;
      for (int64_t kj = 0; kj < kernel_w_; ++kj) {
        const int64_t dx = kj * g.dilation_w - g.pad_w;
        alignas(64) LaneInt<T> bits[V];
        for (int64_t l = 0; l < V; ++l) {
          const int64_t col = (start + l) % g.out_w + dx;
          bits[l] = col >= 0 && col < g.out_w ? -1 : 0;
        }
        __builtin_memcpy(&masks_.data()[p * kernel_w_ + kj], bits, sizeof bits);
      }
    }
    alignas(64) LaneInt<T> bits[V];
    const int64_t counted = area >= V ? area / V * V - last_start : 0;
    for (int64_t l = 0; l < V; ++l) bits[l] = l >= counted && l < area ? -1 : 0;
    __builtin_memcpy(&masks_.data()[(period_ + 1) * kernel_w_], bits, sizeof bits);
  }
  int64_t area() const { return area_; }
  int64_t period() const { return period_; }
  // The kernel_w masks of vector v % period, or of the last vector for p == period.
  const Vec<T>* row(int64_t p) const { return masks_.data() + p * kernel_w_; }
  const Vec<T>& live() const { return masks_.data()[(period_ + 1) * kernel_w_]; }

 private:
  int64_t area_, period_, kernel_w_;
  VecArray<T> masks_;
};

template <typename T>
CONVOPS_INLINE Vec<T> keep_lanes(const Vec<T>& mask, const Vec<T>& v) {
  return keep_lanes<T>((LaneVec<T>)mask, v);
}

// A dense output area (masks.area() elements from out) from the dense buffer.
template <typename T, int kTaps>
CONVOPS_INLINE void forward_dense(const T* buf, const DwCall<T>& a, const T* w, T bias, T* out,
                                  const DenseMasks<T>& masks) {
  constexpr int64_t V = kLanes<T>;
  const Conv2dGeometry& g = *a.g;
  const int64_t kh = kTaps == 9 ? 3 : g.kernel_h, kw = kTaps == 9 ? 3 : g.kernel_w;
  // A fixed tap count keeps weights and offsets in registers: the output stores could alias
  // them as far as the compiler knows, so it would reload them for every vector.
  Vec<T> weights[kTaps > 0 ? kTaps : 1];
  int64_t offsets[kTaps > 0 ? kTaps : 1];
  if constexpr (kTaps > 0) {
    for (int64_t t = 0; t < kTaps; ++t) {
      weights[t] = Vec<T>{} + w[t];
      offsets[t] = a.taps[t];
    }
  }
  const int64_t* off = kTaps > 0 ? offsets : a.taps;
  // Taps summed per kernel column, whose lanes outside the row are then dropped.
  auto vector_at = [&](int64_t i, const Vec<T>* mask) CONVOPS_LAMBDA_INLINE {
    Vec<T> total = Vec<T>{} + bias;
    for (int64_t kj = 0; kj < kw; ++kj) {
      Vec<T> acc{};
      for (int64_t ki = 0; ki < kh; ++ki) {
        const int64_t t = ki * kw + kj;
        acc += (kTaps > 0 ? weights[t] : Vec<T>{} + w[t]) * load(buf + off[t] + i);
      }
      total += kj * g.dilation_w == g.pad_w ? acc : keep_lanes<T>(mask[kj], acc);
    }
    return total;
  };
  const int64_t area = masks.area(), period = masks.period();
  if (area < V) {
    store_partial(out, vector_at(0, masks.row(period)), area);
    return;
  }
  int64_t i = 0;
  for (int64_t p = 0; i + V <= area; i += V) {
    store(out + i, vector_at(i, masks.row(p)));
    if (++p == period) p = 0;
  }
  if (i < area) store(out + area - V, vector_at(area - V, masks.row(period)));
}

// acc[t] += the products of a dense grad_output area (masks.area() elements) with the tap's
// reads of the dense buffer, per lane.
template <typename T, int kTaps>
CONVOPS_INLINE void weight_grad_dense(const T* buf, const DwCall<T>& a, const T* grad,
                                      Vec<T>* acc, const DenseMasks<T>& masks) {
  constexpr int64_t V = kLanes<T>;
  const Conv2dGeometry& g = *a.g;
  const int64_t kh = kTaps == 9 ? 3 : g.kernel_h, kw = kTaps == 9 ? 3 : g.kernel_w;
  int64_t offsets[kTaps > 0 ? kTaps : 1];
  if constexpr (kTaps > 0) {
    for (int64_t t = 0; t < kTaps; ++t) offsets[t] = a.taps[t];
  }
  const int64_t* off = kTaps > 0 ? offsets : a.taps;
  // Reads outside the row are zeroed, not just their grad_output lanes: 0 * inf is NaN.
  auto accumulate = [&](int64_t i, const Vec<T>* mask, Vec<T> d, bool last) CONVOPS_LAMBDA_INLINE {
    if (last) d = keep_lanes<T>(masks.live(), d);
    for (int64_t kj = 0; kj < kw; ++kj) {
      const bool inside = kj * g.dilation_w == g.pad_w;
      const Vec<T> keep = last ? keep_lanes<T>(masks.live(), mask[kj]) : mask[kj];
      for (int64_t ki = 0; ki < kh; ++ki) {
        const int64_t t = ki * kw + kj;
        const Vec<T> x = load(buf + off[t] + i);
        acc[t] += d * (inside && !last ? x : keep_lanes<T>(keep, x));
      }
    }
  };
  const int64_t area = masks.area(), period = masks.period();
  if (area < V) {
    accumulate(0, masks.row(period), load_partial(grad, area), true);
    return;
  }
  int64_t i = 0;
  for (int64_t p = 0; i + V <= area; i += V) {
    accumulate(i, masks.row(p), load(grad + i), false);
    if (++p == period) p = 0;
  }
  if (i < area) accumulate(area - V, masks.row(period), load(grad + area - V), true);
}

// The adjoint of forward_rows: buf (row 0: padded row r0) += the taps' reads, weighted by
// grad_output rows [oh0, oh1) (grad: row oh0).
template <typename T, int kTaps>
CONVOPS_INLINE void input_grad_rows(T* buf, int64_t r0, const DwCall<T>& a, const T* w,
                                    const T* grad, int64_t oh0, int64_t oh1) {
  constexpr int64_t V = kLanes<T>;
  const Conv2dGeometry& g = *a.g;
  const int64_t taps = kTaps > 0 ? kTaps : g.kernel_area();
  const int64_t* off = a.taps;
  for (int64_t oh = oh0; oh < oh1; ++oh) {
    T* base = buf + (oh * g.stride_h - r0) * a.plane.row_elems();
    const T* src = grad + (oh - oh0) * g.out_w;
    const int64_t full = g.out_w / V * V;
    // Taps outside, columns inside: consecutive read-add-writes touch disjoint vectors, so a
    // load never waits on an overlapping store still in flight (taps one column apart would).
    for (int64_t t = 0; t < taps; ++t) {
      const T wt = w[t];
      T* p = base + off[t];
      for (int64_t ow = 0; ow < full; ow += V) store(p + ow, load(p + ow) + wt * load(src + ow));
    }
    if (full < g.out_w) {
      const Vec<T> d = load_partial(src + full, g.out_w - full);
      for (int64_t t = 0; t < taps; ++t) {
        T* p = base + off[t] + full;
        store(p, load(p) + w[t] * d);
      }
    }
  }
}

// acc[t] += sum over output rows [oh0, oh1) (grad: row oh0) of grad_output x the tap's reads
// of buf (row 0: padded row r0), per lane.
template <typename T, int kTaps>
CONVOPS_INLINE void weight_grad_rows(const T* buf, int64_t r0, const DwCall<T>& a, const T* grad,
                                     Vec<T>* acc, int64_t oh0, int64_t oh1) {
  constexpr int64_t V = kLanes<T>;
  const Conv2dGeometry& g = *a.g;
  const int64_t taps = kTaps > 0 ? kTaps : g.kernel_area();
  const int64_t* off = a.taps;
  for (int64_t oh = oh0; oh < oh1; ++oh) {
    const T* base = buf + (oh * g.stride_h - r0) * a.plane.row_elems();
    const T* src = grad + (oh - oh0) * g.out_w;
    int64_t ow = 0;
    for (; ow + V <= g.out_w; ow += V) {
      const Vec<T> d = load(src + ow);
      for (int64_t t = 0; t < taps; ++t) acc[t] += d * load(base + off[t] + ow);
    }
    if (ow < g.out_w) {
      // Lanes past the row are masked out of the input too: a non-finite input there must
      // not turn 0 * x into NaN.
      const int64_t n = g.out_w - ow;
      const Vec<T> d = load_partial(src + ow, n);
      const auto keep = lane_index<T>() < static_cast<LaneInt<T>>(n);
      for (int64_t t = 0; t < taps; ++t) acc[t] += d * keep_lanes<T>(keep, load(base + off[t] + ow));
    }
  }
}

// The input plane of task `plane` in the layout of a.plane, in a.buf. Dense planes alternate
// between two buffers, the next plane copied before this one is computed: the kernel's
// unaligned loads then read stores that have left the store buffer (a load spanning two
// stores still in flight waits for them; on 7x7 planes that was most of the time).
template <typename T>
CONVOPS_INLINE const T* input_plane(const DwCall<T>& a, int64_t plane) {
  const Conv2dGeometry& g = *a.g;
  if (!a.plane.dense) {
    fill_padded_rows(a.src + plane * g.in_area(), a.buf, g, a.plane, 0, a.plane.rows);
    return a.buf;
  }
  T* const bufs[2] = {a.buf, a.buf + a.plane.elems()};
  const int64_t k = (plane - a.begin) & 1;
  if (plane == a.begin) fill_dense_rows(a.src + plane * g.in_area(), bufs[k], g, 0, a.plane.rows);
  if (plane + 1 < a.end) {
    fill_dense_rows(a.src + (plane + 1) * g.in_area(), bufs[1 - k], g, 0, a.plane.rows);
  }
  return bufs[k];
}

// ---- NCHW drivers: tasks are (image, input channel) planes.

template <typename T, int kTaps>
CONVOPS_INLINE void forward_planes_k(const DwCall<T>& a) {
  const Conv2dGeometry& g = *a.g;
  const int64_t m = g.out_channels / g.in_channels, taps = g.kernel_area();
  std::optional<DenseMasks<T>> masks;
  if (a.plane.dense) masks.emplace(g, g.out_area());
  for (int64_t plane = a.begin; plane < a.end; ++plane) {
    const int64_t n = plane / g.in_channels, c = plane % g.in_channels;
    const T* buf = input_plane(a, plane);
    for (int64_t o = c * m; o < (c + 1) * m; ++o) {
      T* out = a.dst + (n * g.out_channels + o) * g.out_area();
      const T bias = a.bias ? a.bias[o] : T(0);
      if (a.plane.dense) {
        forward_dense<T, kTaps>(buf, a, a.weight + o * taps, bias, out, *masks);
      } else if (a.plane.flat) {
        forward_plane_flat<T, kTaps>(buf, a, a.weight + o * taps, bias, out,
                                     a.buf + a.plane.elems());
      } else {
        forward_rows<T, kTaps>(buf, 0, a, a.weight + o * taps, bias, out, 0, g.out_h);
      }
    }
  }
}

// src: grad_output (N, C*m, Ho, Wo); dst: grad_input (N, C, H, W); bias: per input channel.
template <typename T, int kTaps>
CONVOPS_INLINE void input_grad_planes_k(const DwCall<T>& a) {
  const Conv2dGeometry& g = *a.g;
  const int64_t m = g.out_channels / g.in_channels, taps = g.kernel_area();
  for (int64_t plane = a.begin; plane < a.end; ++plane) {
    const int64_t n = plane / g.in_channels, c = plane % g.in_channels;
    std::fill(a.buf, a.buf + a.plane.elems(), T(0));
    for (int64_t o = c * m; o < (c + 1) * m; ++o) {
      input_grad_rows<T, kTaps>(a.buf, 0, a, a.weight + o * taps,
                                a.src + (n * g.out_channels + o) * g.out_area(), 0, g.out_h);
    }
    unpad_plane(a.buf, a.dst + plane * g.in_area(), g, a.plane, a.bias ? a.bias[c] : T(0));
  }
}

// The kernel-tap sums of grad_output rows [oh0, oh1) (grad: row oh0) times the taps' reads of
// buf (its row 0: padded row r0; a dense buf holds exactly these rows, masks over their area),
// lanes summed in order into dst[t] (added to it if `add`). acc_buf: room for the taps' vector
// sums when the tap count is not fixed.
template <typename T, int kTaps>
CONVOPS_INLINE void tap_sums(const T* buf, int64_t r0, const DwCall<T>& a, const T* grad,
                             int64_t oh0, int64_t oh1, const std::optional<DenseMasks<T>>& masks,
                             Vec<T>* acc_buf, T* dst, bool add) {
  const int64_t taps = a.g->kernel_area();
  Vec<T> acc_fixed[kTaps > 0 ? kTaps : 1];
  Vec<T>* acc = kTaps > 0 ? acc_fixed : acc_buf;
  for (int64_t t = 0; t < taps; ++t) acc[t] = Vec<T>{};
  if (a.plane.dense) {
    weight_grad_dense<T, kTaps>(buf, a, grad, acc, *masks);
  } else {
    weight_grad_rows<T, kTaps>(buf, r0, a, grad, acc, oh0, oh1);
  }
  for (int64_t t = 0; t < taps; ++t) {
    const T sum = lane_sum<T>(acc[t]);
    dst[t] = add ? dst[t] + sum : sum;
  }
}

// src: input, src2: grad_output; dst: partial sums (N, C*m, taps).
template <typename T, int kTaps>
CONVOPS_INLINE void weight_grad_planes_k(const DwCall<T>& a) {
  const Conv2dGeometry& g = *a.g;
  const int64_t m = g.out_channels / g.in_channels, taps = g.kernel_area();
  VecArray<T> acc_buf(kTaps > 0 ? 0 : taps);
  std::optional<DenseMasks<T>> masks;
  if (a.plane.dense) masks.emplace(g, g.out_area());
  for (int64_t plane = a.begin; plane < a.end; ++plane) {
    const int64_t n = plane / g.in_channels, c = plane % g.in_channels;
    const T* buf = input_plane(a, plane);
    for (int64_t o = c * m; o < (c + 1) * m; ++o) {
      tap_sums<T, kTaps>(buf, 0, a, a.src2 + (n * g.out_channels + o) * g.out_area(), 0, g.out_h,
                         masks, acc_buf.data(), a.dst + (n * g.out_channels + o) * taps, false);
    }
  }
}

// The depthwise output rows [begin, end) of every channel of one image (src: the image's
// planes) into dst (C*m, rows, Wo): the depthwise half of the fused separable op.
template <typename T, int kTaps>
CONVOPS_INLINE void forward_band_k(const DwCall<T>& a) {
  const Conv2dGeometry& g = *a.g;
  const int64_t m = g.out_channels / g.in_channels, taps = g.kernel_area();
  const int64_t band_area = (a.end - a.begin) * g.out_w;
  const int64_t dst_stride = a.dst_stride ? a.dst_stride : band_area;
  const auto rows = rows_read(g, a.begin, a.end);
  std::optional<DenseMasks<T>> masks;
  if (a.plane.dense) masks.emplace(g, band_area);
  for (int64_t c = 0; c < g.in_channels; ++c) {
    if (a.plane.dense) {
      fill_dense_rows(a.src + c * g.in_area(), a.buf, g, rows.r0, rows.r1);
      for (int64_t o = c * m; o < (c + 1) * m; ++o) {
        forward_dense<T, kTaps>(a.buf, a, a.weight + o * taps, a.bias ? a.bias[o] : T(0),
                                a.dst + o * dst_stride, *masks);
      }
      continue;
    }
    fill_padded_rows(a.src + c * g.in_area(), a.buf, g, a.plane, rows.r0, rows.r1);
    for (int64_t o = c * m; o < (c + 1) * m; ++o) {
      forward_rows<T, kTaps>(a.buf, rows.r0, a, a.weight + o * taps, a.bias ? a.bias[o] : T(0),
                             a.dst + o * dst_stride, a.begin, a.end);
    }
  }
}

// The fused separable backward's depthwise weight gradient over output rows [begin, end) of
// one image: src: the image's input planes, src2: the gradient tile (a.tile); dst (C*m, taps)
// += the sums.
template <typename T, int kTaps>
CONVOPS_INLINE void weight_grad_band_k(const DwCall<T>& a) {
  const Conv2dGeometry& g = *a.g;
  const int64_t m = g.out_channels / g.in_channels, taps = g.kernel_area();
  const auto rows = rows_read(g, a.begin, a.end);
  VecArray<T> acc_buf(kTaps > 0 ? 0 : taps);
  std::optional<DenseMasks<T>> masks;
  if (a.plane.dense) masks.emplace(g, (a.end - a.begin) * g.out_w);
  for (int64_t c = 0; c < g.in_channels; ++c) {
    if (a.plane.dense) {
      fill_dense_rows(a.src + c * g.in_area(), a.buf, g, rows.r0, rows.r1);
    } else {
      fill_padded_rows(a.src + c * g.in_area(), a.buf, g, a.plane, rows.r0, rows.r1);
    }
    for (int64_t o = c * m; o < (c + 1) * m; ++o) {
      const T* grad = a.src2 + o * a.tile.stride + (a.begin - a.tile.t0) * g.out_w;
      tap_sums<T, kTaps>(a.buf, rows.r0, a, grad, a.begin, a.end, masks, acc_buf.data(),
                         a.dst + o * taps, true);
    }
  }
}

// The fused separable backward's depthwise bias gradient: dst[o] += the sum of the gradient
// tile's (src, a.tile) rows [begin, end) of channel o, for o in [0, C*m).
template <typename T, int kTaps>
CONVOPS_INLINE void bias_grad_band_k(const DwCall<T>& a) {
  constexpr int64_t V = kLanes<T>;
  const Conv2dGeometry& g = *a.g;
  const int64_t area = (a.end - a.begin) * g.out_w, full = area / V * V;
  for (int64_t o = 0; o < g.out_channels; ++o) {
    const T* row = a.src + o * a.tile.stride + (a.begin - a.tile.t0) * g.out_w;
    Vec<T> acc0{}, acc1{};
    int64_t i = 0;
    for (; i + 2 * V <= full; i += 2 * V) acc0 += load(row + i), acc1 += load(row + i + V);
    if (i < full) acc0 += load(row + i);
    T total = lane_sum<T>(acc0 + acc1);
    for (i = full; i < area; ++i) total += row[i];
    a.dst[o] += total;
  }
}

// The fused separable backward's input gradient rows [begin, end) of one image (dst: its
// planes) from the gradient tile (src, a.tile), which holds every output row that reads them.
template <typename T, int kTaps>
CONVOPS_INLINE void input_grad_band_k(const DwCall<T>& a) {
  const Conv2dGeometry& g = *a.g;
  const int64_t m = g.out_channels / g.in_channels, taps = g.kernel_area();
  const auto rows = a.tile.t0 < a.tile.t1 ? rows_read(g, a.tile.t0, a.tile.t1) : RowRange{0, 0};
  for (int64_t c = 0; c < g.in_channels; ++c) {
    std::fill(a.buf, a.buf + (rows.r1 - rows.r0) * a.plane.row_elems(), T(0));
    for (int64_t o = c * m; o < (c + 1) * m && rows.r0 < rows.r1; ++o) {
      input_grad_rows<T, kTaps>(a.buf, rows.r0, a, a.weight + o * taps, a.src + o * a.tile.stride,
                                a.tile.t0, a.tile.t1);
    }
    unpad_rows(a.buf, a.dst + c * g.in_area(), g, a.plane, T(0), a.begin, a.end, rows);
  }
}

// Output columns [lo, hi) whose kernel taps all fall inside the input row: no bounds checks.
std::pair<int64_t, int64_t> interior_columns(const Conv2dGeometry& g) {
  const int64_t lo = std::min(g.out_w, ceil_div(g.pad_w, g.stride_w));
  const int64_t last_in = g.in_w - 1 - (g.kernel_w - 1) * g.dilation_w + g.pad_w;
  return {lo, std::max(lo, std::min(g.out_w, last_in < 0 ? 0 : last_in / g.stride_w + 1))};
}

// The kernel taps [lo, hi) along one dimension that fall inside the input for the output
// position whose first tap reads input index `first` (rows: kernel rows; columns: kernel
// columns of an output pixel).
std::pair<int64_t, int64_t> taps_inside(int64_t first, int64_t kernel, int64_t dilation,
                                        int64_t size) {
  int64_t lo = 0, hi = kernel;
  while (lo < hi && first + lo * dilation < 0) ++lo;
  while (hi > lo && first + (hi - 1) * dilation >= size) --hi;
  return {lo, hi};
}

// ---- channels_last drivers (m == 1): weights (taps, Cp) and bias (Cp), Cp = C rounded up to
// whole vectors and zero-filled, so only the activations need partial loads.

// Tasks are output rows (image, oh). Pixels outer, channels inner: a block of output pixels
// walks all its channels, so the input is read in runs of whole pixels (C contiguous
// elements), not one vector per pixel per channel pass (which missed L1 on every load once
// three input rows outgrew it); the taps' weights are reloaded per channel vector from L1.
template <typename T, int kTaps>
CONVOPS_INLINE void forward_nhwc_k(const DwCall<T>& a) {
  constexpr int64_t V = kLanes<T>;
  const Conv2dGeometry& g = *a.g;
  const int64_t C = g.in_channels, Cp = round_up(C, V), full = C / V * V;
  const int64_t kw = kTaps == 9 ? 3 : g.kernel_w;
  const auto [ow_lo, ow_hi] = interior_columns(g);
  const int64_t pixel_step = g.stride_w * C, tap_step = g.dilation_w * C;
  const bool unit_columns = kTaps == 9 && g.stride_w == 1 && g.dilation_w == 1 && has_avx512();
  for (int64_t row = a.begin; row < a.end; ++row) {
    const int64_t n = row / g.out_h, oh = row % g.out_h;
    T* dst_row = a.dst + row * g.out_w * C;
    // The kernel rows that fall inside the input, and their input rows.
    const auto [ki_lo, ki_hi] =
        taps_inside(oh * g.stride_h - g.pad_h, g.kernel_h, g.dilation_h, g.in_h);
    const T* row0 = a.src + (n * g.in_h + oh * g.stride_h - g.pad_h) * g.in_w * C;
    const int64_t ki_step = g.dilation_h * g.in_w * C;
    // Output pixel ow's kernel columns [lo, hi) that fall inside the input.
    auto kernel_columns = [&](int64_t ow) CONVOPS_LAMBDA_INLINE {
      return taps_inside(ow * g.stride_w - g.pad_w, g.kernel_w, g.dilation_w, g.in_w);
    };
    // Channels [c0, c0 + V) of output pixel ow over kernel columns kj, inputs read by load_x.
    auto pixel_channels = [&](int64_t ow, std::pair<int64_t, int64_t> kj, int64_t c0,
                              auto load_x) CONVOPS_LAMBDA_INLINE {
      Vec<T> acc = a.bias ? load(a.bias + c0) : Vec<T>{};
      for (int64_t ki = ki_lo; ki < ki_hi; ++ki) {
        const T* src = row0 + ki * ki_step + (ow * g.stride_w - g.pad_w) * C + c0;
        for (int64_t j = kj.first; j < kj.second; ++j) {
          acc += load(a.weight + (ki * g.kernel_w + j) * Cp + c0) * load_x(src + j * tap_step);
        }
      }
      return acc;
    };
    // The channels of output pixel ow past the last whole vector.
    auto channel_tail = [&](int64_t ow, std::pair<int64_t, int64_t> kj) CONVOPS_LAMBDA_INLINE {
      const int64_t lanes = C - full;
      const auto acc = pixel_channels(ow, kj, full, [lanes](const T* p) CONVOPS_LAMBDA_INLINE {
        return load_partial(p, lanes);
      });
      store_partial(dst_row + ow * C + full, acc, lanes);
    };
    // One output pixel, all channels, its kernel columns clipped to the input. Four channel
    // vectors at a time: four independent sums (one alone waits out every FMA's latency, which
    // on 7x7 images, two border columns in seven, cost more than the interior).
    auto pixel = [&](int64_t ow) CONVOPS_LAMBDA_INLINE {
      const auto kj = kernel_columns(ow);
      const T* base = row0 + (ow * g.stride_w - g.pad_w) * C;
      int64_t c0 = 0;
      for (; c0 + 4 * V <= full; c0 += 4 * V) {
        Vec<T> acc[4];
        for (int64_t u = 0; u < 4; ++u) acc[u] = a.bias ? load(a.bias + c0 + u * V) : Vec<T>{};
        for (int64_t ki = ki_lo; ki < ki_hi; ++ki) {
          for (int64_t j = kj.first; j < kj.second; ++j) {
            const T* src = base + ki * ki_step + j * tap_step + c0;
            const T* w = a.weight + (ki * g.kernel_w + j) * Cp + c0;
            for (int64_t u = 0; u < 4; ++u) acc[u] += load(w + u * V) * load(src + u * V);
          }
        }
        for (int64_t u = 0; u < 4; ++u) store(dst_row + ow * C + c0 + u * V, acc[u]);
      }
      for (; c0 < full; c0 += V) {
        store(dst_row + ow * C + c0,
              pixel_channels(ow, kj, c0, [](const T* p) CONVOPS_LAMBDA_INLINE { return load(p); }));
      }
      if (full < C) channel_tail(ow, kj);
    };
    int64_t ow = 0;
    for (; ow < ow_lo; ++ow) pixel(ow);
    // kPixels interior output pixels from ow on, all channels. Kernel rows [ki_first,
    // ki_last) are compile-time constants on rows away from the top and bottom: unrolled,
    // every load instruction then walks one input row in steps of a vector, a stream the
    // hardware prefetcher follows (one instruction cycling through three rows defeated it).
    auto block = [&](auto pixels_tag, auto ki_first, auto ki_last) CONVOPS_LAMBDA_INLINE {
      constexpr int64_t kPixels = decltype(pixels_tag)::value;
      const T* base = row0 + (ow * g.stride_w - g.pad_w) * C;
      T* d = dst_row + ow * C;
      // The next block's pixels on the last kernel row, the one no earlier row task read
      // (the others are still in cache): 8-25% faster on 32ch@112 and 144ch@56 (batch 8; A/Bs
      // across and within processes), where the hardware prefetcher alone left these loads
      // waiting on memory. Prefetches past the tensor's end are harmless (they never fault).
      const T* next = base + (ki_last - 1) * ki_step + kPixels * pixel_step;
      for (int64_t e = 0; e < kPixels * pixel_step; e += 64 / int64_t(sizeof(T))) {
        __builtin_prefetch(next + e);
      }
      for (int64_t c0 = 0; c0 < full; c0 += V) {
        Vec<T> acc[kPixels];
        const Vec<T> bias = a.bias ? load(a.bias + c0) : Vec<T>{};
        for (int64_t p = 0; p < kPixels; ++p) acc[p] = bias;
        if (unit_columns) {
          // 3x3, stride and dilation 1: neighbouring pixels' kernel columns overlap, so a
          // kernel row's kPixels + 2 input vectors are loaded once for its three taps (10
          // loads instead of 24 for 8 pixels). With `advance` for the addresses: 0.78-0.82x
          // of the time on 32ch@112, 144ch@56 and 192ch@28, 0.87-0.89x on 384ch@14 (batch 8,
          // in-process A/B, Zen 4). AVX-512 only: the 18 vectors it keeps are 36 ymm
          // registers in the AVX2 clone, which has 16 (not measured there).
          for (int64_t ki = ki_first; ki < ki_last; ++ki) {
            const T* w = a.weight + ki * 3 * Cp + c0;
            const T* src = base + ki * ki_step + c0;
            Vec<T> x[kPixels + 2];
            for (int64_t q = 0; q < kPixels + 2; ++q, src = advance(src, C)) x[q] = load(src);
            for (int64_t kj = 0; kj < 3; ++kj) {
              const Vec<T> wt = load(w + kj * Cp);
              for (int64_t p = 0; p < kPixels; ++p) acc[p] += wt * x[p + kj];
            }
          }
        } else {
          for (int64_t ki = ki_first; ki < ki_last; ++ki) {
            const T* src = base + ki * ki_step + c0;
            const T* w = a.weight + ki * kw * Cp + c0;
            for (int64_t kj = 0; kj < kw; ++kj, src += tap_step, w += Cp) {
              const Vec<T> wt = load(w);
              // `advance` here too: 0.92-0.95x on 32ch@112 and 144ch@56 stride 2, 0.95-0.99x
              // on 96ch@112 stride 2 (in-process A/Bs, Zen 4).
              const T* s = src;
              for (int64_t p = 0; p < kPixels; ++p, s = advance(s, pixel_step)) acc[p] += wt * load(s);
            }
          }
        }
        T* out = d + c0;
        for (int64_t p = 0; p < kPixels; ++p, out = advance(out, C)) {
          if (a.streaming) {
            store_streaming(out, acc[p]);
          } else {
            store(out, acc[p]);
          }
        }
      }
      if (full < C) {
        for (int64_t p = 0; p < kPixels; ++p) channel_tail(ow + p, {0, kw});
      }
      ow += kPixels;
    };
    auto blocks = [&](auto ki_first, auto ki_last) CONVOPS_LAMBDA_INLINE {
      using Eight = std::integral_constant<int64_t, 8>;
      using Four = std::integral_constant<int64_t, 4>;
      using Two = std::integral_constant<int64_t, 2>;
      using One = std::integral_constant<int64_t, 1>;
      while (ow + 8 <= ow_hi) block(Eight{}, ki_first, ki_last);
      while (ow + 4 <= ow_hi) block(Four{}, ki_first, ki_last);
      while (ow + 2 <= ow_hi) block(Two{}, ki_first, ki_last);
      while (ow < ow_hi) block(One{}, ki_first, ki_last);
    };
    if (kTaps == 9 && ki_lo == 0 && ki_hi == 3) {
      blocks(std::integral_constant<int64_t, 0>{}, std::integral_constant<int64_t, 3>{});
    } else {
      blocks(ki_lo, ki_hi);
    }
    for (; ow < g.out_w; ++ow) pixel(ow);
  }
#if defined(__x86_64__)
  if (a.streaming) _mm_sfence();  // this thread's streaming stores visible to the others
#endif
}

// Tasks are input rows (image, ih): each input pixel gathers the outputs that read it.
// src: grad_output (N, Ho, Wo, C); dst: grad_input (N, H, W, C). Pixels outer, channels inner
// (the pixel's taps found once, then all its channels, four vectors at a time: independent
// sums), so both tensors are read in runs of whole pixels.
template <typename T, int kTaps>
CONVOPS_INLINE void input_grad_nhwc_k(const DwCall<T>& a) {
  constexpr int64_t V = kLanes<T>;
  const Conv2dGeometry& g = *a.g;
  const int64_t C = g.in_channels, Cp = round_up(C, V), full = C / V * V, taps = g.kernel_area();
  std::vector<int64_t> tap_buf(kTaps > 0 ? 0 : 2 * taps);
  int64_t tap_fixed[kTaps > 0 ? 2 * kTaps : 1];
  int64_t* weight_at = kTaps > 0 ? tap_fixed : tap_buf.data();  // per live tap: weight row,
  int64_t* grad_at = weight_at + taps;                            // grad_output element
  for (int64_t row = a.begin; row < a.end; ++row) {
    const int64_t n = row / g.in_h, ih = row % g.in_h;
    T* dst_row = a.dst + row * g.in_w * C;
    for (int64_t iw = 0; iw < g.in_w; ++iw) {
      int64_t live = 0;
      for (int64_t ki = 0; ki < g.kernel_h; ++ki) {
        const int64_t th = ih + g.pad_h - ki * g.dilation_h;
        if (th < 0 || th % g.stride_h != 0 || th / g.stride_h >= g.out_h) continue;
        const int64_t grad_row = (n * g.out_h + th / g.stride_h) * g.out_w;
        for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
          const int64_t tw = iw + g.pad_w - kj * g.dilation_w;
          if (tw < 0 || tw % g.stride_w != 0 || tw / g.stride_w >= g.out_w) continue;
          weight_at[live] = (ki * g.kernel_w + kj) * Cp;
          grad_at[live] = (grad_row + tw / g.stride_w) * C;
          ++live;
        }
      }
      T* dst = dst_row + iw * C;
      // Two pixels ahead in the newest grad_output row (the first live tap's; the other rows
      // were read by earlier tasks): ~5% on batch-8 MobileNet layers.
      if (live > 0) {
        const T* ahead = a.src + grad_at[0] + 2 * C;
        for (int64_t c = 0; c < C; c += 64 / int64_t(sizeof(T))) __builtin_prefetch(ahead + c);
      }
      int64_t c0 = 0;
      for (; c0 + 4 * V <= full; c0 += 4 * V) {
        Vec<T> acc[4];
        for (int64_t u = 0; u < 4; ++u) acc[u] = a.bias ? load(a.bias + c0 + u * V) : Vec<T>{};
        for (int64_t i = 0; i < live; ++i) {
          const T* w = a.weight + weight_at[i] + c0;
          const T* src = a.src + grad_at[i] + c0;
          for (int64_t u = 0; u < 4; ++u) acc[u] += load(w + u * V) * load(src + u * V);
        }
        for (int64_t u = 0; u < 4; ++u) store(dst + c0 + u * V, acc[u]);
      }
      for (; c0 < C; c0 += V) {
        const int64_t lanes = std::min(V, C - c0);
        Vec<T> acc = a.bias ? load(a.bias + c0) : Vec<T>{};
        for (int64_t i = 0; i < live; ++i) {
          acc += load(a.weight + weight_at[i] + c0) * load_n(a.src + grad_at[i] + c0, lanes);
        }
        store_n(dst + c0, acc, lanes);
      }
    }
  }
}

// Tasks are (image, band of a.rows_per_task output rows), all channels; src: input
// (N, H, W, C), src2: grad_output (N, Ho, Wo, C), dst: one partial sum (taps, Cp) per task.
// Pixels outer, channels inner, as the forward: both tensors are read in runs of whole pixels
// (one channel vector walked over the image read one vector per pixel, C apart, and waited
// on memory for each), and a block of pixels' grad_output vectors stays in registers while
// every tap's sum takes their products.
template <typename T, int kTaps>
CONVOPS_INLINE void weight_grad_nhwc_k(const DwCall<T>& a) {
  constexpr int64_t V = kLanes<T>;
  const Conv2dGeometry& g = *a.g;
  const int64_t C = g.in_channels, Cp = round_up(C, V), full = C / V * V, taps = g.kernel_area();
  const int64_t kh = kTaps == 9 ? 3 : g.kernel_h, kw = kTaps == 9 ? 3 : g.kernel_w;
  const int64_t bands = ceil_div(g.out_h, a.rows_per_task);
  const auto [ow_lo, ow_hi] = interior_columns(g);
  const int64_t pixel_step = g.stride_w * C, tap_step = g.dilation_w * C;
  for (int64_t task = a.begin; task < a.end; ++task) {
    const int64_t n = task / bands, oh0 = task % bands * a.rows_per_task;
    T* sums = a.dst + task * taps * Cp;
    std::fill(sums, sums + taps * Cp, T(0));
    for (int64_t oh = oh0; oh < std::min(g.out_h, oh0 + a.rows_per_task); ++oh) {
      const T* grad_row = a.src2 + (n * g.out_h + oh) * g.out_w * C;
      const auto [ki_lo, ki_hi] = taps_inside(oh * g.stride_h - g.pad_h, kh, g.dilation_h, g.in_h);
      const T* row0 = a.src + (n * g.in_h + oh * g.stride_h - g.pad_h) * g.in_w * C;
      const int64_t ki_step = g.dilation_h * g.in_w * C;
      // Channels [c_begin, C) of output pixel ow, its kernel columns clipped to the input.
      auto pixel = [&](int64_t ow, int64_t c_begin) CONVOPS_LAMBDA_INLINE {
        const int64_t iw0 = ow * g.stride_w - g.pad_w;
        const auto [kj_lo, kj_hi] = taps_inside(iw0, kw, g.dilation_w, g.in_w);
        for (int64_t c0 = c_begin; c0 < C; c0 += V) {
          const int64_t lanes = std::min(V, C - c0);
          const Vec<T> d = load_n(grad_row + ow * C + c0, lanes);
          for (int64_t ki = ki_lo; ki < ki_hi; ++ki) {
            const T* src = row0 + ki * ki_step + iw0 * C + c0;
            for (int64_t kj = kj_lo; kj < kj_hi; ++kj) {
              T* sum = sums + (ki * kw + kj) * Cp + c0;
              store(sum, load(sum) + d * load_n(src + kj * tap_step, lanes));
            }
          }
        }
      };
      int64_t ow = 0;
      for (; ow < ow_lo; ++ow) pixel(ow, 0);
      auto block = [&](auto pixels_tag) CONVOPS_LAMBDA_INLINE {
        constexpr int64_t kPixels = decltype(pixels_tag)::value;
        const T* base = row0 + (ow * g.stride_w - g.pad_w) * C;
        for (int64_t c0 = 0; c0 < full; c0 += V) {
          Vec<T> d[kPixels];
          for (int64_t p = 0; p < kPixels; ++p) d[p] = load(grad_row + (ow + p) * C + c0);
          for (int64_t ki = ki_lo; ki < ki_hi; ++ki) {
            const T* src = base + ki * ki_step + c0;
            T* sum = sums + ki * kw * Cp + c0;
            for (int64_t kj = 0; kj < kw; ++kj, src += tap_step, sum += Cp) {
              Vec<T> acc = load(sum);
              for (int64_t p = 0; p < kPixels; ++p) acc += d[p] * load(src + p * pixel_step);
              store(sum, acc);
            }
          }
        }
        if (full < C) {
          for (int64_t p = 0; p < kPixels; ++p) pixel(ow + p, full);
        }
        ow += kPixels;
      };
      while (ow + 8 <= ow_hi) block(std::integral_constant<int64_t, 8>{});
      while (ow + 4 <= ow_hi) block(std::integral_constant<int64_t, 4>{});
      while (ow < ow_hi) block(std::integral_constant<int64_t, 1>{});
      for (; ow < g.out_w; ++ow) pixel(ow, 0);
    }
  }
}

// One ISA-cloned entry point per driver and dtype; 3x3 (the common case) gets a compile-time
// tap count so its accumulators and weights live in registers.
#define CONVOPS_DW_DRIVER(name)                                                        \
  template <typename T>                                                                \
  CONVOPS_INLINE void name(const DwCall<T>& a) {                                       \
    if (a.g->kernel_area() == 9) {                                                     \
      name##_k<T, 9>(a);                                                               \
    } else {                                                                           \
      name##_k<T, 0>(a);                                                               \
    }                                                                                  \
  }                                                                                    \
  CONVOPS_ISA_CLONES void name##_f32(const DwCall<float>& a) { name<float>(a); }       \
  CONVOPS_ISA_CLONES void name##_f64(const DwCall<double>& a) { name<double>(a); }     \
  void name##_isa(const DwCall<float>& a) { name##_f32(a); }                           \
  void name##_isa(const DwCall<double>& a) { name##_f64(a); }

CONVOPS_DW_DRIVER(forward_planes)
CONVOPS_DW_DRIVER(input_grad_planes)
CONVOPS_DW_DRIVER(weight_grad_planes)
CONVOPS_DW_DRIVER(forward_band)
CONVOPS_DW_DRIVER(weight_grad_band)
CONVOPS_DW_DRIVER(input_grad_band)
CONVOPS_DW_DRIVER(bias_grad_band)
CONVOPS_DW_DRIVER(forward_nhwc)
CONVOPS_DW_DRIVER(input_grad_nhwc)
CONVOPS_DW_DRIVER(weight_grad_nhwc)

// ---- dispatch

bool is_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && t.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

int64_t grain_for(int64_t elems_per_task) {
  return std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(1, elems_per_task));
}

template <typename T>
T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// Runs `driver` over [0, tasks) in parallel, at least `grain` tasks per call (small problems
// stay on one thread). The NCHW kernels get a PaddedPlane buffer per call (rows: the plane rows
// a task needs) and an even static split; the channels_last ones (no buffer) take chunks of
// ~1/8 of a thread's share through parallel_chunks, which evens out the two vCPUs' speeds:
// in-process A/B against the static split, channels_last 0.91-1.0x on the MobileNetV2 rows
// (forward and forward+backward), while the NCHW kernels measured 0.97-1.13x (their per-call
// setup repeated per chunk), so they keep the static split.
template <typename T, class Driver>
void run_parallel(DwCall<T> a, int64_t tasks, int64_t grain, int64_t buf_rows,
                  const at::TensorOptions& options, const Driver& driver) {
  // NCHW kernels: the padded rows (+ slack), and for a flat plane its flat result after them.
  const int64_t plane_elems = a.plane.buffer_elems(buf_rows);
  // Flat planes put their flat result after the plane, dense ones a second plane.
  const int64_t buf_elems = a.taps ? plane_elems * (a.plane.flat || a.plane.dense ? 2 : 1) : 0;
  auto run_tasks = [&](int64_t begin, int64_t end, T* buf) {
    DwCall<T> call = a;
    call.buf = buf;
    call.begin = begin;
    call.end = end;
    driver(call);
  };
  if (buf_elems == 0) {
    const int64_t chunk = std::max(grain, tasks / (8 * int64_t(at::get_num_threads())));
    parallel_chunks(tasks, chunk,
                    [&](int64_t begin, int64_t end, int) { run_tasks(begin, end, nullptr); });
    return;
  }
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    const ScratchBuffer buf(buf_elems, options);
    run_tasks(begin, end, buf.tensor().data_ptr<T>());
  });
}

// (taps, Cp) weights and (Cp) bias of the channels_last kernels, zero beyond C.
// Plain loops: the zeros, narrow and transposing copy_ this was made of cost ~5% of a small
// layer's forward (960ch@7) in dispatch and allocation.
std::pair<at::Tensor, at::Tensor> channels_last_params(const at::Tensor& w, const at::Tensor& b,
                                                       const Conv2dGeometry& g, int64_t lanes) {
  const int64_t C = g.in_channels, Cp = round_up(C, lanes), taps = g.kernel_area();
  auto wt = at::empty({taps, Cp}, w.options());
  at::Tensor bt;
  if (b.defined()) bt = at::empty({Cp}, b.options());
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "convops_depthwise_cl_params", [&] {
    const scalar_t* src = w.data_ptr<scalar_t>();  // (C, taps), contiguous
    scalar_t* dst = wt.data_ptr<scalar_t>();
    for (int64_t t = 0; t < taps; ++t) {
      for (int64_t c = 0; c < C; ++c) dst[t * Cp + c] = src[c * taps + t];
      for (int64_t c = C; c < Cp; ++c) dst[t * Cp + c] = scalar_t(0);
    }
    if (b.defined()) {
      const scalar_t* bias = b.data_ptr<scalar_t>();
      scalar_t* bias_dst = bt.data_ptr<scalar_t>();
      for (int64_t c = 0; c < Cp; ++c) bias_dst[c] = c < C ? bias[c] : scalar_t(0);
    }
  });
  return {wt, bt};
}

// conv2d forward for a depthwise geometry; result in the compute dtype.
at::Tensor forward_compute(const at::Tensor& input, const at::Tensor& weight,
                           const c10::optional<at::Tensor>& bias, const Conv2dGeometry& g) {
  const auto cdt = compute_dtype(input.scalar_type());
  const auto w = weight.to(cdt).contiguous();
  const auto b = contiguous_or_undefined(bias, cdt);
  const bool nhwc = is_channels_last(input) && g.out_channels == g.in_channels;
  const auto format = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const auto x = input.to(cdt).contiguous(format);
  auto out = at::empty({g.batch, g.out_channels, g.out_h, g.out_w},
                       x.options().memory_format(format));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(cdt, "convops_depthwise_forward", [&] {
    constexpr int64_t V = kLanes<scalar_t>;
    DwCall<scalar_t> a{};
    a.g = &g;
    a.src = x.data_ptr<scalar_t>();
    a.dst = out.data_ptr<scalar_t>();
    if (nhwc) {
      const auto [wt, bt] = channels_last_params(w, b, g, V);
      a.weight = wt.data_ptr<scalar_t>();
      a.bias = ptr_or_null<scalar_t>(bt);
      a.streaming = g.in_channels % V == 0 && reinterpret_cast<uintptr_t>(a.dst) % 64 == 0 &&
                    out.numel() * int64_t(sizeof(scalar_t)) >= streaming_bytes();
      run_parallel(a, g.batch * g.out_h, grain_for(g.out_w * g.in_channels * g.kernel_area()), 0,
                   x.options(), [](const DwCall<scalar_t>& c) { forward_nhwc_isa(c); });
      return;
    }
    a.weight = w.data_ptr<scalar_t>();
    a.bias = ptr_or_null<scalar_t>(b);
    a.plane = padded_plane(g, V, PlaneLayouts{/*flat=*/true, /*dense=*/true});
    const auto taps = tap_offsets(g, a.plane);
    a.taps = taps.data();
    const int64_t m = g.out_channels / g.in_channels;
    run_parallel(a, g.batch * g.in_channels, grain_for(m * g.out_area() * g.kernel_area()),
                 a.plane.rows, x.options(),
                 [](const DwCall<scalar_t>& c) { forward_planes_isa(c); });
  });
  return out;
}

// conv2d's input gradient (conv_transpose2d) for a depthwise geometry, in the compute dtype;
// bias: per input channel (conv_transpose2d's).
at::Tensor input_grad_compute(const at::Tensor& grad_output, const at::Tensor& weight,
                              const c10::optional<at::Tensor>& bias, const Conv2dGeometry& g) {
  const auto cdt = compute_dtype(grad_output.scalar_type());
  const auto w = weight.to(cdt).contiguous();
  const auto b = contiguous_or_undefined(bias, cdt);
  const bool nhwc = is_channels_last(grad_output) && g.out_channels == g.in_channels;
  const auto format = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const auto y = grad_output.to(cdt).contiguous(format);
  auto dx = at::empty({g.batch, g.in_channels, g.in_h, g.in_w}, y.options().memory_format(format));
  if (dx.numel() == 0) return dx;
  AT_DISPATCH_FLOATING_TYPES(cdt, "convops_depthwise_input_grad", [&] {
    constexpr int64_t V = kLanes<scalar_t>;
    DwCall<scalar_t> a{};
    a.g = &g;
    a.src = y.data_ptr<scalar_t>();
    a.dst = dx.data_ptr<scalar_t>();
    if (nhwc) {
      const auto [wt, bt] = channels_last_params(w, b, g, V);
      a.weight = wt.data_ptr<scalar_t>();
      a.bias = ptr_or_null<scalar_t>(bt);
      run_parallel(a, g.batch * g.in_h, grain_for(g.in_w * g.in_channels * g.kernel_area()), 0,
                   y.options(), [](const DwCall<scalar_t>& c) { input_grad_nhwc_isa(c); });
      return;
    }
    a.weight = w.data_ptr<scalar_t>();
    a.bias = ptr_or_null<scalar_t>(b);
    a.plane = padded_plane(g, V);
    const auto taps = tap_offsets(g, a.plane);
    a.taps = taps.data();
    const int64_t m = g.out_channels / g.in_channels;
    run_parallel(a, g.batch * g.in_channels, grain_for(m * g.out_area() * g.kernel_area()),
                 a.plane.rows, y.options(),
                 [](const DwCall<scalar_t>& c) { input_grad_planes_isa(c); });
  });
  return dx;
}

// Sum over dim 0 of partials (per image, band or thread share; contiguous), in order:
// deterministic. Plain loops: one ATen add_ per partial (24 of them for 192ch@28 channels_last,
// batch 8) had cost ~20% of that weight gradient.
at::Tensor sum_in_order(const at::Tensor& partial) {
  TORCH_INTERNAL_ASSERT(partial.is_contiguous() && partial.size(0) > 0);
  auto total = at::empty(partial.sizes().slice(1), partial.options());
  AT_DISPATCH_FLOATING_TYPES(partial.scalar_type(), "convops_sum_in_order", [&] {
    const int64_t count = partial.size(0), m = total.numel();
    const scalar_t* src = partial.data_ptr<scalar_t>();
    scalar_t* dst = total.data_ptr<scalar_t>();
    std::copy(src, src + m, dst);
    for (int64_t k = 1; k < count; ++k) {
      const scalar_t* __restrict s = src + k * m;
      scalar_t* __restrict d = dst;
      for (int64_t i = 0; i < m; ++i) d[i] += s[i];
    }
  });
  return total;
}

// (taps, Cp) -> (C, taps): the channels_last kernels' weight layout back to torch's.
at::Tensor channels_last_weight_back(const at::Tensor& sums, int64_t channels) {
  const int64_t taps = sums.size(0), Cp = sums.size(1);
  auto out = at::empty({channels, taps}, sums.options());
  AT_DISPATCH_FLOATING_TYPES(sums.scalar_type(), "convops_depthwise_cl_weight_back", [&] {
    const scalar_t* src = sums.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    for (int64_t c = 0; c < channels; ++c)
      for (int64_t t = 0; t < taps; ++t) dst[c * taps + t] = src[t * Cp + c];
  });
  return out;
}

// conv2d's weight gradient (C*m, 1, kh, kw) for a depthwise geometry, in the compute dtype.
at::Tensor weight_grad_compute(const at::Tensor& grad_output, const at::Tensor& input,
                               const Conv2dGeometry& g) {
  const auto cdt = compute_dtype(input.scalar_type());
  const bool nhwc = is_channels_last(input) && g.out_channels == g.in_channels;
  const auto format = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const auto x = input.to(cdt).contiguous(format);
  const auto go = grad_output.to(cdt).contiguous(format);
  const int64_t taps = g.kernel_area();
  if (g.batch == 0) return at::zeros({g.out_channels, 1, g.kernel_h, g.kernel_w}, x.options());
  at::Tensor result;
  AT_DISPATCH_FLOATING_TYPES(cdt, "convops_depthwise_weight_grad", [&] {
    constexpr int64_t V = kLanes<scalar_t>;
    DwCall<scalar_t> a{};
    a.g = &g;
    a.src = x.data_ptr<scalar_t>();
    a.src2 = go.data_ptr<scalar_t>();
    if (nhwc) {
      const int64_t Cp = round_up(g.in_channels, V);
      // Bands of ~64K grad_output elements: enough tasks for the threads at batch 1, and
      // sized by the geometry alone, so the sum's order does not depend on the thread count.
      a.rows_per_task = std::clamp<int64_t>(ceil_div(int64_t(1) << 16, g.out_w * Cp), 1, g.out_h);
      const int64_t tasks = g.batch * ceil_div(g.out_h, a.rows_per_task);
      const ScratchBuffer partial(tasks * taps * Cp, x.options());
      a.dst = partial.tensor().data_ptr<scalar_t>();
      run_parallel(a, tasks, 1, 0, x.options(),
                   [](const DwCall<scalar_t>& c) { weight_grad_nhwc_isa(c); });
      result = channels_last_weight_back(sum_in_order(partial.tensor().view({tasks, taps, Cp})),
                                         g.in_channels);
      return;
    }
    const ScratchBuffer partial(g.batch * g.out_channels * taps, x.options());
    a.dst = partial.tensor().data_ptr<scalar_t>();
    a.plane = padded_plane(g, V, PlaneLayouts{/*flat=*/false, /*dense=*/true});
    const auto offsets = tap_offsets(g, a.plane);
    a.taps = offsets.data();
    const int64_t m = g.out_channels / g.in_channels;
    run_parallel(a, g.batch * g.in_channels, grain_for(m * g.out_area() * taps), a.plane.rows,
                 x.options(), [](const DwCall<scalar_t>& c) { weight_grad_planes_isa(c); });
    result = sum_in_order(partial.tensor().view({g.batch, g.out_channels, taps}));
  });
  return result.view({g.out_channels, 1, g.kernel_h, g.kernel_w});
}

// ---- fused depthwise-separable forward

// Depthwise output rows per band: the band's depthwise tile (C*m, rows, Wo) stays within
// kSeparableTileBytes, so it is still in L2 when the pointwise GEMM reads it.
constexpr int64_t kSeparableTileBytes = int64_t(384) << 10;

int64_t separable_band_rows(const Conv2dGeometry& g, int64_t elem_size) {
  const int64_t row_bytes = std::max<int64_t>(1, g.out_channels * g.out_w * elem_size);
  const int64_t rows = std::clamp<int64_t>(kSeparableTileBytes / row_bytes, 1, g.out_h);
  return ceil_div(g.out_h, ceil_div(g.out_h, rows));  // equal bands, no sliver
}

at::Tensor separable_forward_compute(const at::Tensor& input, const at::Tensor& dw_weight,
                                     const at::Tensor& pw_weight,
                                     const c10::optional<at::Tensor>& dw_bias,
                                     const c10::optional<at::Tensor>& pw_bias,
                                     const Conv2dGeometry& g) {
  const auto cdt = compute_dtype(input.scalar_type());
  const auto x = input.to(cdt).contiguous();
  const auto w = dw_weight.to(cdt).contiguous();
  const auto b = contiguous_or_undefined(dw_bias, cdt);
  const int64_t out_channels = pw_weight.size(0);
  const auto pw = pw_weight.to(cdt).contiguous().view({out_channels, g.out_channels});
  const auto pb = contiguous_or_undefined(pw_bias, cdt);
  auto out = at::empty({g.batch, out_channels, g.out_h, g.out_w}, x.options());
  if (out.numel() == 0) return out;
  const int64_t band_rows = separable_band_rows(g, x.element_size());
  const int64_t bands = ceil_div(g.out_h, band_rows);
  AT_DISPATCH_FLOATING_TYPES(cdt, "convops_depthwise_separable_forward", [&] {
    DwCall<scalar_t> proto{};
    proto.g = &g;
    proto.weight = w.data_ptr<scalar_t>();
    proto.bias = ptr_or_null<scalar_t>(b);
    proto.plane = padded_plane(g, kLanes<scalar_t>, PlaneLayouts{/*flat=*/false, /*dense=*/true});
    const auto offsets = tap_offsets(g, proto.plane);
    proto.taps = offsets.data();
    const int64_t buf_rows = rows_read(g, 0, band_rows).r1;
    parallel_gemm_for(g.batch * bands, [&](int64_t begin, int64_t end) {
      const ScratchBuffer plane_buf(proto.plane.buffer_elems(buf_rows), x.options());
      const ScratchBuffer tile_buf(g.out_channels * band_rows * g.out_w, x.options());
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n = item / bands, oh0 = item % bands * band_rows;
        const int64_t oh1 = std::min(oh0 + band_rows, g.out_h);
        const int64_t area = (oh1 - oh0) * g.out_w;
        DwCall<scalar_t> a = proto;
        a.src = x.data_ptr<scalar_t>() + n * g.in_channels * g.in_area();
        a.buf = plane_buf.tensor().data_ptr<scalar_t>();
        a.dst = tile_buf.tensor().data_ptr<scalar_t>();
        a.begin = oh0;
        a.end = oh1;
        forward_band_isa(a);
        const auto tile = tile_buf.tensor().narrow(0, 0, g.out_channels * area)
                              .view({g.out_channels, area});
        auto dst = out.select(0, n).view({out_channels, g.out_area()}).narrow(1, oh0 * g.out_w, area);
        at::mm_out(dst, pw, tile);
        if (pb.defined()) dst.add_(pb.view({out_channels, 1}));
      }
    });
  });
  return out;
}

// With stride 1 and one output channel per input channel, the input gradient is itself a
// depthwise conv of grad_output: flipped kernel, padding d*(k-1) - p. Returns its geometry, or
// nothing when that does not hold (strides, m > 1, p > d*(k-1), extra output_padding rows).
c10::optional<Conv2dGeometry> input_grad_as_forward(const Conv2dGeometry& g) {
  if (g.stride_h != 1 || g.stride_w != 1 || g.out_channels != g.in_channels) return c10::nullopt;
  Conv2dGeometry f = g;
  f.pad_h = g.dilation_h * (g.kernel_h - 1) - g.pad_h;
  f.pad_w = g.dilation_w * (g.kernel_w - 1) - g.pad_w;
  f.in_h = g.out_h;
  f.in_w = g.out_w;
  f.out_h = g.in_h;
  f.out_w = g.in_w;
  if (f.pad_h < 0 || f.pad_w < 0 ||
      conv_out_size(f.in_h, f.kernel_h, 1, f.pad_h, f.dilation_h) != f.out_h ||
      conv_out_size(f.in_w, f.kernel_w, 1, f.pad_w, f.dilation_w) != f.out_w) {
    return c10::nullopt;
  }
  return f;
}

// ---- fused depthwise-separable backward
//
// Per (image, band of depthwise output rows): the band's tile of grad_mid = pw^T grad_output
// (one GEMM), then from it and the input the band's share of every gradient. The band's
// depthwise output is recomputed only for the pointwise weight's gradient. Input-gradient rows
// are split between the bands; each band's tile extends over the output rows its input rows
// need (a halo of about (kh - 1) * dilation / stride rows), so no two bands write the same
// input row and nothing but tiles is ever held.

// The rows one item works on.
struct SeparableBand {
  int64_t own0, own1;  // output rows whose weight gradients it sums
  int64_t in0, in1;    // input rows whose gradient it writes
  GradTile tile;       // grad_mid rows it needs (stride set by the caller)
};

int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -ceil_div(-a, b); }

SeparableBand separable_band(const Conv2dGeometry& g, int64_t band, int64_t bands,
                             int64_t band_rows, bool input_rows) {
  SeparableBand s{};
  s.own0 = band * band_rows;
  s.own1 = std::min(s.own0 + band_rows, g.out_h);
  s.tile.t0 = s.own0;
  s.tile.t1 = s.own1;
  if (!input_rows) return s;
  s.in0 = band == 0 ? 0 : std::min(g.in_h, s.own0 * g.stride_h);
  s.in1 = band + 1 == bands ? g.in_h : std::min(g.in_h, s.own1 * g.stride_h);
  if (s.in0 >= s.in1) return s;
  // Output rows oh read input rows oh*s - p + ki*d, ki in [0, kh).
  const int64_t lo = std::max<int64_t>(
      0, -floor_div(-(s.in0 + g.pad_h - (g.kernel_h - 1) * g.dilation_h), g.stride_h));
  const int64_t hi = std::min(g.out_h, floor_div(s.in1 - 1 + g.pad_h, g.stride_h) + 1);
  if (lo < hi) {
    s.tile.t0 = std::min(s.tile.t0, lo);
    s.tile.t1 = std::max(s.tile.t1, hi);
  }
  return s;
}

// Gradients of depthwise_separable_conv2d: (input, depthwise weight, depthwise bias,
// pointwise weight), each undefined unless asked for, in the compute dtype.
std::array<at::Tensor, 4> separable_backward_compute(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& dw_weight,
    const at::Tensor& pw_weight, const c10::optional<at::Tensor>& dw_bias,
    const Conv2dGeometry& g, std::array<bool, 4> mask) {
  const auto cdt = compute_dtype(input.scalar_type());
  const auto x = input.to(cdt).contiguous();
  const auto gy = grad_output.to(cdt).contiguous();
  const auto w = dw_weight.to(cdt).contiguous();
  const auto b = contiguous_or_undefined(dw_bias, cdt);
  const int64_t out_channels = pw_weight.size(0), mid = g.out_channels, taps = g.kernel_area();
  const auto pw = pw_weight.to(cdt).contiguous().view({out_channels, mid});
  const auto [need_x, need_dw, need_db, need_pw] = mask;
  std::array<at::Tensor, 4> grads;
  if (need_x) grads[0] = at::empty({g.batch, g.in_channels, g.in_h, g.in_w}, x.options());
  const int64_t band_rows = separable_band_rows(g, x.element_size());
  const int64_t bands = ceil_div(g.out_h, band_rows);
  const int64_t items = g.batch * bands;
  const int64_t shares = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), items));
  // Per-share partial sums, added in share order at the end: deterministic for a thread count.
  auto pw_sums = at::zeros({shares, out_channels, mid}, x.options());
  auto dw_sums = at::zeros({shares, mid, taps}, x.options());
  auto db_sums = at::zeros({shares, mid}, x.options());
  int64_t tile_rows = 0;
  for (int64_t band = 0; band < bands; ++band) {
    const auto sb = separable_band(g, band, bands, band_rows, need_x);
    tile_rows = std::max(tile_rows, sb.tile.t1 - sb.tile.t0);
  }
  const auto gy_images = gy.view({g.batch, out_channels, g.out_area()});
  const auto pw_t = pw.t();
  const auto flipped = w.flip({2, 3}).contiguous();
  AT_DISPATCH_FLOATING_TYPES(cdt, "convops_depthwise_separable_backward", [&] {
    constexpr int64_t V = kLanes<scalar_t>;
    DwCall<scalar_t> rows_call{};  // the depthwise output and weight gradient: input rows
    rows_call.g = &g;
    rows_call.weight = w.data_ptr<scalar_t>();
    rows_call.bias = ptr_or_null<scalar_t>(b);
    rows_call.plane = padded_plane(g, V, PlaneLayouts{/*flat=*/false, /*dense=*/true});
    const auto rows_taps = tap_offsets(g, rows_call.plane);
    rows_call.taps = rows_taps.data();
    DwCall<scalar_t> grad_call = rows_call;  // the input gradient: read-add-writes
    grad_call.plane = padded_plane(g, V);
    const auto grad_taps = tap_offsets(g, grad_call.plane);
    grad_call.taps = grad_taps.data();
    // Stride 1, m == 1: the input gradient is a forward depthwise conv of the tile.
    const auto as_forward = input_grad_as_forward(g);
    DwCall<scalar_t> forward_call{};
    std::vector<int64_t> forward_taps;
    int64_t forward_buf = 0;
    if (as_forward) {
      forward_call.weight = flipped.data_ptr<scalar_t>();
      forward_call.plane = padded_plane(*as_forward, V, PlaneLayouts{/*flat=*/false, /*dense=*/true});
      forward_taps = tap_offsets(*as_forward, forward_call.plane);
      forward_call.taps = forward_taps.data();
      forward_buf = forward_call.plane.buffer_elems(
          rows_read(*as_forward, 0, std::min(g.in_h, band_rows * g.stride_h + tile_rows)).r1);
    }
    const int64_t rows_buf = rows_call.plane.buffer_elems(rows_read(g, 0, band_rows).r1);
    const int64_t grad_buf = grad_call.plane.buffer_elems(rows_read(g, 0, tile_rows).r1);
    parallel_gemm_for(shares, [&](int64_t share_begin, int64_t share_end) {
      const ScratchBuffer plane_buf(std::max({rows_buf, grad_buf, forward_buf}), x.options());
      const ScratchBuffer tile_buf(mid * tile_rows * g.out_w, x.options());
      const ScratchBuffer mid_buf(need_pw ? mid * band_rows * g.out_w : 0, x.options());
      for (int64_t share = share_begin; share < share_end; ++share) {
        scalar_t* dw_sum = dw_sums[share].data_ptr<scalar_t>();
        scalar_t* db_sum = db_sums[share].data_ptr<scalar_t>();
        for (int64_t item = share * items / shares; item < (share + 1) * items / shares; ++item) {
          const int64_t n = item / bands;
          auto sb = separable_band(g, item % bands, bands, band_rows, need_x);
          const int64_t tile_area = (sb.tile.t1 - sb.tile.t0) * g.out_w;
          sb.tile.stride = tile_area;
          const int64_t own_area = (sb.own1 - sb.own0) * g.out_w;
          const auto gy_n = gy_images.select(0, n);
          scalar_t* tile = tile_buf.tensor().data_ptr<scalar_t>();
          auto tile_view = tile_buf.tensor().narrow(0, 0, mid * tile_area).view({mid, tile_area});
          if (need_x || need_dw || need_db) {
            at::mm_out(tile_view, pw_t, gy_n.narrow(1, sb.tile.t0 * g.out_w, tile_area));
          }
          if (need_pw) {
            DwCall<scalar_t> a = rows_call;
            a.src = x.data_ptr<scalar_t>() + n * g.in_channels * g.in_area();
            a.buf = plane_buf.tensor().data_ptr<scalar_t>();
            a.dst = mid_buf.tensor().data_ptr<scalar_t>();
            a.begin = sb.own0;
            a.end = sb.own1;
            forward_band_isa(a);
            const auto band_mid = mid_buf.tensor().narrow(0, 0, mid * own_area).view({mid, own_area});
            pw_sums[share].addmm_(gy_n.narrow(1, sb.own0 * g.out_w, own_area), band_mid.t());
          }
          if (need_db) {
            DwCall<scalar_t> a = rows_call;
            a.src = tile;
            a.tile = sb.tile;
            a.dst = db_sum;
            a.begin = sb.own0;
            a.end = sb.own1;
            bias_grad_band_isa(a);
          }
          if (need_dw) {
            DwCall<scalar_t> a = rows_call;
            a.src = x.data_ptr<scalar_t>() + n * g.in_channels * g.in_area();
            a.src2 = tile;
            a.tile = sb.tile;
            a.buf = plane_buf.tensor().data_ptr<scalar_t>();
            a.dst = dw_sum;
            a.begin = sb.own0;
            a.end = sb.own1;
            weight_grad_band_isa(a);
          }
          if (need_x && sb.in0 < sb.in1 && as_forward) {
            // A depthwise conv of the tile (see depthwise_input_grad), its rows numbered from
            // the tile's first: padding grows by t0.
            Conv2dGeometry f = *as_forward;
            f.in_h = sb.tile.t1 - sb.tile.t0;
            f.pad_h += sb.tile.t0;
            DwCall<scalar_t> a = forward_call;
            a.g = &f;
            a.src = tile;
            a.buf = plane_buf.tensor().data_ptr<scalar_t>();
            a.dst = grads[0].data_ptr<scalar_t>() + (n * g.in_channels * g.in_h + sb.in0) * g.in_w;
            a.dst_stride = g.in_area();
            a.begin = sb.in0;
            a.end = sb.in1;
            forward_band_isa(a);
          } else if (need_x && sb.in0 < sb.in1) {
            DwCall<scalar_t> a = grad_call;
            a.src = tile;
            a.tile = sb.tile;
            a.buf = plane_buf.tensor().data_ptr<scalar_t>();
            a.dst = grads[0].data_ptr<scalar_t>() + n * g.in_channels * g.in_area();
            a.begin = sb.in0;
            a.end = sb.in1;
            input_grad_band_isa(a);
          }
        }
      }
    });
  });
  if (need_dw) grads[1] = sum_in_order(dw_sums).view({mid, 1, g.kernel_h, g.kernel_w});
  if (need_db) grads[2] = sum_in_order(db_sums);
  if (need_pw) grads[3] = sum_in_order(pw_sums).view({out_channels, mid, 1, 1});
  return grads;
}

// ---- operator entry points

at::Tensor depthwise_conv2d_op(const at::Tensor& input, const at::Tensor& weight,
                               const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation) {
  const auto g = depthwise_conv2d_geometry(input, weight, bias, stride, padding, dilation);
  return depthwise_forward(input, weight, bias, g);
}

at::Tensor depthwise_separable_conv2d_op(const at::Tensor& input, const at::Tensor& dw_weight,
                                         const at::Tensor& pw_weight,
                                         const c10::optional<at::Tensor>& dw_bias,
                                         const c10::optional<at::Tensor>& pw_bias,
                                         at::IntArrayRef stride, at::IntArrayRef padding,
                                         at::IntArrayRef dilation) {
  const auto g = depthwise_conv2d_geometry(input, dw_weight, dw_bias, stride, padding, dilation);
  check_pointwise_weight(pw_weight, pw_bias, input, g);
  return separable_forward_compute(input, dw_weight, pw_weight, dw_bias, pw_bias, g)
      .to(input.scalar_type())
      .contiguous(conv_output_format(input, dw_weight));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> depthwise_separable_conv2d_backward_op(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& dw_weight,
    const at::Tensor& pw_weight, const c10::optional<at::Tensor>& dw_bias, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, std::array<bool, 4> output_mask) {
  const auto g = depthwise_conv2d_geometry(input, dw_weight, dw_bias, stride, padding, dilation);
  check_pointwise_weight(pw_weight, c10::nullopt, input, g);
  TORCH_CHECK(grad_output.device() == input.device() &&
                  grad_output.scalar_type() == input.scalar_type(),
              "depthwise_separable_conv2d_backward: expected grad_output on ", input.device(),
              " of type ", input.scalar_type(), ", but got grad_output on ", grad_output.device(),
              " of type ", grad_output.scalar_type());
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == g.batch &&
                  grad_output.size(1) == pw_weight.size(0) && grad_output.size(2) == g.out_h &&
                  grad_output.size(3) == g.out_w,
              "depthwise_separable_conv2d_backward: expected grad_output of size ",
              sizes_str(std::array<int64_t, 4>{g.batch, pw_weight.size(0), g.out_h, g.out_w}),
              ", but got ", grad_output.sizes());
  auto grads = separable_backward_compute(grad_output, input, dw_weight, pw_weight, dw_bias, g,
                                          output_mask);
  auto as_input = [&](const at::Tensor& t) { return t.defined() ? t.to(input.scalar_type()) : t; };
  auto grad_input = as_input(grads[0]);
  if (grad_input.defined()) grad_input = grad_input.contiguous(conv_output_format(input, dw_weight));
  return {grad_input, as_input(grads[1]), as_input(grads[2]), as_input(grads[3])};
}

}  // namespace

at::Tensor depthwise_forward(const at::Tensor& input, const at::Tensor& weight,
                             const c10::optional<at::Tensor>& bias, const Conv2dGeometry& g) {
  if (!is_depthwise(g)) return {};
  return forward_compute(input, weight, bias, g)
      .to(input.scalar_type())
      .contiguous(conv_output_format(input, weight));
}

at::Tensor depthwise_input_grad(const at::Tensor& grad_output, const at::Tensor& weight,
                                const c10::optional<at::Tensor>& bias, const Conv2dGeometry& g) {
  if (!is_depthwise(g)) return {};
  if (const auto f = input_grad_as_forward(g)) {
    return forward_compute(grad_output, weight.flip({2, 3}), bias, *f)
        .to(grad_output.scalar_type())
        .contiguous(conv_output_format(grad_output, weight));
  }
  return input_grad_compute(grad_output, weight, bias, g)
      .to(grad_output.scalar_type())
      .contiguous(conv_output_format(grad_output, weight));
}

at::Tensor depthwise_weight_grad(const at::Tensor& grad_output, const at::Tensor& input,
                                 const Conv2dGeometry& g) {
  if (!is_depthwise(g)) return {};
  return weight_grad_compute(grad_output, input, g).to(input.scalar_type());
}

TORCH_LIBRARY_IMPL(convops, CPU, m) {
  m.impl("depthwise_conv2d", &depthwise_conv2d_op);
  m.impl("depthwise_separable_conv2d", &depthwise_separable_conv2d_op);
  m.impl("depthwise_separable_conv2d_backward", &depthwise_separable_conv2d_backward_op);
}

}  // namespace convops::cpu
