// Batched LoRA for CPU: every row with its own adapter slot, in one pass (BGMV, Punica arXiv 2310.18547).
//
//   for each listed row i (parallel over rows):   s = slots[i], t = rows[i]
//       h[j]      = W( sum_k x[t, k] * A[s, j, k] )                              j < n·R   (float sums)
//       d[c]      = W( W( sum_j h[p·R + j] * Bt[s, j, c] ) * scaling[s] )        c in slice p, j < R
//       out[t, c] = T( out[t, c] + d[c] )
//
// Slices: a layer whose output is n projections of one input (vLLM's merged q/k/v, gate/up) passes
// their A stacked along the rank (one shrink for all of them) and their Bᵀ side by side along the
// width, with the width of each (``slices``); slice p's columns read h[p·R .. p·R + R). One slice
// (the default) is the plain BGMV.
//
// W(.) rounds to the weights' dtype, T(.) to the activations' dtype. Weights in the activations'
// dtype (vLLM: bf16 A and B, scaling folded into B) round twice as vLLM's torch ops do; float32
// weights under half activations (the torch engine, PEFT's autocast_adapter_dtype) keep the delta in
// float32 and round once, at the add, as PEFT does.
//
// x: (T, in); A: (L, n·R, in); Bt: (L, R, width) — B transposed, so the expand streams contiguous
// rows; out: (T, width), may be a column slice of a wider tensor; A and Bt may be rank slices of
// wider stacks (their last dimension contiguous); rows / slots: int64 (n,); scaling: float32 (L,) or
// undefined (1). x and out share a dtype (float32, bfloat16 or float16); A and Bt share one (theirs
// or float32).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <optional>
#include <vector>

#include "upcast.h"


template <typename T, typename W>
static void bgmv_impl(at::Tensor& out, const at::Tensor& x, const at::Tensor& A, const at::Tensor& Bt,
                      const at::Tensor& rows, const at::Tensor& slots, const float* scale,
                      const std::vector<int64_t>& widths) {
  const int64_t n = rows.size(0), in = x.size(1), RA = A.size(1), R = Bt.size(1), width = Bt.size(2);
  const T* xp = x.data_ptr<T>();
  const W* ap = A.data_ptr<W>();
  const W* bp = Bt.data_ptr<W>();
  T* op = out.data_ptr<T>();
  const int64_t* rp = rows.data_ptr<int64_t>();
  const int64_t* sp = slots.data_ptr<int64_t>();
  const int64_t xs = x.stride(0), os = out.stride(0);
  const int64_t as0 = A.stride(0), as1 = A.stride(1), bs0 = Bt.stride(0), bs1 = Bt.stride(1);
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> xf(in), h(RA), acc(width);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t t = rp[i], s = sp[i];
      const T* xr = xp + t * xs;
      for (int64_t k = 0; k < in; ++k) xf[k] = to_f(xr[k]);
      const W* a = ap + s * as0;
      for (int64_t j = 0; j < RA; ++j) {
        const W* aj = a + j * as1;
        float sum = 0.f;
#pragma omp simd reduction(+ : sum)
        for (int64_t k = 0; k < in; ++k) sum += xf[k] * to_f(aj[k]);
        h[j] = to_f(static_cast<W>(sum));
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      const W* b = bp + s * bs0;
      int64_t off = 0;
      for (size_t p = 0; p < widths.size(); ++p) {
        const int64_t w = widths[p];
        for (int64_t j = 0; j < R; ++j) {
          const W* bj = b + j * bs1 + off;
          const float hj = h[p * R + j];
          float* ac = acc.data() + off;
#pragma omp simd
          for (int64_t c = 0; c < w; ++c) ac[c] += hj * to_f(bj[c]);
        }
        off += w;
      }
      const float sc = scale ? scale[s] : 1.f;
      T* o = op + t * os;
      if (scale) {
        for (int64_t c = 0; c < width; ++c)
          o[c] = static_cast<T>(to_f(o[c]) + to_f(static_cast<W>(to_f(static_cast<W>(acc[c])) * sc)));
      } else {
        for (int64_t c = 0; c < width; ++c) o[c] = static_cast<T>(to_f(o[c]) + to_f(static_cast<W>(acc[c])));
      }
    }
  });
}

template <typename T>
static void bgmv_weights(at::Tensor& out, const at::Tensor& x, const at::Tensor& A, const at::Tensor& Bt,
                         const at::Tensor& rows, const at::Tensor& slots, const float* scale,
                         const std::vector<int64_t>& widths) {
  if (A.scalar_type() == at::kFloat) {
    bgmv_impl<T, float>(out, x, A, Bt, rows, slots, scale, widths);
  } else {
    bgmv_impl<T, T>(out, x, A, Bt, rows, slots, scale, widths);
  }
}

static void bgmv(at::Tensor out, const at::Tensor& x, const at::Tensor& A, const at::Tensor& Bt,
                 const at::Tensor& rows, const at::Tensor& slots, const std::optional<at::Tensor>& scaling,
                 at::OptionalIntArrayRef slices) {
  TORCH_CHECK(x.dim() == 2 && A.dim() == 3 && Bt.dim() == 3 && out.dim() == 2, "bgmv: x, out 2-D; A, Bt 3-D");
  TORCH_CHECK(x.stride(1) == 1 && out.stride(1) == 1 && A.stride(2) == 1 && Bt.stride(2) == 1,
              "bgmv: the last dimension of x, out, A and Bt must be contiguous");
  std::vector<int64_t> widths;
  if (slices.has_value()) {
    widths.assign(slices->begin(), slices->end());
  } else {
    widths.push_back(Bt.size(2));
  }
  int64_t total = 0;
  for (int64_t w : widths) {
    TORCH_CHECK(w >= 0, "bgmv: negative slice width");
    total += w;
  }
  TORCH_CHECK(A.size(2) == x.size(1) && A.size(1) == Bt.size(1) * static_cast<int64_t>(widths.size()) &&
                  Bt.size(2) == out.size(1) && total == out.size(1) && A.size(0) == Bt.size(0),
              "bgmv: shapes do not chain (A (L, slices·R, in), Bt (L, R, Σ slices), out (T, Σ slices))");
  TORCH_CHECK(x.scalar_type() == out.scalar_type() && A.scalar_type() == Bt.scalar_type() &&
                  (A.scalar_type() == x.scalar_type() || A.scalar_type() == at::kFloat),
              "bgmv: x and out share one dtype, A and Bt share theirs or float32");
  TORCH_CHECK(rows.scalar_type() == at::kLong && slots.scalar_type() == at::kLong && rows.size(0) == slots.size(0) &&
                  rows.is_contiguous() && slots.is_contiguous(),
              "bgmv: int64 rows/slots of one length");
  const float* scale = nullptr;
  if (scaling.has_value() && scaling->defined()) {
    TORCH_CHECK(scaling->scalar_type() == at::kFloat && scaling->is_contiguous() && scaling->size(0) == A.size(0),
                "bgmv: scaling is float32 (L,)");
    scale = scaling->data_ptr<float>();
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "bgmv", [&] {
    bgmv_weights<scalar_t>(out, x, A, Bt, rows, slots, scale, widths);
  });
}

TORCH_LIBRARY(openlora_cpu, m) {
  m.def("bgmv(Tensor(a!) out, Tensor x, Tensor A, Tensor Bt, Tensor rows, Tensor slots, Tensor? scaling=None, "
        "int[]? slices=None) -> ()");
  m.impl("bgmv", c10::DispatchKey::CPU, TORCH_FN(bgmv));
}
