// Batched LoRA for CPU: every row with its own adapter slot, in one pass (BGMV, Punica arXiv 2310.18547).
//
//   for each listed row i (parallel over rows):   s = slots[i], t = rows[i]
//       h[j]      = round_to_dtype( sum_k x[t, k] * A[s, j, k] )                j < R   (float sums)
//       out[t, c] = round_to_dtype( out[t, c] + round_to_dtype( sum_j h[j] * Bt[s, j, c] ) )   c < width
//
// x: (T, in); A: (L, R, in); Bt: (L, R, width) — B transposed, so the expand streams contiguous
// rows; out: (T, width), may be a column slice of a wider tensor; rows / slots: int64 (n,).
// One dtype for x, A, Bt, out (float32, bfloat16 or float16). The roundings match vLLM's torch ops
// (a float32 shrink cast to the model dtype before the expand, the delta cast before the add).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cstring>
#include <vector>

// Element → float, written so the compiler vectorizes it (bfloat16 is the top half of a float32).
template <typename T> static inline float to_f(T v) { return static_cast<float>(v); }
template <> inline float to_f<c10::BFloat16>(c10::BFloat16 v) {
  uint32_t u = static_cast<uint32_t>(v.x) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

template <typename T>
static void bgmv_impl(at::Tensor& out, const at::Tensor& x, const at::Tensor& A, const at::Tensor& Bt,
                      const at::Tensor& rows, const at::Tensor& slots) {
  const int64_t n = rows.size(0), in = x.size(1), R = A.size(1), width = Bt.size(2);
  const T* xp = x.data_ptr<T>();
  const T* ap = A.data_ptr<T>();
  const T* bp = Bt.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int64_t* rp = rows.data_ptr<int64_t>();
  const int64_t* sp = slots.data_ptr<int64_t>();
  const int64_t xs = x.stride(0), os = out.stride(0);
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> xf(in), h(R), acc(width);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t t = rp[i], s = sp[i];
      const T* xr = xp + t * xs;
      for (int64_t k = 0; k < in; ++k) xf[k] = to_f(xr[k]);
      const T* a = ap + s * R * in;
      for (int64_t j = 0; j < R; ++j) {
        const T* aj = a + j * in;
        float sum = 0.f;
#pragma omp simd reduction(+ : sum)
        for (int64_t k = 0; k < in; ++k) sum += xf[k] * to_f(aj[k]);
        h[j] = to_f(static_cast<T>(sum));
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      const T* b = bp + s * R * width;
      for (int64_t j = 0; j < R; ++j) {
        const T* bj = b + j * width;
        const float hj = h[j];
#pragma omp simd
        for (int64_t c = 0; c < width; ++c) acc[c] += hj * to_f(bj[c]);
      }
      T* o = op + t * os;
      for (int64_t c = 0; c < width; ++c) o[c] = static_cast<T>(to_f(o[c]) + to_f(static_cast<T>(acc[c])));
    }
  });
}

static void bgmv(at::Tensor out, const at::Tensor& x, const at::Tensor& A, const at::Tensor& Bt,
                 const at::Tensor& rows, const at::Tensor& slots) {
  TORCH_CHECK(x.dim() == 2 && A.dim() == 3 && Bt.dim() == 3 && out.dim() == 2, "bgmv: x, out 2-D; A, Bt 3-D");
  TORCH_CHECK(x.stride(1) == 1 && out.stride(1) == 1 && A.is_contiguous() && Bt.is_contiguous(), "bgmv: rows must be contiguous");
  TORCH_CHECK(A.size(2) == x.size(1) && Bt.size(1) == A.size(1) && Bt.size(2) == out.size(1), "bgmv: shapes do not chain");
  TORCH_CHECK(x.scalar_type() == A.scalar_type() && A.scalar_type() == Bt.scalar_type() && Bt.scalar_type() == out.scalar_type(),
              "bgmv: one dtype for x, A, Bt, out");
  TORCH_CHECK(rows.scalar_type() == at::kLong && slots.scalar_type() == at::kLong && rows.size(0) == slots.size(0), "bgmv: int64 rows/slots");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "bgmv", [&] {
    bgmv_impl<scalar_t>(out, x, A, Bt, rows, slots);
  });
}

TORCH_LIBRARY(openlora_cpu, m) {
  m.def("bgmv(Tensor(a!) out, Tensor x, Tensor A, Tensor Bt, Tensor rows, Tensor slots) -> ()");
  m.impl("bgmv", c10::DispatchKey::CPU, TORCH_FN(bgmv));
}
