// Grouped convolution with few channels per group on the CPU (ResNeXt: 4 channels per group,
// 32 groups). The im2col+GEMM path runs one tiny GEMM per group and tile there; this file
// instead runs all groups through one direct kernel:
//
//   out[o][oh][ow] = bias[o] + sum_{c, ki, kj} W[c][ki][kj][o] * X[c][oh*s_h + ki*d_h - p_h]
//                                                               [ow*s_w + kj*d_w - p_w]
//
// per (image, group, band of output rows). X is a "virtual" image: the source zero-padded and,
// for the input gradient, zero-upsampled by the stride. A band of X is first packed into a
// small per-thread buffer (zero borders, and for stride s_w > 1 split into s_w column phases
// so that every tap reads contiguous memory), the group's weights are packed once as
// [c*kh*kw][o] blocks, and a register-blocked micro-kernel keeps (block of output channels x
// strip of output width) accumulators in vector registers: one vector load of X feeds every
// output channel of the block, one weight broadcast feeds the whole strip.
//
//   forward        X = input,                                 W = weight
//   input grad     X = grad_output, stride 1, padding          W = weight transposed and
//                  d*(k-1)-p (gather form, no scatter, no        flipped (a correlation)
//                  atomics); with stride s > 1, one such correlation per (row, column) phase
//                  of the input, each with only the taps that reach it (PhaseTaps)
//   weight grad    dW[o][c][ki][kj] = sum dy[o][oh][ow] * X[c][...]: the same packed X band
//                  and a packed grad_output band; vector partial sums per fixed slice of the
//                  items, reduced in slice order (deterministic, whatever the thread count).
//
// The loops are compiled for AVX-512, AVX2+FMA and baseline x86-64 (intrinsics in functions
// with target attributes; the variant is picked once by CPUID), never with -march=native.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <optional>
#include <type_traits>
#include <vector>

#include "cpu_parallel.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define CONVOPS_X86_KERNELS 1
#endif

#include "../common/conv_gemm.h"
#include "direct_kernels.h"

#define GROUPED_INLINE inline __attribute__((always_inline))

namespace convops::cpu {
namespace {

std::atomic<int64_t> grouped_kernel_calls{0};

// ----------------------------------------------------------------------------- vector traits
// V: vector type, L: lanes, kAccRegs: accumulators the micro-kernels may keep in registers.

template <typename T, int N>
struct GenericVec {  // baseline: plain arrays the compiler vectorises with SSE2
  using Scalar = T;
  struct V {
    T v[N];
  };
  static constexpr int L = N;
  static constexpr int kAccRegs = 8;
  static GROUPED_INLINE V zero() {
    V r;
    for (int i = 0; i < N; ++i) r.v[i] = T(0);
    return r;
  }
  static GROUPED_INLINE V load(const T* p) {
    V r;
    for (int i = 0; i < N; ++i) r.v[i] = p[i];
    return r;
  }
  static GROUPED_INLINE V bcast(T x) {
    V r;
    for (int i = 0; i < N; ++i) r.v[i] = x;
    return r;
  }
  static GROUPED_INLINE V fma(V a, V b, V c) {
    for (int i = 0; i < N; ++i) c.v[i] += a.v[i] * b.v[i];
    return c;
  }
  static GROUPED_INLINE V add(V a, V b) {
    for (int i = 0; i < N; ++i) a.v[i] += b.v[i];
    return a;
  }
  static GROUPED_INLINE void store(T* p, V a) {
    for (int i = 0; i < N; ++i) p[i] = a.v[i];
  }
  static GROUPED_INLINE V in_register(V a) { return a; }
  static GROUPED_INLINE void store_lanes(T* p, V a, int lo, int hi) {
    for (int i = lo; i < hi; ++i) p[i] = a.v[i];
  }
  // even[i] = src[2i], odd[i] = src[2i + 1] for i < N.
  static GROUPED_INLINE void deinterleave2(const T* src, T* even, T* odd) {
    for (int i = 0; i < N; ++i) even[i] = src[2 * i], odd[i] = src[2 * i + 1];
  }
  // The inverse: dst[2i] = even[i], dst[2i + 1] = odd[i] for i < N.
  static GROUPED_INLINE void interleave2(const T* even, const T* odd, T* dst) {
    for (int i = 0; i < N; ++i) dst[2 * i] = even[i], dst[2 * i + 1] = odd[i];
  }
};

// ----------------------------------------------------------------------------- the problem

// A strided 4-D source (N, channels, H, W), read through its strides (any memory format).
template <typename T>
struct Source {
  const T* data;
  int64_t stride_n, stride_c, stride_h, stride_w;
  int64_t height, width;
};

// One correlation over all groups: see the file comment. The padding may be negative (an
// input gradient with padding > dilation*(kernel-1) crops instead).
template <typename T>
struct Correlation {
  Source<T> src;
  int64_t batch = 0, groups = 1;
  int64_t channels = 0;                // reduction channels per group (of X)
  int64_t outputs = 0;                 // output channels per group
  int64_t out_h = 0, out_w = 0;
  int64_t kernel_h = 1, kernel_w = 1;
  int64_t stride_h = 1, stride_w = 1, dilation_h = 1, dilation_w = 1, pad_h = 0, pad_w = 0;

