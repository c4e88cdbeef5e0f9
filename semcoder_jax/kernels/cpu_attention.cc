// Fused causal self-attention for XLA:CPU, float32, forward and backward (an XLA FFI custom call).
//
// Why: XLA:CPU runs the reference attention as separate passes over [T, S] score arrays in memory;
// this kernel keeps each tile of scores in cache, as torch's CPU flash kernel does.
//
// Semantics are those of semcoder_jax.attention.xla_attention for self-attention over whole rows
// (S == T, slot i at position i): query i sees key j when j <= i and their segment ids are equal.
// q and k arrive before RoPE: the kernel rotates them as it loads them (HF rotate_half, with the
// cos/sin tables [B, T, D]) and returns their gradients rotated back, which saves the model two
// passes over q and k each way.
// A query that sees no key averages every value uniformly (what the reference's masked softmax
// gives), with no gradient to q or k.  Layouts: q [B, T, H, D], k/v [B, T, K, D] (K divides H),
// segments [B, T] int32; forward also returns the log-sum-exp [B, H, T] for the backward.
//
// A tile of 16 queries computes scores only for the keys from the start of its earliest segment up
// to its causal end, so packed rows skip the earlier segments' keys.
// Work is split by (batch row, kv head), so every output element has exactly one writer; items
// are shared between the calling thread and XLA's intra-op thread pool.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kLanes = 16;  // floats per vector (AVX-512 width; split by the compiler on AVX2)
constexpr int kRows = 16;   // query rows per tile: 16 independent FMA chains in the products
// may_alias: vectors are loaded from and stored to float/int32 buffers.
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float)), aligned(4), may_alias));

typedef int32_t IVec __attribute__((vector_size(kLanes * sizeof(int32_t)), aligned(4), may_alias));

inline Vec Load(const float* p) { return *reinterpret_cast<const Vec*>(p); }
inline IVec LoadInt(const int32_t* p) { return *reinterpret_cast<const IVec*>(p); }
inline void Store(float* p, Vec v) { *reinterpret_cast<Vec*>(p) = v; }
inline Vec Splat(float x) { return Vec{} + x; }
inline float MaxLane(Vec v) {
  float m = v[0];
  for (int l = 1; l < kLanes; ++l) m = std::max(m, v[l]);
  return m;
}
inline float SumLanes(Vec v) {
  float s = 0.f;
  for (int l = 0; l < kLanes; ++l) s += v[l];
  return s;
}
constexpr IVec kIota = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

// exp(x) for x <= ~88, vectorised (Cephes' single-precision scheme: x = n ln2 + r, a degree-6
// polynomial for e^r, 2^n from the exponent bits); about 1 ulp, like XLA's own expansion.
inline Vec Exp(Vec x) {
  x = x < -87.3f ? Splat(-87.3f) : x;
  x = x > 88.3f ? Splat(88.3f) : x;
  const Vec scaled = x * 1.44269504088896341f + 0.5f;
  IVec n = __builtin_convertvector(scaled, IVec);
  Vec nf = __builtin_convertvector(n, Vec);
  const IVec over = nf > scaled;  // truncation went up for negatives: floor
  n += over;                      // over is -1 where true
  nf = __builtin_convertvector(n, Vec);
  const Vec r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
  Vec y = 1.9875691500e-4f * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.f;
  const IVec bits = (n + 127) << 23;
  return y * (Vec)bits;  // a same-size vector cast reinterprets the bits
}

// Lanes j..j+15 of query i's row that it may attend to: causal and in its segment.
inline IVec VisibleLanes(const int32_t* kseg, int64_t j, int64_t i, int32_t segment) {
  return (LoadInt(kseg + j) == segment) & ((kIota + static_cast<int32_t>(j)) <= static_cast<int32_t>(i));
}

struct Shape {
  int64_t batch, length, heads, kv_heads, head_dim;
  int64_t padded;  // length rounded up to kLanes
};

