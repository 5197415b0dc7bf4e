// Decode attention for CPU: one query per row, grouped-query heads (GQA, arXiv 2305.13245), float32
// arithmetic on exact upcasts, one rounding of the output.
//
//   for each row b and key/value head g (parallel over (b, g)), for its G = H / KVH query heads h:
//       s[h, l]    = scale * sum_d q[b, h, d] * K[b, g, l, d]          l < L (float sums)
//       s[h, l]    = -inf where mask[b, l] is false
//       out[b, h]  = T( sum_l softmax(s[h])[l] * V[b, g, l, :] )
//
// Each (b, g) reads its keys and values once for all G query heads: a decode step is bound by reading
// the cache, and this reads it in its stored dtype (bf16: half the bytes of a float32 copy).
//
// q: (B, H, d) and out: (B, H, d) in one dtype (float32, bfloat16 or float16); K, V: (B, KVH, L, d) in
// q's dtype or float32; mask: bool (B, L) or none. Every tensor's last dimension is contiguous; the
// others may have any strides (the cache's views into buffers with spare columns, transformers' masks).
// A row whose every position is masked gets zeros (a decode row always sees its own token).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <limits>
#include <vector>

#include "upcast.h"


template <typename T, typename KV>
static void attend(at::Tensor& out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const bool* mask, int64_t ms0, int64_t ms1, double scale) {
  const int64_t B = q.size(0), H = q.size(1), d = q.size(2), KVH = k.size(1), L = k.size(2), G = H / KVH;
  const T* qp = q.data_ptr<T>();
  const KV* kp = k.data_ptr<KV>();
  const KV* vp = v.data_ptr<KV>();
  T* op = out.data_ptr<T>();
  const int64_t qs0 = q.stride(0), qs1 = q.stride(1), os0 = out.stride(0), os1 = out.stride(1);
  const int64_t ks0 = k.stride(0), ks1 = k.stride(1), ks2 = k.stride(2);
  const int64_t vs0 = v.stride(0), vs1 = v.stride(1), vs2 = v.stride(2);
  const float sc = static_cast<float>(scale), ninf = -std::numeric_limits<float>::infinity();
  at::parallel_for(0, B * KVH, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(G * d), kf(d), s(G * L), acc(G * d);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / KVH, g = i % KVH;
      for (int64_t j = 0; j < G; ++j) {
        const T* qr = qp + b * qs0 + (g * G + j) * qs1;
        for (int64_t c = 0; c < d; ++c) qf[j * d + c] = to_f(qr[c]) * sc;
      }
      const KV* kb = kp + b * ks0 + g * ks1;
      for (int64_t l = 0; l < L; ++l) {
        if (mask != nullptr && !mask[b * ms0 + l * ms1]) {
          for (int64_t j = 0; j < G; ++j) s[j * L + l] = ninf;
          continue;
        }
        const KV* kr = kb + l * ks2;
#pragma omp simd
        for (int64_t c = 0; c < d; ++c) kf[c] = to_f(kr[c]);
        for (int64_t j = 0; j < G; ++j) {
          const float* qj = qf.data() + j * d;
          float dot = 0.f;
#pragma omp simd reduction(+ : dot)
          for (int64_t c = 0; c < d; ++c) dot += qj[c] * kf[c];
          s[j * L + l] = dot;
        }
      }
      for (int64_t j = 0; j < G; ++j) {
        float* sj = s.data() + j * L;
        float top = ninf;
        for (int64_t l = 0; l < L; ++l) top = std::max(top, sj[l]);
        if (top == ninf) {  // every position masked
          std::fill(sj, sj + L, 0.f);
          continue;
        }
        float total = 0.f;
#pragma omp simd reduction(+ : total)
        for (int64_t l = 0; l < L; ++l) {
          sj[l] = expf(sj[l] - top);  // vectorized (libmvec) under -fno-math-errno
          total += sj[l];
        }
        const float inv = 1.f / total;
#pragma omp simd
        for (int64_t l = 0; l < L; ++l) sj[l] *= inv;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      const KV* vb = vp + b * vs0 + g * vs1;
      for (int64_t l = 0; l < L; ++l) {
        const KV* vr = vb + l * vs2;
        bool any = false;
        for (int64_t j = 0; j < G; ++j) any |= s[j * L + l] != 0.f;
        if (!any) continue;
#pragma omp simd
        for (int64_t c = 0; c < d; ++c) kf[c] = to_f(vr[c]);
        for (int64_t j = 0; j < G; ++j) {
          const float p = s[j * L + l];
          float* aj = acc.data() + j * d;
#pragma omp simd
          for (int64_t c = 0; c < d; ++c) aj[c] += p * kf[c];
        }
      }
      for (int64_t j = 0; j < G; ++j) {
        T* o = op + b * os0 + (g * G + j) * os1;
        for (int64_t c = 0; c < d; ++c) o[c] = static_cast<T>(acc[j * d + c]);
      }
    }
  });
}

static void decode_attention(at::Tensor out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const std::optional<at::Tensor>& mask, double scale) {
  TORCH_CHECK(q.dim() == 3 && out.dim() == 3 && k.dim() == 4 && v.dim() == 4, "decode_attention: q, out (B, H, d); K, V (B, KVH, L, d)");
  TORCH_CHECK(q.sizes() == out.sizes() && k.sizes() == v.sizes() && k.size(0) == q.size(0) && k.size(3) == q.size(2) &&
                  k.size(1) > 0 && q.size(1) % k.size(1) == 0,
              "decode_attention: shapes do not fit (heads a multiple of the key/value heads)");
  TORCH_CHECK(q.stride(2) == 1 && out.stride(2) == 1 && k.stride(3) == 1 && v.stride(3) == 1,
              "decode_attention: the last dimension must be contiguous");
  TORCH_CHECK(q.scalar_type() == out.scalar_type() && k.scalar_type() == v.scalar_type() &&
                  (k.scalar_type() == q.scalar_type() || k.scalar_type() == at::kFloat),
              "decode_attention: q and out share one dtype, K and V share theirs or float32");
  const bool* mp = nullptr;
  int64_t ms0 = 0, ms1 = 0;
  if (mask.has_value() && mask->defined()) {
    TORCH_CHECK(mask->scalar_type() == at::kBool && mask->dim() == 2 && mask->size(0) == q.size(0) && mask->size(1) == k.size(2),
                "decode_attention: mask is bool (B, L)");
    mp = mask->data_ptr<bool>();
    ms0 = mask->stride(0);
    ms1 = mask->stride(1);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "decode_attention", [&] {
    if (k.scalar_type() == at::kFloat) {
      attend<scalar_t, float>(out, q, k, v, mp, ms0, ms1, scale);
    } else {
      attend<scalar_t, scalar_t>(out, q, k, v, mp, ms0, ms1, scale);
    }
  });
}

TORCH_LIBRARY_FRAGMENT(openlora_cpu, m) {
  m.def("decode_attention(Tensor(a!) out, Tensor q, Tensor k, Tensor v, Tensor? mask, float scale) -> ()");
  m.impl("decode_attention", c10::DispatchKey::CPU, TORCH_FN(decode_attention));
}
