// Element → float32 for the CPU kernels, written so the compiler vectorizes the bfloat16 case (a bfloat16
// is the top half of a float32: shift and reinterpret, no rounding).
#pragma once
#include <c10/util/BFloat16.h>
#include <cstdint>
#include <cstring>

template <typename T> static inline float to_f(T v) { return static_cast<float>(v); }
template <> inline float to_f<c10::BFloat16>(c10::BFloat16 v) {
  uint32_t u = static_cast<uint32_t>(v.x) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