  int64_t taps() const { return kernel_h * kernel_w; }
  int64_t reduction() const { return channels * taps(); }
  int64_t out_area() const { return out_h * out_w; }
};

// Packed band geometry, shared by the forward and the weight gradient: a band of `rows`
// output rows reads `rows_in` rows of X, each stored as stride_w phases of phase_len.
//
// The micro-kernels walk "runs" of vectors. Row mode: one run per output row, rounded up to
// whole vectors. Flat mode (stride 1): output position (r, ow) of the band is element
// r * pitch + ow with pitch = the padded input row, so every tap reads pack[q + offset] for
// all q and the whole band is one run; the pitch - out_w columns per row that do not exist
// are computed and thrown away (2 of 58 at 56 wide, instead of 8 of 64 in row mode).
struct BandLayout {
  int64_t lanes;
  bool flat;
  int64_t rows, bands;      // output rows per band, bands per image
  int64_t rows_in, phase_len, row_stride, chan_stride;
  int64_t vectors;          // row mode: vectors per output row
  int64_t pitch;            // elements per output row in the band buffers
  int64_t plane;            // elements per channel of a band buffer (with overrun room)
  int64_t runs(int64_t band_rows) const { return flat ? 1 : band_rows; }
  int64_t run_vectors(int64_t band_rows) const {
    return flat ? (band_rows * pitch + lanes - 1) / lanes : vectors;
  }
  int64_t x_run_step(int64_t stride_h) const { return flat ? 0 : stride_h * row_stride; }
  int64_t buf_run_step() const { return flat ? 0 : pitch; }
};

// The budget of one band in bytes: `default_kib`, or CONVOPS_GROUPED_BAND_KB (for measuring).
int64_t band_bytes(int64_t default_kib) {
  static const int64_t env_kib = [] {
    const char* env = std::getenv("CONVOPS_GROUPED_BAND_KB");
    return env ? std::atoll(env) : int64_t(0);
  }();
  return (env_kib > 0 ? env_kib : default_kib) << 10;
}

// The direct kernels' band: ~128 KiB of packed X plus the band buffer of `buffer_channels`
// channels, L2-resident while every output channel of the group reads it kh*kw times.
// Measured: 64 KiB against 24 (which fits L1) on 256->256 g32 @28, 5-10% faster (the
// micro-kernels' per-run setup and sums spread over longer runs); 128 against 64 on
// 128->128 g32 @56 (one band of the whole 56-row image instead of two of 28), forward ~9%,
// input gradient ~11%, weight gradient 15-25% faster (half the items, the halo rows packed
// once); 256 @28 is one band either way.
constexpr int64_t kDirectBandKiB = 128;

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

template <typename T>
BandLayout band_layout(const Correlation<T>& p, int64_t lanes, int64_t buffer_channels) {
  BandLayout b{};
  b.lanes = lanes;
  b.flat = p.stride_h == 1 && p.stride_w == 1;
  b.vectors = (p.out_w + lanes - 1) / lanes;
  const int64_t reach_w = (p.kernel_w - 1) * p.dilation_w;
  if (b.flat) {
    b.phase_len = p.out_w + reach_w;  // the padded input row
    b.pitch = b.phase_len;
  } else {
    b.phase_len = b.vectors * lanes + reach_w / p.stride_w + 1;
    b.pitch = b.vectors * lanes;
  }
  b.row_stride = p.stride_w * b.phase_len;
  const int64_t per_out_row = (p.channels * p.stride_h * b.row_stride + buffer_channels * b.pitch) *
                              int64_t(sizeof(T));
  const int64_t rows = std::clamp<int64_t>(band_bytes(kDirectBandKiB) / std::max<int64_t>(1, per_out_row),
                                           1, p.out_h);
  const int64_t bands = (p.out_h + rows - 1) / rows;
  b.rows = (p.out_h + bands - 1) / bands;  // equal bands, no sliver
  b.bands = (p.out_h + b.rows - 1) / b.rows;
  b.rows_in = (b.rows - 1) * p.stride_h + (p.kernel_h - 1) * p.dilation_h + 1;
  // Flat runs read up to a vector (plus the kernel's reach) past the band's last row.
  b.chan_stride = b.rows_in * b.row_stride + (b.flat ? reach_w + lanes : 0);
  // Band buffer planes start on a vector boundary (aligned vector loads and stores).
  b.plane = round_up(b.rows * b.pitch + lanes, lanes);
  return b;
}

// Offset of each (c, ki, kj) reduction step in a packed band, relative to the output row's
// first packed row.
template <typename T>
std::vector<int64_t> tap_offsets(const Correlation<T>& p, const BandLayout& b) {
  std::vector<int64_t> offs(p.reduction());
  for (int64_t c = 0; c < p.channels; ++c) {
    for (int64_t ki = 0; ki < p.kernel_h; ++ki) {
      for (int64_t kj = 0; kj < p.kernel_w; ++kj) {
        const int64_t xw = kj * p.dilation_w;
        offs[(c * p.kernel_h + ki) * p.kernel_w + kj] =
            c * b.chan_stride + ki * p.dilation_h * b.row_stride +
            (xw % p.stride_w) * b.phase_len + xw / p.stride_w;
      }
    }
  }
  return offs;
}

// Output channels per register block (weights are zero-padded to a whole block).
int64_t output_block(int64_t outputs) {
  return outputs <= 1 ? 1 : outputs <= 2 ? 2 : outputs <= 4 ? 4 : 8;
}

// ----------------------------------------------------------------------------- forward

// Where vector v of a run lands in an output channel plane whose rows are contiguous: lanes
// [lo[i], hi[i]) of piece i go to plane + offset[i] + lane. A flat run's vector can straddle
// two output rows (and the pitch - out_w columns between them are dropped); a row-mode vector
// has one piece. The micro-kernels store their accumulators through it with masked stores, so
// the result goes from registers to the output once instead of through the band buffer.
struct VectorStore {
  int64_t offset[2];
  int32_t lo[2], hi[2];
};

// The store map of a run of `vectors` vectors: a flat band of `rows` rows, or one output row.
std::vector<VectorStore> vector_stores(const BandLayout& b, int64_t vectors, int64_t rows,
                                       int64_t out_w, int64_t row_stride) {
  std::vector<VectorStore> map(vectors);
  for (int64_t v = 0; v < vectors; ++v) {
    VectorStore& m = map[v];
    m.offset[0] = m.offset[1] = 0;
    m.lo[0] = m.hi[0] = m.lo[1] = m.hi[1] = 0;
    int pieces = 0;
    for (int64_t lane = 0; lane < b.lanes && pieces < 2;) {
      const int64_t q = v * b.lanes + lane;
      const int64_t r = b.flat ? q / b.pitch : 0, col = b.flat ? q % b.pitch : q;
      if (r >= rows) break;
      if (col >= out_w) {  // the dropped columns up to the next row
        lane += b.flat ? b.pitch - col : b.lanes;
        continue;
      }
      const int64_t n = std::min(b.lanes - lane, out_w - col);
      m.offset[pieces] = r * row_stride + col - lane;
      m.lo[pieces] = int32_t(lane);
      m.hi[pieces] = int32_t(lane + n);
      ++pieces;
      lane += n;
    }
  }
  return map;
}

// Everything one forward pass shares between its threads.
template <typename T>
struct ForwardPlan {
  Correlation<T> p;
  BandLayout band;
  const T* wpack;   // [group][block][reduction][OB]
  const T* bpack;   // [group][block][OB]
  T* out;           // (N, groups*outputs, out_h, out_w), any strides (contiguous or
  int64_t out_stride[4];  // channels_last: the output is written in its final format)
  int64_t ob;       // output block
  const int64_t* offs;
  int64_t x_pack_elems;  // per thread scratch: X pack, then the band buffer (ob planes) when
                         // the results do not go straight to the output
  // Direct stores (output rows contiguous, a vector straddles at most two rows): the maps of a
  // full band and of the last band; null: through the band buffer.
  const VectorStore* stores_full = nullptr;
  const VectorStore* stores_last = nullptr;
};

// ----------------------------------------------------------------------------- weight grad

// Everything one weight-gradient pass shares between its threads. Items are ordered
// (group, image, band) so that a thread's vector partial sums stay with one group at a time.
template <typename T>
struct WeightGradPlan {
  Correlation<T> p;
  BandLayout band;
  Source<T> dy;        // grad_output (N, groups*outputs, out_h, out_w)
  int64_t ob;          // output block
  const int64_t* offs;
  int64_t x_pack_elems, dy_pack_elems;  // per thread scratch: X pack, dy pack, then the
                                        // vector sums of one group
};

template <typename T>
int64_t padded_outputs(const WeightGradPlan<T>& w) {
  return (w.p.outputs + w.ob - 1) / w.ob * w.ob;
}

// The sum of a vector's `lanes` lanes, in lane order (the same bits whichever thread adds).
template <typename T>
T lane_sum(const T* s, int64_t lanes) {
  T total = T(0);
  for (int64_t l = 0; l < lanes; ++l) total += s[l];
  return total;
}

// Stores the lanes' sum (in lane order) of the group's vector sums as the slice's partial
// result for that group; `slot` is the group's place among the groups the slice touches.
template <typename T>
void flush_group_sums(const WeightGradPlan<T>& w, int64_t slot, int64_t lanes, T* sums,
                      T* partial) {
  const auto& p = w.p;
  const int64_t per_o = p.reduction();
  T* dst = partial + slot * p.outputs * per_o;
  for (int64_t o = 0; o < p.outputs; ++o) {
    for (int64_t k = 0; k < per_o; ++k) {
      dst[o * per_o + k] = lane_sum(sums + (o * per_o + k) * lanes, lanes);
    }
  }
  std::memset(sums, 0, sizeof(T) * padded_outputs(w) * per_o * lanes);
}

// ----------------------------------------------------------------------------- column phases

// Two column phases of the same rows (even, odd: rows of even_w and odd_w contiguous elements,
// one after the other) interleaved into output rows (row i of a plane at dst_row * i, the
// planes dst_plane apart, elements contiguous).
template <typename T>
struct ColumnPhases {
  const T* even;
  const T* odd;
  int64_t even_w, odd_w;
  T* dst;
  int64_t dst_row;
  int64_t rows_per_plane, dst_plane;  // rows of one (image, channel) plane; its stride in dst
};

// ----------------------------------------------------------------------------- Winograd

// F(2x2, 3x3) Winograd (Lavin & Gray 2016) for the 3x3 stride-1 undilated float correlations
// (the forward and the stride-1 input gradient): a 2x2 output tile of one output channel is
// A^T [sum_c U[c] . V[c]] A, with V = B^T d B the tile's 4x4 input patch transformed and
// U = G g G^T the filter transformed once per call, so each tile costs 16 multiply-adds per
// (output, input) channel pair instead of 36. The vectors run across L neighbouring tiles of a
// tile row; a tile's input columns 2t..2t+3 are then the even and odd columns of the padded
// row at t and t + 1, so the pack splits each input row into its even and odd columns.
struct WinogradPlan {
  Correlation<float> p;
  const float* u;       // [group][16][channels][kpad]
  const float* u_rows;  // [group][3][channels][kpad][4]: G g_i of each kernel row i (below)
  const float* bias;    // [groups * outputs] or null
  int64_t kpad;         // outputs rounded up to a multiple of 4 (u and the M buffer)
  float* out;           // (N, groups*outputs, out_h, out_w), rows contiguous
  int64_t out_stride[3];  // n, channel, row
  int64_t tiles_w, tiles_h, blocks_w;  // tiles per row and per column, L-tile blocks per row
  int64_t band_tiles, bands;           // tile rows per item, items per (image, group)
  int64_t half_len;     // even (then odd) columns of one packed row: >= tiles_w + 1
  int64_t chan_stride;  // packed rows of one channel: (2 * band_tiles + 2) rows of 2*half_len
  int64_t pack_elems, v_elems, m_elems;  // per thread scratch: pack, V (16 x channels x L),
                                          // M (16 x kpad x L)
};
// The row kernels (AVX-512) take the same correlations by 1-D F(2, 3) along the rows and
// directly over the kernel rows: output row r of channel k is sum over kernel rows i and
// channels c of A^T [U1[i][c][k] . V1[r + i][c]] (2 outputs per tile: M0 + M1 + M2,
// M1 - M2 - M3), with V1 = (d0 - d2, d1 + d2, d2 - d1, d1 - d3) of a tile's 4 input columns
// and U1 = G g_i. 24 multiply-adds per (output, channel, tile row pair) instead of 16, but
// each source row is transformed once (4 vectors, read straight from the source, no pack)
// and the sums stay in registers until the outputs: with 8 channels per group the transforms
// and the staging of V and M, not the products, had set F(2x2, 3x3)'s time.

// The weight gradient of the same correlations by F(2x2, 3x3): with dM = A dY A^T the 4x4
// adjoint of a 2x2 grad_output tile, U's gradient is the sum over tiles of dM . V and
// dW = G^T dU G (applied once, to the reduced sums). A band's V blocks and the rows of its
// A dY are transformed first, then multiplied an (xi, block of outputs, block of channels) at
// a time (dM's columns formed on the way): 16 instead of 36 multiply-adds per (output,
// channel, tile). The staged rows leave out A's signs in its last row and column, so dU[xi]
// is -1 times the true one where exactly one of xi's row and column is 3 (restored in the
// final transform). The bias gradient comes free: a tile's sum is its dM[5]. Items are
// ordered (group, image, band) like the direct weight gradient's, and each slice of them
// stores per group it touches [outputs][channels][16] lane sums, then (with bias) [outputs]
// bias sums.
struct WinogradGradPlan {
  WinogradPlan geo;     // p (src = input), tiles, bands and pack layout; u, out, bias unused
  Source<float> dy;     // grad_output, rows contiguous
  bool bias;            // also the bias gradient
  int64_t cpad, opad;   // channels and outputs rounded up to 4 (the products' blocks)
  int64_t blocks;       // L-tile blocks of a band: band_tiles * blocks_w
  int64_t v_elems, dm_elems, sum_elems;  // per thread scratch after the pack: V
                                         // [16][blocks][cpad][L], A dY rows
                                         // [8 (row, column)][blocks][opad][L],
                                         // sums [opad][cpad][16][kSumLanes] then bias
                                         // sums [opad][L]
  int64_t group_elems() const {
    return geo.p.outputs * geo.p.channels * 16 + (bias ? geo.p.outputs : 0);
  }
  // Lanes of each (output, channel, xi) sum: a vector's lanes are folded to 8 on the way in
  // (with AVX-512, 32 KiB of sums instead of 64, and half the bytes of each update: the
  // updates had been ~10% of the weight gradient's time).
  static constexpr int64_t kSumLanes = 8;
  // Staged vectors per (block, channel): V's 16; per (block, output): A dY's 4 rows x 2.
  static constexpr int64_t kVPlanes = 16, kRowPlanes = 8;
};

// Stores the lanes' sums (in lane order) of the group's sums as the slice's partial result for
// that group (`slot`: the group's place among the slice's groups), and clears them.
inline void winograd_grad_flush(const WinogradGradPlan& w, int64_t slot, int64_t lanes,
                                float* sums, float* partial) {
  const auto& p = w.geo.p;
  const int64_t sl = WinogradGradPlan::kSumLanes;
  float* dst = partial + slot * w.group_elems();
  for (int64_t o = 0; o < p.outputs; ++o)
    for (int64_t c = 0; c < p.channels; ++c)
      for (int64_t xi = 0; xi < 16; ++xi)
        dst[(o * p.channels + c) * 16 + xi] =
            lane_sum(sums + ((o * w.cpad + c) * 16 + xi) * sl, sl);
  if (w.bias) {
    const float* bias_sums = sums + w.opad * w.cpad * 16 * sl;
    for (int64_t o = 0; o < p.outputs; ++o) {
      dst[p.outputs * p.channels * 16 + o] = lane_sum(bias_sums + o * lanes, lanes);
    }
  }
  std::memset(sums, 0, sizeof(float) * w.sum_elems);
}

// ----------------------------------------------------------------------------- ISA selection

// ----------------------------------------------------------------------------- ISA variants

template <typename T>
struct KernelSet {
  int64_t lanes;
  bool masked_stores;  // Isa::store_lanes is a masked store (the direct output stores)
  void (*forward)(const ForwardPlan<T>&, int64_t, int64_t, T*);
  void (*weight_grad)(const WeightGradPlan<T>&, int64_t, int64_t, T*, T*);
  void (*interleave_columns)(const ColumnPhases<T>&, int64_t, int64_t);
  // float only, AVX2 and AVX-512; null: none
  void (*winograd)(const WinogradPlan&, int64_t, int64_t, float*) = nullptr;
  void (*winograd_weight_grad)(const WinogradGradPlan&, int64_t, int64_t, float*, float*) = nullptr;
  void (*winograd_rows)(const WinogradPlan&, int64_t, int64_t, float*) = nullptr;  // AVX-512
};

#define VEC_FN static inline __attribute__((always_inline))

// The packing loops copy rows of a few dozen elements: GCC would turn them into memmove and
// memset calls, which cost more than such a copy (14% of the forward's time when it did).
#pragma GCC push_options
#pragma GCC optimize("no-tree-loop-distribute-patterns")

namespace baseline {
using FloatVec = GenericVec<float, 8>;
using DoubleVec = GenericVec<double, 4>;
#include "grouped_conv2d_kernels.inc"
}  // namespace baseline

#ifdef CONVOPS_X86_KERNELS
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
struct FloatVec {
  using Scalar = float;
  using V = __m256;
  static constexpr int L = 8;
  static constexpr int kAccRegs = 12;  // of 16 ymm registers
  VEC_FN V zero() { return _mm256_setzero_ps(); }
  VEC_FN V load(const float* p) { return _mm256_loadu_ps(p); }
  VEC_FN V bcast(float x) { return _mm256_set1_ps(x); }
  VEC_FN V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  VEC_FN V add(V a, V b) { return _mm256_add_ps(a, b); }
  VEC_FN V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  VEC_FN void store(float* p, V a) { _mm256_storeu_ps(p, a); }
  VEC_FN __m256i lane_mask(int lo, int hi) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(lo), lane),
                               _mm256_cmpgt_epi32(_mm256_set1_epi32(hi), lane));
  }
  // Lanes [lo, hi) of a to p[lo..hi) (masked: the other lanes' addresses are never touched).
  VEC_FN void store_lanes(float* p, V a, int lo, int hi) {
    _mm256_maskstore_ps(p, lane_mask(lo, hi), a);
  }
  // p[lo..hi) into lanes [lo, hi), zeros elsewhere (the other addresses are never touched).
  VEC_FN V load_lanes(const float* p, int lo, int hi) {
    return _mm256_maskload_ps(p, lane_mask(lo, hi));
  }
  // even = (a0, a2, .., b0, b2, ..), odd = (a1, a3, .., b1, b3, ..).
  VEC_FN void unzip(V a, V b, V& even, V& odd) {
    even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88)), 0xD8));
    odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0xDD)), 0xD8));
  }
  // The inverse: lo = (e0, o0, e1, o1, ..), hi = the rest.
  VEC_FN void zip(V e, V o, V& lo, V& hi) {
    const V l = _mm256_unpacklo_ps(e, o), h = _mm256_unpackhi_ps(e, o);  // per 128-bit lane
    lo = _mm256_permute2f128_ps(l, h, 0x20);
    hi = _mm256_permute2f128_ps(l, h, 0x31);
  }
  // even[i] = src[2i], odd[i] = src[2i + 1] for i < L.
  VEC_FN void deinterleave2(const float* src, float* even, float* odd) {
    V e, o;
    unzip(load(src), load(src + L), e, o);
    store(even, e);
    store(odd, o);
  }
  // dst[2i] = even[i], dst[2i + 1] = odd[i] for i < L.
  VEC_FN void interleave2(const float* even, const float* odd, float* dst) {
    V lo, hi;
    zip(load(even), load(odd), lo, hi);
    store(dst, lo);
    store(dst + L, hi);
  }
  // A loaded value kept in a register: GCC would otherwise fold the load into every FMA that
  // uses it, reloading it once per use (the micro-kernels reuse each load several times).
  VEC_FN V in_register(V a) {
    asm("" : "+v"(a));
    return a;
  }
  // p[0, kSumLanes) += a (the weight gradient's Winograd sums: see avx512::FloatVec).
  static constexpr int kSumLanes = 8;
  VEC_FN void fold_add(float* p, V a) { store(p, add(load(p), a)); }
};