// Runs fn(item) for every item in [0, n) on the calling thread and the pool's threads.  A task
// that starts after all items are claimed returns at once, so it may outlive this call safely.
template <typename Fn>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, const Fn& fn) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  auto work = [state, n, &fn]() {
    int64_t finished = 0;
    for (int64_t i; (i = state->next.fetch_add(1)) < n;) {
      fn(i);
      ++finished;
    }
    if (finished && state->done.fetch_add(finished) + finished == n) {
      std::lock_guard<std::mutex> lock(state->mu);
      state->cv.notify_all();
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), n) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([work] { work(); });
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done.load() == n; });
}

// out[r][j] = scale * dot(rows[r], cols[:, j]) for begin <= j < end (multiples of kLanes); cols is
// [D][padded], transposed so that each step is a broadcast-multiply-add over kLanes keys.
template <int D>
void RowsTimesCols(const float* const rows[kRows], const float* cols, int64_t padded, int64_t begin,
                   int64_t end, float scale, float* out) {
  for (int64_t j = begin; j < end; j += kLanes) {
    Vec acc[kRows] = {};
    for (int d = 0; d < D; ++d) {
      const Vec c = Load(cols + d * padded + j);
      for (int r = 0; r < kRows; ++r) acc[r] += rows[r][d] * c;
    }
    for (int r = 0; r < kRows; ++r) Store(out + r * padded + j, acc[r] * scale);
  }
}

// out[r] = scale[r] * sum_j weights[r][j] * mat[j] over begin <= j < end, mat rows contiguous
// [padded][D]; one vector of columns at a time keeps the kRows accumulators in registers.
template <int D>
void WeightsTimesRows(const float* weights, int64_t padded, int64_t begin, int64_t end, const float* mat,
                      const float scale[kRows], float* const out[kRows], int rows) {
  for (int c = 0; c < D / kLanes; ++c) {
    Vec acc[kRows] = {};
    for (int64_t j = begin; j < end; ++j) {
      const Vec m = Load(mat + j * D + c * kLanes);
      for (int r = 0; r < kRows; ++r) acc[r] += weights[r * padded + j] * m;
    }
    for (int r = 0; r < rows; ++r) Store(out[r] + c * kLanes, acc[r] * scale[r]);
  }
}

// RoPE as HF applies it: out = x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1].
template <int D>
inline void Rotate(const float* x, const float* c, const float* sn, float* out) {
  constexpr int h = D / 2;
  for (int d = 0; d < h; ++d) out[d] = x[d] * c[d] - x[d + h] * sn[d];
  for (int d = h; d < D; ++d) out[d] = x[d] * c[d] + x[d - h] * sn[d];
}

// The transpose of Rotate, for gradients: g * cos + rotate_half^T(g * sin).  out must not alias g.
template <int D>
inline void RotateBack(const float* g, const float* c, const float* sn, float* out) {
  constexpr int h = D / 2;
  for (int d = 0; d < h; ++d) out[d] = g[d] * c[d] + g[d + h] * sn[d + h];
  for (int d = h; d < D; ++d) out[d] = g[d] * c[d] - g[d - h] * sn[d - h];
}

// The cos/sin tables, [B, T, D].
struct Rope {
  const float *cos, *sin;
  const float* Cos(const Shape& s, int64_t b, int64_t t, int64_t d) const { return cos + (b * s.length + t) * d; }
  const float* Sin(const Shape& s, int64_t b, int64_t t, int64_t d) const { return sin + (b * s.length + t) * d; }
};