struct DoubleVec {
  using Scalar = double;
  using V = __m256d;
  static constexpr int L = 4;
  static constexpr int kAccRegs = 12;
  VEC_FN V zero() { return _mm256_setzero_pd(); }
  VEC_FN V load(const double* p) { return _mm256_loadu_pd(p); }
  VEC_FN V bcast(double x) { return _mm256_set1_pd(x); }
  VEC_FN V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  VEC_FN V add(V a, V b) { return _mm256_add_pd(a, b); }
  VEC_FN void store(double* p, V a) { _mm256_storeu_pd(p, a); }
  VEC_FN void store_lanes(double* p, V a, int lo, int hi) {
    const __m256i lane = _mm256_setr_epi64x(0, 1, 2, 3);
    const __m256i mask = _mm256_andnot_si256(_mm256_cmpgt_epi64(_mm256_set1_epi64x(lo), lane),
                                             _mm256_cmpgt_epi64(_mm256_set1_epi64x(hi), lane));
    _mm256_maskstore_pd(p, mask, a);
  }
  VEC_FN void deinterleave2(const double* src, double* even, double* odd) {
    const V a = load(src), b = load(src + 4);
    _mm256_storeu_pd(even, _mm256_permute4x64_pd(_mm256_unpacklo_pd(a, b), 0xD8));
    _mm256_storeu_pd(odd, _mm256_permute4x64_pd(_mm256_unpackhi_pd(a, b), 0xD8));
  }
  VEC_FN void interleave2(const double* even, const double* odd, double* dst) {
    const V e = load(even), o = load(odd);
    const V lo = _mm256_unpacklo_pd(e, o), hi = _mm256_unpackhi_pd(e, o);
    _mm256_storeu_pd(dst, _mm256_permute2f128_pd(lo, hi, 0x20));
    _mm256_storeu_pd(dst + 4, _mm256_permute2f128_pd(lo, hi, 0x31));
  }
  // As avx2::FloatVec::in_register.
  VEC_FN V in_register(V a) {
    asm("" : "+v"(a));
    return a;
  }
};
#include "grouped_conv2d_kernels.inc"
#include "grouped_winograd.inc"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f")
namespace avx512 {
struct FloatVec {
  using Scalar = float;
  using V = __m512;
  static constexpr int L = 16;
  static constexpr int kAccRegs = 24;  // of 32 zmm registers
  VEC_FN V zero() { return _mm512_setzero_ps(); }
  VEC_FN V load(const float* p) { return _mm512_loadu_ps(p); }
  VEC_FN V bcast(float x) { return _mm512_set1_ps(x); }
  VEC_FN V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  VEC_FN V add(V a, V b) { return _mm512_add_ps(a, b); }
  VEC_FN V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  VEC_FN void store(float* p, V a) { _mm512_storeu_ps(p, a); }
  VEC_FN __mmask16 lane_mask(int lo, int hi) {
    return __mmask16(((1u << hi) - 1) & ~((1u << lo) - 1));
  }
  VEC_FN void store_lanes(float* p, V a, int lo, int hi) {
    _mm512_mask_storeu_ps(p, lane_mask(lo, hi), a);
  }
  VEC_FN V load_lanes(const float* p, int lo, int hi) {
    return _mm512_maskz_loadu_ps(lane_mask(lo, hi), p);
  }
  VEC_FN void unzip(V a, V b, V& even, V& odd) {
    const __m512i even_idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd_idx = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    even = _mm512_permutex2var_ps(a, even_idx, b);
    odd = _mm512_permutex2var_ps(a, odd_idx, b);
  }
  VEC_FN void zip(V e, V o, V& lo, V& hi) {
    const __m512i lo_idx = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi_idx = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    lo = _mm512_permutex2var_ps(e, lo_idx, o);
    hi = _mm512_permutex2var_ps(e, hi_idx, o);
  }
  VEC_FN void deinterleave2(const float* src, float* even, float* odd) {
    V e, o;
    unzip(load(src), load(src + L), e, o);
    store(even, e);
    store(odd, o);
  }
  VEC_FN void interleave2(const float* even, const float* odd, float* dst) {
    V lo, hi;
    zip(load(even), load(odd), lo, hi);
    store(dst, lo);
    store(dst + L, hi);
  }
  // As avx2::FloatVec::in_register.
  VEC_FN V in_register(V a) {
    asm("" : "+v"(a));
    return a;
  }
  // (a[1], .., a[L - 1], next[0]).
  VEC_FN V shift_in(V a, V next) {
    return _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(next), _mm512_castps_si512(a), 1));
  }
  // p[0, kSumLanes) += a's lanes added pairwise (i and i + 8).
  static constexpr int kSumLanes = 8;
  VEC_FN void fold_add(float* p, V a) {
    const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
    const __m256 folded = _mm256_add_ps(_mm512_castps512_ps256(a), hi);
    _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), folded));
  }
};