// out[d][j] = rows[j][d] for j < length: [length][D] rows into [D][padded] columns, a 16 x 16 block at
// a time, each block read in columns from L1 and written as whole vectors.
template <int D>
void Transpose(const float* rows, int64_t length, int64_t padded, float* out) {
  int64_t j0 = 0;
#if defined(__AVX512F__)
  // Whole blocks with gathers (a column of 16 rows per instruction).
  const __m512i offsets = _mm512_mullo_epi32(
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(D));
  for (; j0 + kLanes <= length; j0 += kLanes)
    for (int d = 0; d < D; ++d)
      _mm512_storeu_ps(out + d * padded + j0, _mm512_i32gather_ps(offsets, rows + j0 * D + d, 4));
#endif
  for (; j0 < length; j0 += kLanes) {
    const int64_t n = std::min<int64_t>(kLanes, length - j0);
    for (int d = 0; d < D; ++d) {
      alignas(64) float column[kLanes] = {};
      for (int64_t j = 0; j < n; ++j) column[j] = rows[(j0 + j) * D + d];
      Store(out + d * padded + j0, Load(column));
    }
  }
}

// Per (batch row, kv head): rotated keys transposed [D][padded], values and rotated keys as rows.
struct KeyValueBlock {
  std::vector<float> keys_t, values_t, keys, values;
  template <int D>
  void Load(const float* k, const float* v, const Rope& rope, const Shape& s, int64_t b, int64_t kh,
            bool transposed_values) {
    keys_t.assign(D * s.padded, 0.f);
    keys.assign(s.padded * D, 0.f);
    values.assign(s.padded * D, 0.f);
    if (transposed_values) values_t.assign(D * s.padded, 0.f);
    for (int64_t j = 0; j < s.length; ++j) {
      const float* kr = k + ((b * s.length + j) * s.kv_heads + kh) * D;
      const float* vr = v + ((b * s.length + j) * s.kv_heads + kh) * D;
      Rotate<D>(kr, rope.Cos(s, b, j, D), rope.Sin(s, b, j, D), &keys[j * D]);
      std::memcpy(&values[j * D], vr, D * sizeof(float));
    }
    // Transposed copies from the rows just written (still in cache), written as whole vectors:
    // scattering them element by element (one cache line per store) was ~20 % of the backward.
    Transpose<D>(keys.data(), s.length, s.padded, keys_t.data());
    if (transposed_values) Transpose<D>(values.data(), s.length, s.padded, values_t.data());
  }
};

// The rows of one tile, padded with a zero row past the end of the sequence.
struct Tile {
  int64_t count;
  const float* rows[kRows];
};

// Rows [first, first + kRows) of head h; rotated into `rotated` when `rope` is given.
template <int D>
Tile QueryTile(const float* base, const Shape& s, int64_t b, int64_t h, int64_t first, const float* zeros,
               const Rope* rope, float (*rotated)[D]) {
  Tile t{std::min<int64_t>(kRows, s.length - first), {}};
  for (int r = 0; r < kRows; ++r) {
    t.rows[r] = r < t.count ? base + ((b * s.length + first + r) * s.heads + h) * D : zeros;
    if (rope && r < t.count) {
      Rotate<D>(t.rows[r], rope->Cos(s, b, first + r, D), rope->Sin(s, b, first + r, D), rotated[r]);
      t.rows[r] = rotated[r];
    }
  }
  return t;
}

// Key segments padded to a whole number of vectors (the padding is never visible: j > i there).
inline std::vector<int32_t> PaddedSegments(const int32_t* kseg, const Shape& s) {
  std::vector<int32_t> padded(s.padded, 0);
  std::copy(kseg, kseg + s.length, padded.begin());
  return padded;
}

// For every query i, the first key of its segment when that key is visible to it (j <= i), else -1
// (the query sees no key); one pass records where each segment id first occurs among the keys.
inline std::vector<int64_t> SegmentStarts(const int32_t* qseg, const int32_t* kseg, int64_t length) {
  std::unordered_map<int32_t, int64_t> first_key;
  for (int64_t j = length - 1; j >= 0; --j) first_key[kseg[j]] = j;
  std::vector<int64_t> out(length, -1);
  for (int64_t i = 0; i < length; ++i) {
    const auto it = first_key.find(qseg[i]);
    if (it != first_key.end() && it->second <= i) out[i] = it->second;
  }
  return out;
}

// The first key vector a tile of rows [first, first + count) needs: keys before every row's
// segment are never visible to the tile (packed rows skip earlier segments); 0 when a row of it
// sees no key (its weights are uniform over all keys).
inline int64_t TileBegin(const std::vector<int64_t>& starts, int64_t first, int64_t count) {
  int64_t begin = first;
  for (int64_t i = first; i < first + count; ++i) {
    if (starts[i] < 0) return 0;
    begin = std::min(begin, starts[i]);
  }
  return begin / kLanes * kLanes;
}

// Turns row i's scores (keys in [begin, end)) into exp(score - shift) where visible, else 0;
// returns the sum.  With shift unknown (forward), it is the visible maximum, written to *shift;
// *any says whether any key is visible.
inline float SoftmaxNumerators(float* row, const int32_t* kseg, int64_t begin, int64_t end, int64_t i,
                               int32_t segment, float* shift, bool find_shift, bool* any) {
  if (find_shift) {
    Vec top = Splat(-3.0e38f);
    IVec seen = IVec{};
    for (int64_t j = begin; j < end; j += kLanes) {
      const IVec vis = VisibleLanes(kseg, j, i, segment);
      const Vec x = Load(row + j);
      top = (vis != 0) & (x > top) ? x : top;
      seen |= vis;
    }
    *any = false;
    for (int l = 0; l < kLanes; ++l) *any = *any || seen[l];
    *shift = MaxLane(top);
  }
  Vec total = Vec{};
  for (int64_t j = begin; j < end; j += kLanes) {
    const IVec vis = VisibleLanes(kseg, j, i, segment);
    const Vec e = vis != 0 ? Exp(Load(row + j) - *shift) : Vec{};
    Store(row + j, e);
    total += e;
  }
  return SumLanes(total);
}

template <int D>
void ForwardItem(const float* q, const float* k, const float* v, const int32_t* qseg_all,
                 const int32_t* kseg_all, const Rope& rope, float* out, float* lse, const Shape& s, int64_t item) {
  const int64_t b = item / s.kv_heads, kh = item % s.kv_heads, group = s.heads / s.kv_heads;
  const int32_t* qseg = qseg_all + b * s.length;
  const std::vector<int32_t> kseg = PaddedSegments(kseg_all + b * s.length, s);
  const std::vector<int64_t> starts = SegmentStarts(qseg, kseg.data(), s.length);
  KeyValueBlock kv;
  kv.Load<D>(k, v, rope, s, b, kh, false);
  std::vector<float> scores(kRows * s.padded);
  alignas(64) float zeros[D] = {};
  alignas(64) float q_rotated[kRows][D];
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  for (int64_t g = 0; g < group; ++g) {
    const int64_t h = kh * group + g;
    for (int64_t first = 0; first < s.length; first += kRows) {
      const Tile t = QueryTile<D>(q, s, b, h, first, zeros, &rope, q_rotated);
      const int64_t end = std::min(s.padded, (first + t.count + kLanes - 1) / kLanes * kLanes);
      const int64_t begin = TileBegin(starts, first, t.count);
      RowsTimesCols<D>(t.rows, kv.keys_t.data(), s.padded, begin, end, scale, scores.data());
      float norm[kRows] = {};
      int64_t stop[kRows] = {};
      for (int r = 0; r < t.count; ++r) {
        const int64_t i = first + r;
        float* row = &scores[r * s.padded];
        float top;
        bool any;
        const float total = SoftmaxNumerators(row, kseg.data(), begin, end, i, qseg[i], &top, true, &any);
        if (!any) {  // uniform over all keys, as the reference's all-masked softmax
          std::fill(row, row + s.length, 1.f);
          std::fill(row + s.length, row + s.padded, 0.f);
          stop[r] = s.padded;
          norm[r] = 1.f / static_cast<float>(s.length);
          lse[(b * s.heads + h) * s.length + i] = 0.f;
          continue;
        }
        stop[r] = end;
        norm[r] = 1.f / total;
        lse[(b * s.heads + h) * s.length + i] = top + std::log(total);
      }
      for (int r = t.count; r < kRows; ++r) stop[r] = 0;
      int64_t reach = 0;
      for (int r = 0; r < kRows; ++r) reach = std::max(reach, stop[r]);
      for (int r = 0; r < kRows; ++r)  // past a row's own reach, weights are 0
        std::fill(&scores[r * s.padded] + stop[r], &scores[r * s.padded] + reach, 0.f);
      float* rows_out[kRows];
      for (int r = 0; r < t.count; ++r) rows_out[r] = out + ((b * s.length + first + r) * s.heads + h) * D;
      WeightsTimesRows<D>(scores.data(), s.padded, begin, reach, kv.values.data(), norm, rows_out, t.count);
    }
  }
}