struct DoubleVec {
  using Scalar = double;
  using V = __m512d;
  static constexpr int L = 8;
  static constexpr int kAccRegs = 24;
  VEC_FN V zero() { return _mm512_setzero_pd(); }
  VEC_FN V load(const double* p) { return _mm512_loadu_pd(p); }
  VEC_FN V bcast(double x) { return _mm512_set1_pd(x); }
  VEC_FN V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  VEC_FN V add(V a, V b) { return _mm512_add_pd(a, b); }
  VEC_FN void store(double* p, V a) { _mm512_storeu_pd(p, a); }
  VEC_FN void store_lanes(double* p, V a, int lo, int hi) {
    _mm512_mask_storeu_pd(p, __mmask8(((1u << hi) - 1) & ~((1u << lo) - 1)), a);
  }
  VEC_FN void deinterleave2(const double* src, double* even, double* odd) {
    const __m512i even_idx = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
    const __m512i odd_idx = _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15);
    const V a = load(src), b = load(src + 8);
    _mm512_storeu_pd(even, _mm512_permutex2var_pd(a, even_idx, b));
    _mm512_storeu_pd(odd, _mm512_permutex2var_pd(a, odd_idx, b));
  }
  VEC_FN void interleave2(const double* even, const double* odd, double* dst) {
    const __m512i lo_idx = _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11);
    const __m512i hi_idx = _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15);
    const V e = load(even), o = load(odd);
    _mm512_storeu_pd(dst, _mm512_permutex2var_pd(e, lo_idx, o));
    _mm512_storeu_pd(dst + 8, _mm512_permutex2var_pd(e, hi_idx, o));
  }
  // As avx2::FloatVec::in_register.
  VEC_FN V in_register(V a) {
    asm("" : "+v"(a));
    return a;
  }
};

#include "grouped_conv2d_kernels.inc"
#include "grouped_winograd.inc"
}  // namespace avx512
#pragma GCC pop_options
#endif
// The drivers below fill and copy whole buffers: memset/memcpy calls are what they want.
#pragma GCC pop_options

enum class IsaLevel { kAvx512, kAvx2, kBaseline };