template <int D>
void BackwardItem(const float* q, const float* k, const float* v, const int32_t* qseg_all,
                  const int32_t* kseg_all, const Rope& rope, const float* out, const float* lse,
                  const float* dout, float* dq, float* dk, float* dv, const Shape& s, int64_t item) {
  const int64_t b = item / s.kv_heads, kh = item % s.kv_heads, group = s.heads / s.kv_heads;
  const int32_t* qseg = qseg_all + b * s.length;
  const std::vector<int32_t> kseg = PaddedSegments(kseg_all + b * s.length, s);
  const std::vector<int64_t> starts = SegmentStarts(qseg, kseg.data(), s.length);
  KeyValueBlock kv;
  kv.Load<D>(k, v, rope, s, b, kh, true);
  std::vector<float> probs(kRows * s.padded), dprobs(kRows * s.padded);
  std::vector<float> dkeys(s.padded * D, 0.f), dvalues(s.padded * D, 0.f);
  alignas(64) float zeros[D] = {};
  alignas(64) float q_rotated[kRows][D];
  alignas(64) float dq_rotated[kRows][D];
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  for (int64_t g = 0; g < group; ++g) {
    const int64_t h = kh * group + g;
    for (int64_t first = 0; first < s.length; first += kRows) {
      const Tile t = QueryTile<D>(q, s, b, h, first, zeros, &rope, q_rotated);
      const Tile dt = QueryTile<D>(dout, s, b, h, first, zeros, nullptr, nullptr);
      const int64_t end = std::min(s.padded, (first + t.count + kLanes - 1) / kLanes * kLanes);
      const int64_t begin = TileBegin(starts, first, t.count);
      RowsTimesCols<D>(t.rows, kv.keys_t.data(), s.padded, begin, end, scale, probs.data());
      RowsTimesCols<D>(dt.rows, kv.values_t.data(), s.padded, begin, end, 1.f, dprobs.data());
      bool empty[kRows] = {};
      int64_t reach = end;
      for (int r = 0; r < t.count; ++r) {
        empty[r] = starts[first + r] < 0;
        if (empty[r]) reach = s.padded;
      }
      for (int r = 0; r < kRows; ++r) {
        const int64_t i = first + r;
        float* p = &probs[r * s.padded];
        float* ds = &dprobs[r * s.padded];
        if (r >= t.count || empty[r]) {  // padding row, or uniform weights: gradient only to values
          const float uniform = r < t.count ? 1.f / static_cast<float>(s.length) : 0.f;
          std::fill(p, p + s.length, uniform);
          std::fill(p + s.length, p + s.padded, 0.f);
          std::fill(ds, ds + s.padded, 0.f);
          continue;
        }
        const float* o = out + ((b * s.length + i) * s.heads + h) * D;
        Vec dot = Vec{};
        for (int c = 0; c < D / kLanes; ++c) dot += Load(dt.rows[r] + c * kLanes) * Load(o + c * kLanes);
        const Vec delta = Splat(SumLanes(dot));
        float row_lse = lse[(b * s.heads + h) * s.length + i];
        bool any;
        SoftmaxNumerators(p, kseg.data(), begin, end, i, qseg[i], &row_lse, false, &any);
        for (int64_t j = begin; j < end; j += kLanes)
          Store(ds + j, Load(p + j) * (Load(ds + j) - delta) * scale);
        std::fill(p + end, p + reach, 0.f);
        std::fill(ds + end, ds + reach, 0.f);
      }
      // dq rows: sum_j ds[r][j] * k[j].
      float* rows_out[kRows];
      float ones[kRows];
      std::fill(ones, ones + kRows, 1.f);
      for (int r = 0; r < t.count; ++r) rows_out[r] = dq_rotated[r];
      WeightsTimesRows<D>(dprobs.data(), s.padded, begin, end, kv.keys.data(), ones, rows_out, t.count);
      for (int r = 0; r < t.count; ++r)  // the gradient of q before RoPE
        RotateBack<D>(dq_rotated[r], rope.Cos(s, b, first + r, D), rope.Sin(s, b, first + r, D),
                      dq + ((b * s.length + first + r) * s.heads + h) * D);
      // dk[j] += sum_r ds[r][j] * q[r];  dv[j] += sum_r p[r][j] * dout[r]  (rank-kRows updates).
      // Four keys at a time: their 8 accumulators stay in registers while the tile's rows stream by.
      for (int c = 0; c < D / kLanes; ++c) {
        for (int64_t j = begin; j < reach; j += 4) {
          Vec gk[4], gv[4];
          for (int u = 0; u < 4; ++u) {
            gk[u] = Load(&dkeys[(j + u) * D + c * kLanes]);
            gv[u] = Load(&dvalues[(j + u) * D + c * kLanes]);
          }
          for (int r = 0; r < kRows; ++r) {
            const Vec qc = Load(t.rows[r] + c * kLanes), oc = Load(dt.rows[r] + c * kLanes);
            for (int u = 0; u < 4; ++u) {
              gk[u] += dprobs[r * s.padded + j + u] * qc;
              gv[u] += probs[r * s.padded + j + u] * oc;
            }
          }
          for (int u = 0; u < 4; ++u) {
            Store(&dkeys[(j + u) * D + c * kLanes], gk[u]);
            Store(&dvalues[(j + u) * D + c * kLanes], gv[u]);
          }
        }
      }
    }
  }
  for (int64_t j = 0; j < s.length; ++j) {
    const int64_t at = ((b * s.length + j) * s.kv_heads + kh) * D;
    RotateBack<D>(&dkeys[j * D], rope.Cos(s, b, j, D), rope.Sin(s, b, j, D), dk + at);
    std::memcpy(dv + at, &dvalues[j * D], D * sizeof(float));
  }
}

ffi::Error CheckShapes(ffi::Buffer<ffi::F32>& q, ffi::Buffer<ffi::F32>& k, ffi::Buffer<ffi::F32>& v,
                       ffi::Buffer<ffi::S32>& qseg, ffi::Buffer<ffi::S32>& kseg, ffi::Buffer<ffi::F32>& cos,
                       ffi::Buffer<ffi::F32>& sin, Shape* s) {
  auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions();
  auto sq = qseg.dimensions(), sk = kseg.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || vd.size() != 4 || sq.size() != 2 || sk.size() != 2)
    return ffi::Error::InvalidArgument("cpu attention: q/k/v must be rank 4 and segments rank 2");
  *s = Shape{qd[0], qd[1], qd[2], kd[2], qd[3], (qd[1] + kLanes - 1) / kLanes * kLanes};
  for (int a = 0; a < 4; ++a)
    if (kd[a] != vd[a]) return ffi::Error::InvalidArgument("cpu attention: k and v shapes differ");
  if (kd[0] != s->batch || kd[1] != s->length || kd[3] != s->head_dim || s->heads % s->kv_heads)
    return ffi::Error::InvalidArgument("cpu attention: k/v must be [B, T, K, D] with K dividing H");
  if (sq[0] != s->batch || sq[1] != s->length || sk[0] != s->batch || sk[1] != s->length)
    return ffi::Error::InvalidArgument("cpu attention: segments must be [B, T]");
  for (auto table : {cos.dimensions(), sin.dimensions()})
    if (table.size() != 3 || table[0] != s->batch || table[1] != s->length || table[2] != s->head_dim)
      return ffi::Error::InvalidArgument("cpu attention: cos/sin must be [B, T, head_dim]");
  return ffi::Error::Success();
}