// CONVOPS_GROUPED_ISA=avx2|default caps the choice, so the other variants can be tested on
// an AVX-512 machine.
IsaLevel detect_isa() {
  const char* cap = std::getenv("CONVOPS_GROUPED_ISA");
  const bool allow_avx512 = !cap || std::strcmp(cap, "avx512f") == 0;
  const bool allow_avx2 = allow_avx512 || std::strcmp(cap, "avx2") == 0;
#ifdef CONVOPS_X86_KERNELS
  __builtin_cpu_init();
  if (allow_avx512 && __builtin_cpu_supports("avx512f")) return IsaLevel::kAvx512;
  if (allow_avx2 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return IsaLevel::kAvx2;
#endif
  return IsaLevel::kBaseline;
}

// The kernels of the best ISA this CPU has, picked once.
template <typename T, class Vec512, class Vec2, class VecBase>
KernelSet<T> pick_kernels() {
  static const IsaLevel isa = detect_isa();
#ifdef CONVOPS_X86_KERNELS
  constexpr bool is_float = std::is_same_v<T, float>;
  if (isa == IsaLevel::kAvx512) {
    return {Vec512::L, true, &avx512::forward, &avx512::weight_grad, &avx512::interleave_columns,
            is_float ? &avx512::winograd : nullptr, is_float ? &avx512::winograd_weight_grad : nullptr,
            is_float ? &avx512::winograd_rows : nullptr};
  }
  if (isa == IsaLevel::kAvx2) {
    return {Vec2::L, true, &avx2::forward, &avx2::weight_grad, &avx2::interleave_columns,
            is_float ? &avx2::winograd : nullptr, is_float ? &avx2::winograd_weight_grad : nullptr};
  }
#endif
  return {VecBase::L, false, &baseline::forward, &baseline::weight_grad, &baseline::interleave_columns};
}

template <typename T>
const KernelSet<T>& kernels();

#ifdef CONVOPS_X86_KERNELS
template <>
const KernelSet<float>& kernels<float>() {
  static const auto k = pick_kernels<float, avx512::FloatVec, avx2::FloatVec, baseline::FloatVec>();
  return k;
}
template <>
const KernelSet<double>& kernels<double>() {
  static const auto k = pick_kernels<double, avx512::DoubleVec, avx2::DoubleVec, baseline::DoubleVec>();
  return k;
}
#else
template <>
const KernelSet<float>& kernels<float>() {
  static const auto k = pick_kernels<float, baseline::FloatVec, baseline::FloatVec, baseline::FloatVec>();
  return k;
}
template <>
const KernelSet<double>& kernels<double>() {
  static const auto k = pick_kernels<double, baseline::DoubleVec, baseline::DoubleVec, baseline::DoubleVec>();
  return k;
}
#endif

// ----------------------------------------------------------------------------- drivers

// The X pack, rounded up so that what follows it in the scratch stays vector-aligned.
template <typename T>
int64_t x_pack_elems(const Correlation<T>& p, const BandLayout& b) {
  return round_up(p.channels * b.chan_stride, b.lanes);
}

template <typename T>
Source<T> source_of(const at::Tensor& t) {
  return {t.data_ptr<T>(), t.stride(0), t.stride(1), t.stride(2), t.stride(3), t.size(2),
          t.size(3)};
}

// weight_at(group, o, c, ki, kj) packed as [group][block][c][ki][kj][OB], bias as [group][block][OB].
template <typename T, class WeightAt>
void pack_weights(const Correlation<T>& p, int64_t ob, const WeightAt& weight_at,
                  const T* bias, std::vector<T>& wpack, std::vector<T>& bpack) {
  const int64_t blocks = (p.outputs + ob - 1) / ob, k_total = p.reduction();
  wpack.assign(p.groups * blocks * k_total * ob, T(0));
  bpack.assign(p.groups * blocks * ob, T(0));
  for (int64_t grp = 0; grp < p.groups; ++grp) {
    for (int64_t o = 0; o < p.outputs; ++o) {
      const int64_t blk = o / ob, lane = o % ob;
      T* wb = wpack.data() + (grp * blocks + blk) * k_total * ob;
      for (int64_t c = 0; c < p.channels; ++c)
        for (int64_t ki = 0; ki < p.kernel_h; ++ki)
          for (int64_t kj = 0; kj < p.kernel_w; ++kj)
            wb[((c * p.kernel_h + ki) * p.kernel_w + kj) * ob + lane] = weight_at(grp, o, c, ki, kj);
      if (bias) bpack[(grp * blocks + blk) * ob + lane] = bias[grp * p.outputs + o];
    }
  }
}

// F(2x2, 3x3) Winograd: float 3x3 stride-1 undilated correlations on AVX2 / AVX-512, with
// tile rows that fill at least 3/4 of the vector lanes (7 tiles of 16 lanes: 1.2x slower),
// and with AVX-512 at least 8 channels per group on both sides: there with 4 the transforms
// cost what the products save (128->128 g32 @56: 0.91-1.02x of the direct kernel, 256->256
// g32 @28: 0.79-0.83x). The AVX2 direct kernel has half the registers; Winograd is faster
// there with 4 channels too (forward time over the direct kernel's, AVX2 variant on Zen 4:
// 0.78 at 256 @28, 0.88 at 128 @56, 0.70 at 512 @14).
// CONVOPS_GROUPED_WINOGRAD=0 turns it off, =1 forces it wherever it can run (read at every
// call, so that tests and benchmarks can compare both in one process).
template <typename T>
bool winograd_applies(const Correlation<T>& p) {
  if (!std::is_same_v<T, float> || !kernels<T>().winograd || p.kernel_h != 3 ||
      p.kernel_w != 3 || p.stride_h != 1 || p.stride_w != 1 || p.dilation_h != 1 ||
      p.dilation_w != 1)
    return false;
  const char* env = std::getenv("CONVOPS_GROUPED_WINOGRAD");
  if (env && std::strcmp(env, "0") == 0) return false;
  if (env && std::strcmp(env, "1") == 0) return true;
  const int64_t lanes = kernels<T>().lanes, tiles_w = (p.out_w + 1) / 2;
  const int64_t lanes_used = (tiles_w + lanes - 1) / lanes * lanes;
  const int64_t min_channels = lanes >= 16 ? 8 : 4;
  return p.channels >= min_channels && p.outputs >= min_channels &&
         4 * tiles_w >= 3 * lanes_used;
}

// The row kernels instead of F(2x2, 3x3) where Winograd runs: with AVX-512, at most 8
// channels per group and a source whose rows are contiguous. Measured in-process, forward
// time over F(2x2, 3x3)'s (Zen 4, batch 8, 2 threads): 0.97 on 256->256 g32 @28, 0.74 on
// 256->256 g32 @56, 0.78 on 128->128 g16 @56; with 16 channels 1.19 (256->256 g16 @28), the
// products' extra half then outweighing the transforms. (The AVX2 variant, with half the
// registers, measured 1.10 on 256 @28.) CONVOPS_GROUPED_WINOGRAD_ROWS=0 turns them off, =1
// forces them wherever they can run (read at every call, for tests and benchmarks).
bool winograd_rows_applies(const Correlation<float>& p) {
  if (!kernels<float>().winograd_rows || p.src.stride_w != 1) return false;
  const char* env = std::getenv("CONVOPS_GROUPED_WINOGRAD_ROWS");
  if (env && std::strcmp(env, "0") == 0) return false;
  if (env && std::strcmp(env, "1") == 0) return true;
  return p.channels <= 8;
}

// The tile and band geometry of F(2x2, 3x3) over correlation p (Winograd applies), with bands
// of at most `max_band_tiles` tile rows whose packed input stays within 64 KiB (L2-resident;
// 128, as the direct kernels use, measured no better on 256->256 g16 @56).
WinogradPlan winograd_geometry(const Correlation<float>& p, int64_t lanes, int64_t max_band_tiles) {
  const int64_t L = lanes;
  WinogradPlan w{};
  w.p = p;
  w.tiles_w = (p.out_w + 1) / 2;
  w.tiles_h = (p.out_h + 1) / 2;
  w.blocks_w = (w.tiles_w + L - 1) / L;
  w.half_len = round_up(w.tiles_w + 1, L);
  const int64_t per_tile_row = p.channels * 2 * 2 * w.half_len * int64_t(sizeof(float));
  const int64_t fit = std::clamp<int64_t>(
      std::min(band_bytes(64) / per_tile_row - 1, max_band_tiles), 1, w.tiles_h);
  w.bands = (w.tiles_h + fit - 1) / fit;
  w.band_tiles = (w.tiles_h + w.bands - 1) / w.bands;
  w.bands = (w.tiles_h + w.band_tiles - 1) / w.band_tiles;
  w.chan_stride = (2 * w.band_tiles + 2) * 2 * w.half_len;
  // The odd columns of a tile at t + 1 read up to one vector past the last packed row.
  w.pack_elems = round_up(p.channels * w.chan_stride + L, L);
  return w;
}

// A correlation with its weights packed, its tap offsets and band layout: run over all of
// p.src's images at once, or image by image (the stride-2 input gradient) without packing again.
template <typename T>
class PackedCorrelation {
 public:
  // With `only_out` given, the correlation runs once, into that tensor: where Winograd takes
  // it, the direct kernel's weights are not packed (a third of the forward's serial time at
  // batch 1, perf).
  template <class WeightAt>
  PackedCorrelation(const Correlation<T>& p, const WeightAt& weight_at, const T* bias,
                    const at::Tensor* only_out = nullptr)
      : p_(p), ob_(output_block(p.outputs)), band_(band_layout(p, kernels<T>().lanes, ob_)) {
    if (winograd_applies<T>(p)) {
      winograd_weights(p, weight_at);
      if (bias) winograd_bias_.assign(bias, bias + p.groups * p.outputs);
    }
    if (only_out && winograd_runs(*only_out)) return;
    // The direct kernel's weights (where Winograd applies too, for a channels_last output).
    pack_weights(p, ob_, weight_at, bias, wpack_, bpack_);
    offs_ = tap_offsets(p, band_);
  }

  // out (N, groups*outputs, out_h, out_w), any strides, = the correlation over the `batch`
  // images of src (p's geometry), all groups in one pass.
  void run(const Source<T>& src, int64_t batch, at::Tensor& out) const {
    const auto& ks = kernels<T>();
    Correlation<T> p = p_;
    p.src = src;
    p.batch = batch;
    if (winograd_runs(out)) {
      if constexpr (std::is_same_v<T, float>) {
        run_winograd(p, out);
        return;
      }
    }
    TORCH_INTERNAL_ASSERT(!wpack_.empty(), "grouped conv: direct kernel weights not packed");
    ForwardPlan<T> f{p, band_, wpack_.data(), bpack_.data(), out.data_ptr<T>(),
                     {out.stride(0), out.stride(1), out.stride(2), out.stride(3)}, ob_,
                     offs_.data(), x_pack_elems(p, band_)};
    std::vector<VectorStore> stores_full, stores_last;
    if (ks.masked_stores && out.stride(3) == 1 && out.stride(1) != 1 &&
        (!band_.flat || band_.pitch >= band_.lanes)) {
      const int64_t last_rows = p.out_h - (band_.bands - 1) * band_.rows;
      stores_full = vector_stores(band_, band_.run_vectors(band_.rows), band_.rows, p.out_w,
                                  out.stride(2));
      stores_last = vector_stores(band_, band_.run_vectors(last_rows), last_rows, p.out_w,
                                  out.stride(2));
      f.stores_full = stores_full.data();
      f.stores_last = stores_last.data();
    }
    // The band buffer only without direct stores.
    const int64_t buffer = f.stores_full ? 0 : ob_ * band_.plane;
    const int64_t per_thread = round_up(f.x_pack_elems + buffer, band_.lanes);
    const ScratchBuffer scratch(at::get_num_threads() * per_thread, out.options());
    const int64_t items = p.batch * p.groups * band_.bands;
    parallel_chunks(items, balanced_chunk(items), [&](int64_t begin, int64_t end, int thread) {
      ks.forward(f, begin, end, scratch.tensor().data_ptr<T>() + thread * per_thread);
    });
  }

 private:
  // Winograd takes outputs whose rows are contiguous and not channels_last.
  bool winograd_runs(const at::Tensor& out) const {
    return std::is_same_v<T, float> && !u_.empty() && out.stride(3) == 1 && out.stride(1) != 1;
  }

  // G x for three taps x (one column or row of g).
  static void winograd_g(double x0, double x1, double x2, double out[4]) {
    out[0] = x0;
    out[1] = 0.5 * (x0 + x1 + x2);
    out[2] = 0.5 * (x0 - x1 + x2);
    out[3] = x2;
  }

  // U = G g G^T per (group, output, channel), as [group][16][channels][kpad] (zero padded),
  // and the row kernels' U1 (WinogradPlan::u_rows).
  template <class WeightAt>
  void winograd_weights(const Correlation<T>& p, const WeightAt& weight_at) {
    kpad_ = round_up(p.outputs, 4);
    u_.assign(p.groups * 16 * p.channels * kpad_, T(0));
    u_rows_.assign(p.groups * 3 * p.channels * kpad_ * 4, T(0));
    for (int64_t grp = 0; grp < p.groups; ++grp) {
      for (int64_t k = 0; k < p.outputs; ++k) {
        for (int64_t c = 0; c < p.channels; ++c) {
          double gg[4][3];  // G g, a column at a time
          for (int j = 0; j < 3; ++j) {
            double col[4];
            winograd_g(weight_at(grp, k, c, 0, j), weight_at(grp, k, c, 1, j),
                       weight_at(grp, k, c, 2, j), col);
            for (int a = 0; a < 4; ++a) gg[a][j] = col[a];
          }
          for (int a = 0; a < 4; ++a) {  // (G g) G^T, a row at a time
            double row[4];
            winograd_g(gg[a][0], gg[a][1], gg[a][2], row);
            for (int b = 0; b < 4; ++b)
              u_[((grp * 16 + a * 4 + b) * p.channels + c) * kpad_ + k] = T(row[b]);
          }
          for (int i = 0; i < 3; ++i) {  // the row kernels' G g_i
            double row[4];
            winograd_g(weight_at(grp, k, c, i, 0), weight_at(grp, k, c, i, 1),
                       weight_at(grp, k, c, i, 2), row);
            for (int j = 0; j < 4; ++j)
              u_rows_[(((grp * 3 + i) * p.channels + c) * kpad_ + k) * 4 + j] = T(row[j]);
          }
        }
      }
    }
  }

  void run_winograd(const Correlation<float>& p, at::Tensor& out) const {
    const auto& ks = kernels<float>();
    const int64_t L = ks.lanes;
    WinogradPlan w = winograd_geometry(p, L, p.out_h);
    w.u = u_.data();
    w.u_rows = u_rows_.data();
    w.bias = winograd_bias_.empty() ? nullptr : winograd_bias_.data();
    w.kpad = kpad_;
    w.out = out.data_ptr<float>();
    w.out_stride[0] = out.stride(0);
    w.out_stride[1] = out.stride(1);
    w.out_stride[2] = out.stride(2);
    w.v_elems = 16 * p.channels * L;
    w.m_elems = 16 * kpad_ * L;
    // (The row kernels use only the V part, as their ring of transformed rows.)
    const int64_t per_thread = w.pack_elems + w.v_elems + w.m_elems;
    const ScratchBuffer scratch(at::get_num_threads() * per_thread, out.options());
    const int64_t items = p.batch * p.groups * w.bands;
    const auto kernel = winograd_rows_applies(p) ? ks.winograd_rows : ks.winograd;
    parallel_chunks(items, balanced_chunk(items), [&](int64_t begin, int64_t end, int thread) {
      kernel(w, begin, end, scratch.tensor().data_ptr<float>() + thread * per_thread);
    });
  }

  Correlation<T> p_;
  int64_t ob_;
  BandLayout band_;
  std::vector<T> wpack_, bpack_;
  std::vector<int64_t> offs_;
  int64_t kpad_ = 0;
  std::vector<T> u_;  // Winograd-transformed weights; empty: the direct kernel
  std::vector<T> u_rows_;  // the same by kernel rows (1-D F(2, 3))
  std::vector<T> winograd_bias_;  // [groups * outputs]; empty: no bias
};

// out (N, groups*outputs, out_h, out_w), any strides, = the correlation, all groups in one pass.
template <typename T, class WeightAt>
void run_correlation(const Correlation<T>& p, const WeightAt& weight_at, const T* bias,
                     at::Tensor& out) {
  PackedCorrelation<T>(p, weight_at, bias, &out).run(p.src, p.batch, out);
}

// Few channels per group, more than one group, not depthwise (csrc/cpu/depthwise.cpp).
// Up to 16 channels per group on either side: measured faster than the per-group GEMMs.
constexpr int64_t kMaxChannelsPerGroup = 16;

bool claims(const Conv2dGeometry& g) {
  return g.groups > 1 && g.groups != g.in_channels && g.in_per_group() >= 1 &&
         g.out_per_group() >= 1 && g.in_per_group() <= kMaxChannelsPerGroup &&
         g.out_per_group() <= kMaxChannelsPerGroup;
}

// The conv2d geometry as a correlation over `src` (the forward and the weight gradient).
template <typename T>
Correlation<T> conv_correlation(const Conv2dGeometry& g, const at::Tensor& src) {
  Correlation<T> p;
  p.src = source_of<T>(src);
  p.batch = g.batch;
  p.groups = g.groups;
  p.channels = g.in_per_group();
  p.outputs = g.out_per_group();
  p.out_h = g.out_h;
  p.out_w = g.out_w;
  p.kernel_h = g.kernel_h;
  p.kernel_w = g.kernel_w;
  p.stride_h = g.stride_h;
  p.stride_w = g.stride_w;
  p.dilation_h = g.dilation_h;
  p.dilation_w = g.dilation_w;
  p.pad_h = g.pad_h;
  p.pad_w = g.pad_w;
  return p;
}

// conv2d's input gradient for stride 1: a correlation over grad_output with the kernel flipped
// (padding d*(k-1)-p) and its channel roles swapped. Strides > 1 narrow it to each phase's
// taps (PhaseTaps).
template <typename T>
Correlation<T> input_grad_correlation(const Conv2dGeometry& g, const at::Tensor& grad_output) {
  Correlation<T> p;
  p.src = source_of<T>(grad_output);
  p.batch = g.batch;
  p.groups = g.groups;
  p.channels = g.out_per_group();
  p.outputs = g.in_per_group();
  p.out_h = g.in_h;
  p.out_w = g.in_w;
  p.kernel_h = g.kernel_h;
  p.kernel_w = g.kernel_w;
  p.dilation_h = g.dilation_h;
  p.dilation_w = g.dilation_w;
  p.pad_h = g.dilation_h * (g.kernel_h - 1) - g.pad_h;
  p.pad_w = g.dilation_w * (g.kernel_w - 1) - g.pad_w;
  return p;
}

// With stride s > 1, the input rows of one phase r (ih = s*j + r) are reached only by the
// kernel rows ki with (r + p - ki*d) divisible by s, from grad_output row
// j + (r + p - ki*d) / s: a stride-1 correlation over grad_output itself with those taps
// (dilation d / gcd(s, d)). One such correlation per (row phase, column phase) does none of the
// zero-upsampled correlation's multiplications by zeros (s_h * s_w times fewer FMAs).
struct PhaseTaps {
  std::vector<int64_t> taps;  // kernel taps ki, in order of increasing grad_output offset
  int64_t first_offset = 0, dilation = 1;
};

PhaseTaps phase_taps(int64_t phase, int64_t stride, int64_t pad, int64_t dilation, int64_t kernel) {
  PhaseTaps t;
  for (int64_t ki = kernel - 1; ki >= 0; --ki) {
    const int64_t reach = phase + pad - ki * dilation;
    if (((reach % stride) + stride) % stride != 0) continue;
    if (t.taps.empty()) t.first_offset = reach >= 0 ? reach / stride : -((-reach) / stride);
    t.taps.push_back(ki);
  }
  t.dilation = dilation / std::gcd(stride, dilation);
  return t;
}

template <typename T>
const T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// Slices of the weight gradient's items: enough that the threads' shares even out, few enough
// that the per-slice partial sums stay small. In-process A/B of the weight gradient: 32
// against 64 2-2.5% faster on 256->256 g32 @28 and 128->128 g32 @56 (there a slice is one
// group's 8 images), 16 and 128 no better.
constexpr int64_t kWeightGradSlices = 32;

// Runs fn(begin, end, scratch, partial) over a weight gradient's items, ordered (group, ...),
// `per_group` per group, cut into a fixed number of slices whatever the thread count (scratch:
// the thread's `per_thread` elements). Each slice stores into `partial` its group_elems partial
// sums per group it touches (in order); those are added into out[groups][group_elems] (zeros)
// in slice order, so the result is the same bitwise however the slices were shared.
template <typename T, class SliceFn>
void run_in_slices(int64_t groups, int64_t per_group, int64_t group_elems, int64_t per_thread,
                   const at::TensorOptions& options, T* out, const SliceFn& fn) {
  const int64_t items = groups * per_group;
  const int64_t slices = std::min(items, kWeightGradSlices);
  auto slice_begin = [&](int64_t s) { return s * items / slices; };
  // Slice s touches groups [first_group[s], first_group[s] + groups_touched[s]); its partial
  // sums start at partial_offset[s].
  std::vector<int64_t> first_group(slices), groups_touched(slices), partial_offset(slices + 1, 0);
  for (int64_t s = 0; s < slices; ++s) {
    first_group[s] = slice_begin(s) / per_group;
    groups_touched[s] = (slice_begin(s + 1) - 1) / per_group - first_group[s] + 1;
    partial_offset[s + 1] = partial_offset[s] + groups_touched[s] * group_elems;
  }
  const ScratchBuffer scratch(at::get_num_threads() * per_thread, options);
  const ScratchBuffer partial(partial_offset[slices], options);
  T* partial_data = partial.tensor().data_ptr<T>();
  parallel_chunks(slices, 1, [&](int64_t begin, int64_t end, int thread) {
    T* mine = scratch.tensor().data_ptr<T>() + thread * per_thread;
    for (int64_t s = begin; s < end; ++s) {
      fn(slice_begin(s), slice_begin(s + 1), mine, partial_data + partial_offset[s]);
    }
  });
  for (int64_t s = 0; s < slices; ++s) {
    const T* part = partial_data + partial_offset[s];
    T* dst = out + first_group[s] * group_elems;
    for (int64_t i = 0; i < groups_touched[s] * group_elems; ++i) dst[i] += part[i];
  }
}

// grad_w (groups*outputs, channels, kh, kw) = sum over images and positions of dy x X, by the
// direct kernel: items (group, image, band).
template <typename T>
void run_weight_grad(const Correlation<T>& p, const at::Tensor& grad_output, at::Tensor& grad_w) {
  const auto& ks = kernels<T>();
  const int64_t ob = output_block(p.outputs);
  const int64_t opad = (p.outputs + ob - 1) / ob * ob;
  const BandLayout band = band_layout(p, ks.lanes, opad);
  const std::vector<int64_t> offs = tap_offsets(p, band);
  WeightGradPlan<T> w{p, band, source_of<T>(grad_output), ob, offs.data(), 0, 0};
  w.x_pack_elems = x_pack_elems(p, band);
  w.dy_pack_elems = opad * band.plane;
  const int64_t per_thread = w.x_pack_elems + w.dy_pack_elems + opad * p.reduction() * ks.lanes;
  run_in_slices<T>(p.groups, p.batch * band.bands, p.outputs * p.reduction(), per_thread,
                   grad_w.options(), grad_w.data_ptr<T>(),
                   [&](int64_t begin, int64_t end, T* scratch, T* partial) {
                     ks.weight_grad(w, begin, end, scratch, partial);
                   });
}

// Staged V blocks and A dY rows of one weight-gradient band: up to this many bytes
// (L2-resident; the products stream them once per block of outputs). Per band, the products
// add their registers into the vector sums once per (output, channel, xi): the fewer blocks a
// band has, the more that costs (256->256 g32 @28, AVX-512, in-process against the direct
// kernel: 1.40x with 64 KiB, 1.12x with 128, 0.92x with 256 and 512, which hold the whole 14
// tile rows; measured when dM was staged whole).
constexpr int64_t kWinogradGradStageBytes = 256 * 1024;

// Tile rows per weight-gradient band (the stage budget above).
int64_t winograd_grad_band_tiles(const Correlation<float>& p, int64_t lanes) {
  const int64_t tiles_w = (p.out_w + 1) / 2, blocks_w = (tiles_w + lanes - 1) / lanes;
  const int64_t per_tile_row = (WinogradGradPlan::kVPlanes * round_up(p.channels, 4) +
                                WinogradGradPlan::kRowPlanes * round_up(p.outputs, 4)) *
                               blocks_w * lanes * int64_t(sizeof(float));
  return std::max<int64_t>(1, kWinogradGradStageBytes / per_tile_row);
}

// The Winograd weight gradient where the forward's applies (see winograd_applies), with 8
// channels per group on both sides and every tile row in one band. Measured in-process against
// the direct kernel (AVX-512 / AVX2 variants on Zen 4): 256->256 g32 @28 (8 channels, one
// band) 0.86-0.97 / 0.78; 128->128 g32 @56 (4 channels) 1.40 / 1.86; 256->256 g16 @56 (16)
// 1.10-1.18 / 1.15-1.19; 256->256 g32 @56 (8, bands of 8 tile rows) 1.00 / 0.84, and 1.1-1.3
// with other stage budgets. With fewer channels the transforms cost what the products save;
// with more, or with several bands, the direct kernel reuses each load more than the per-band
// sums allow. Staging two images per item instead of one (blocks twice as long between the
// sums' updates, 458 KiB) measured 1.10x slower on 256 @28.
bool winograd_weight_grad_applies(const Correlation<float>& p) {
  if (!winograd_applies<float>(p)) return false;
  const char* env = std::getenv("CONVOPS_GROUPED_WINOGRAD");
  if (env && std::strcmp(env, "1") == 0) return true;
  return p.channels == 8 && p.outputs == 8 &&
         winograd_grad_band_tiles(p, kernels<float>().lanes) >= (p.out_h + 1) / 2;
}

// The weight gradient (and with grad_b defined, the bias gradient) by F(2x2, 3x3): see
// WinogradGradPlan. grad_output's rows must be contiguous.
void run_winograd_weight_grad(const Correlation<float>& p, const at::Tensor& grad_output,
                              at::Tensor& grad_w, at::Tensor& grad_b) {
  const auto& ks = kernels<float>();
  const int64_t L = ks.lanes;
  WinogradGradPlan w{};
  w.cpad = round_up(p.channels, 4);
  w.opad = round_up(p.outputs, 4);
  w.geo = winograd_geometry(p, L, winograd_grad_band_tiles(p, L));
  w.dy = source_of<float>(grad_output);
  w.bias = grad_b.defined();
  w.blocks = w.geo.band_tiles * w.geo.blocks_w;
  w.v_elems = WinogradGradPlan::kVPlanes * w.blocks * w.cpad * L;
  w.dm_elems = WinogradGradPlan::kRowPlanes * w.blocks * w.opad * L;
  w.sum_elems = w.opad * w.cpad * 16 * WinogradGradPlan::kSumLanes + w.opad * L;
  const int64_t per_thread = w.geo.pack_elems + w.v_elems + w.dm_elems + w.sum_elems;
  const int64_t group_elems = w.group_elems();
  std::vector<float> reduced(p.groups * group_elems, 0.f);  // [group] dU [o][c][16], bias [o]
  run_in_slices<float>(p.groups, p.batch * w.geo.bands, group_elems, per_thread,
                       grad_w.options(), reduced.data(),
                       [&](int64_t begin, int64_t end, float* scratch, float* partial) {
                         ks.winograd_weight_grad(w, begin, end, scratch, partial);
                       });
  // dW = G^T dU G, G^T y = (y0 + (y1 + y2) / 2, (y1 - y2) / 2, (y1 + y2) / 2 + y3).
  auto gt = [](const double y[4], double out[3]) {
    out[0] = y[0] + 0.5 * (y[1] + y[2]);
    out[1] = 0.5 * (y[1] - y[2]);
    out[2] = 0.5 * (y[1] + y[2]) + y[3];
  };
  float* gw = grad_w.data_ptr<float>();  // (groups*outputs, channels, 3, 3), contiguous
  for (int64_t grp = 0; grp < p.groups; ++grp) {
    const float* du_group = reduced.data() + grp * group_elems;
    for (int64_t o = 0; o < p.outputs; ++o) {
      for (int64_t c = 0; c < p.channels; ++c) {
        const float* du = du_group + (o * p.channels + c) * 16;
        // The sign the staged rows left out (see WinogradGradPlan).
        auto at = [&](int a, int b) {
          const double v = du[4 * a + b];
          return (a == 3) != (b == 3) ? -v : v;
        };
        double cols[3][4];  // G^T dU, column b of dU at a time: cols[i][b]
        for (int b = 0; b < 4; ++b) {
          const double y[4] = {at(0, b), at(1, b), at(2, b), at(3, b)};
          double t[3];
          gt(y, t);
          for (int i = 0; i < 3; ++i) cols[i][b] = t[i];
        }
        float* dst = gw + ((grp * p.outputs + o) * p.channels + c) * 9;
        for (int i = 0; i < 3; ++i) {
          double t[3];
          gt(cols[i], t);
          for (int j = 0; j < 3; ++j) dst[i * 3 + j] = float(t[j]);
        }
      }
    }
    if (w.bias) {
      float* gb = grad_b.data_ptr<float>() + grp * p.outputs;
      for (int64_t o = 0; o < p.outputs; ++o) gb[o] = du_group[p.outputs * p.channels * 16 + o];
    }
  }
}

// The Winograd weight gradient where it applies (float, grad_output rows contiguous): true
// when it ran (then *grad_b, if asked for, holds the bias gradient).
bool try_winograd_weight_grad(const Correlation<double>&, const at::Tensor&, at::Tensor&,
                              at::Tensor*) {
  return false;
}
bool try_winograd_weight_grad(const Correlation<float>& p, const at::Tensor& grad_output,
                              at::Tensor& grad_w, at::Tensor* grad_b) {
  if (!winograd_weight_grad_applies(p) || grad_output.stride(3) != 1) return false;
  at::Tensor bias;
  if (grad_b) bias = at::empty({grad_w.size(0)}, grad_w.options());
  run_winograd_weight_grad(p, grad_output, grad_w, bias);
  if (grad_b) *grad_b = bias;
  return true;
}

}  // namespace