#define SEMCODER_DISPATCH_HEAD_DIM(dim, CALL) \
  switch (dim) {                              \
    case 16: CALL(16); break;                 \
    case 32: CALL(32); break;                 \
    case 64: CALL(64); break;                 \
    case 128: CALL(128); break;               \
    case 256: CALL(256); break;               \
    default:                                  \
      return ffi::Error::InvalidArgument("cpu attention: head_dim must be 16, 32, 64, 128 or 256"); \
  }

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                   ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::S32> qseg, ffi::Buffer<ffi::S32> kseg,
                   ffi::Buffer<ffi::F32> cos, ffi::Buffer<ffi::F32> sin, ffi::ResultBuffer<ffi::F32> out,
                   ffi::ResultBuffer<ffi::F32> lse) {
  Shape s;
  if (auto e = CheckShapes(q, k, v, qseg, kseg, cos, sin, &s); e.failure()) return e;
  const Rope rope{cos.typed_data(), sin.typed_data()};
#define SEMCODER_FWD(D)                                                                            \
  ParallelFor(pool, s.batch * s.kv_heads, [&](int64_t item) {                                      \
    ForwardItem<D>(q.typed_data(), k.typed_data(), v.typed_data(), qseg.typed_data(),              \
                   kseg.typed_data(), rope, out->typed_data(), lse->typed_data(), s, item);        \
  })
  SEMCODER_DISPATCH_HEAD_DIM(s.head_dim, SEMCODER_FWD)
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                    ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::S32> qseg, ffi::Buffer<ffi::S32> kseg,
                    ffi::Buffer<ffi::F32> cos, ffi::Buffer<ffi::F32> sin, ffi::Buffer<ffi::F32> out,
                    ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> dout,
                    ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk,
                    ffi::ResultBuffer<ffi::F32> dv) {
  Shape s;
  if (auto e = CheckShapes(q, k, v, qseg, kseg, cos, sin, &s); e.failure()) return e;
  const Rope rope{cos.typed_data(), sin.typed_data()};
#define SEMCODER_BWD(D)                                                                            \
  ParallelFor(pool, s.batch * s.kv_heads, [&](int64_t item) {                                      \
    BackwardItem<D>(q.typed_data(), k.typed_data(), v.typed_data(), qseg.typed_data(),             \
                    kseg.typed_data(), rope, out.typed_data(), lse.typed_data(), dout.typed_data(), \
                    dq->typed_data(), dk->typed_data(), dv->typed_data(), s, item);                \
  })
  SEMCODER_DISPATCH_HEAD_DIM(s.head_dim, SEMCODER_BWD)
  return ffi::Error::Success();
}

// The inputs both handlers share: thread pool, q, k, v, query and key segments, cos, sin.
auto BindSharedInputs() {
  using F32 = ffi::Buffer<ffi::F32>;
  using S32 = ffi::Buffer<ffi::S32>;
  return ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<S32>().Arg<S32>()
      .Arg<F32>().Arg<F32>();
}

}  // namespace

// Forward: -> out, log-sum-exp.
XLA_FFI_DEFINE_HANDLER_SYMBOL(SemcoderCpuAttentionForward, Forward,
                              BindSharedInputs().Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());

// Backward: + out, log-sum-exp, d_out -> dq, dk, dv.
XLA_FFI_DEFINE_HANDLER_SYMBOL(SemcoderCpuAttentionBackward, Backward,
                              BindSharedInputs()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