int64_t grouped_kernel_calls_count(bool reset) {
  return reset ? grouped_kernel_calls.exchange(0) : grouped_kernel_calls.load();
}

at::Tensor grouped_forward(const at::Tensor& input, const at::Tensor& weight,
                           const c10::optional<at::Tensor>& bias, const Conv2dGeometry& g) {
  if (!claims(g)) return {};
  ++grouped_kernel_calls;
  const auto cdt = compute_dtype(input.scalar_type());
  const auto x = input.to(cdt);
  const auto w = weight.to(cdt).contiguous();
  const auto b = contiguous_or_undefined(bias, cdt);
  const auto format = conv_output_format(input, weight);
  auto out = at::empty({g.batch, g.out_channels, g.out_h, g.out_w},
                       x.options().memory_format(format));
  if (out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(cdt, "convops_grouped_forward", [&] {
      const scalar_t* wd = w.data_ptr<scalar_t>();
      const int64_t kh = g.kernel_h, kw = g.kernel_w, cpg = g.in_per_group(),
                    opg = g.out_per_group();
      run_correlation(conv_correlation<scalar_t>(g, x),
                      [&](int64_t grp, int64_t o, int64_t c, int64_t ki, int64_t kj) {
                        return wd[(((grp * opg + o) * cpg + c) * kh + ki) * kw + kj];
                      },
                      data_or_null<scalar_t>(b), out);
    });
  }
  return out.to(input.scalar_type()).contiguous(format);
}

at::Tensor grouped_input_grad(const at::Tensor& grad_output, const at::Tensor& weight,
                              const c10::optional<at::Tensor>& bias, const Conv2dGeometry& g) {
  if (!claims(g)) return {};
  ++grouped_kernel_calls;
  const auto cdt = compute_dtype(grad_output.scalar_type());
  const auto y = grad_output.to(cdt);
  const auto w = weight.to(cdt).contiguous();
  const auto b = contiguous_or_undefined(bias, cdt);
  const auto format = conv_output_format(grad_output, weight);
  auto images = at::empty({g.batch, g.in_channels, g.in_h, g.in_w},
                          y.options().memory_format(format));
  if (images.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(cdt, "convops_grouped_input_grad", [&] {
      const scalar_t* wd = w.data_ptr<scalar_t>();
      const int64_t kh = g.kernel_h, kw = g.kernel_w, cpg = g.in_per_group(),
                    opg = g.out_per_group();
      if (g.stride_h == 1 && g.stride_w == 1) {
        // Output o of the correlation is input channel o of the group; its reduction channel
        // c is output channel c of the conv; the kernel is flipped.
        run_correlation(input_grad_correlation<scalar_t>(g, y),
                        [&](int64_t grp, int64_t o, int64_t c, int64_t ki, int64_t kj) {
                          return wd[(((grp * opg + c) * cpg + o) * kh + (kh - 1 - ki)) * kw +
                                    (kw - 1 - kj)];
                        },
                        data_or_null<scalar_t>(b), images);
        return;
      }
      // The correlation of row phase rh and column phase rw over grad_output: its input
      // positions from the kernel taps that reach them; none when no tap does.
      auto phase_correlation = [&](int64_t rh, int64_t rw, int64_t phase_h, int64_t phase_w)
          -> std::optional<PackedCorrelation<scalar_t>> {
        const auto th = phase_taps(rh, g.stride_h, g.pad_h, g.dilation_h, kh);
        const auto tw = phase_taps(rw, g.stride_w, g.pad_w, g.dilation_w, kw);
        if (th.taps.empty() || tw.taps.empty()) return std::nullopt;
        Correlation<scalar_t> p = input_grad_correlation<scalar_t>(g, y);
        p.out_h = phase_h;
        p.out_w = phase_w;
        p.kernel_h = int64_t(th.taps.size());
        p.kernel_w = int64_t(tw.taps.size());
        p.dilation_h = th.dilation;
        p.dilation_w = tw.dilation;
        p.pad_h = -th.first_offset;
        p.pad_w = -tw.first_offset;
        return PackedCorrelation<scalar_t>(
            p,
            [&](int64_t grp, int64_t o, int64_t c, int64_t ti, int64_t tj) {
              return wd[(((grp * opg + c) * cpg + o) * kh + th.taps[ti]) * kw + tw.taps[tj]];
            },
            data_or_null<scalar_t>(b));
      };
      // A phase (any strides) of the images of `ys` (grad_output or some of its images); with
      // no correlation (no tap reaches it), the bias alone.
      auto run_phase = [&](const std::optional<PackedCorrelation<scalar_t>>& corr,
                           at::Tensor phase, const at::Tensor& ys) {
        if (corr) {
          corr->run(source_of<scalar_t>(ys), ys.size(0), phase);
        } else if (b.defined()) {
          phase.copy_(b.view({1, g.in_channels, 1, 1}).expand_as(phase));
        } else {
          phase.zero_();
        }
      };
      const bool pair_columns = g.stride_w == 2 && g.in_w >= 2 && images.is_contiguous();
      for (int64_t rh = 0; rh < std::min(g.stride_h, g.in_h); ++rh) {
        auto rows = images.slice(2, rh, g.in_h, g.stride_h);
        const int64_t h = rows.size(2);
        if (pair_columns) {
          // Both column phases into contiguous rows, then interleaved into the image a vector
          // pair at a time (each phase stored element by element into the strided view took
          // 44% of the input gradient). One image at a time, so that the phases are still in
          // cache when they are interleaved; the weights are packed once for all images.
          const int64_t even_w = (g.in_w + 1) / 2, odd_w = g.in_w / 2;
          const auto even_corr = phase_correlation(rh, 0, h, even_w);
          const auto odd_corr = phase_correlation(rh, 1, h, odd_w);
          const ScratchBuffer even_buf(g.in_channels * h * even_w, images.options());
          const ScratchBuffer odd_buf(g.in_channels * h * odd_w, images.options());
          auto even = even_buf.tensor().view({1, g.in_channels, h, even_w});
          auto odd = odd_buf.tensor().view({1, g.in_channels, h, odd_w});
          const auto& ks = kernels<scalar_t>();
          for (int64_t n = 0; n < g.batch; ++n) {
            const auto ys = y.narrow(0, n, 1);
            run_phase(even_corr, even, ys);
            run_phase(odd_corr, odd, ys);
            const ColumnPhases<scalar_t> cp{even.data_ptr<scalar_t>(), odd.data_ptr<scalar_t>(),
                                            even_w, odd_w, rows[n].data_ptr<scalar_t>(),
                                            rows.stride(2), h, rows.stride(1)};
            at::parallel_for(0, g.in_channels * h, std::max<int64_t>(1, 4096 / g.in_w),
                             [&](int64_t begin, int64_t end) { ks.interleave_columns(cp, begin, end); });
          }
          continue;
        }
        for (int64_t rw = 0; rw < std::min(g.stride_w, g.in_w); ++rw) {
          auto phase = rows.slice(3, rw, g.in_w, g.stride_w);
          run_phase(phase_correlation(rh, rw, h, phase.size(3)), phase, y);
        }
      }
    });
  }
  return images.to(grad_output.scalar_type()).contiguous(format);
}

at::Tensor grouped_weight_grad(const at::Tensor& grad_output, const at::Tensor& input,
                               const Conv2dGeometry& g, at::Tensor* grad_bias) {
  if (!claims(g)) return {};
  ++grouped_kernel_calls;
  const auto cdt = compute_dtype(input.scalar_type());
  const auto x = input.to(cdt);
  const auto go = grad_output.to(cdt);
  auto grad_w = at::zeros({g.out_channels, g.in_per_group(), g.kernel_h, g.kernel_w}, x.options());
  at::Tensor grad_b;
  if (g.batch > 0 && g.out_h > 0 && g.out_w > 0) {
    AT_DISPATCH_FLOATING_TYPES(cdt, "convops_grouped_weight_grad", [&] {
      const auto p = conv_correlation<scalar_t>(g, x);
      if (!try_winograd_weight_grad(p, go, grad_w, grad_bias ? &grad_b : nullptr)) {
        run_weight_grad(p, go, grad_w);
      }
    });
  }
  if (grad_bias && grad_b.defined()) *grad_bias = grad_b.to(grad_output.scalar_type());
  return grad_w.to(input.scalar_type());
}

}  // namespace convops::cpu
