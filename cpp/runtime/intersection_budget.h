// How many (tile, Gaussian) intersections the CUDA rasterizer sorts, so that a frame needs no host sync
// (flexavatar/cuda_api.h, intersection_capacity). The same policy as the Python runtime's
// runtime/intersections.py: the first frame is sized exactly (its count is read back: one sync); later frames
// sort a capacity sized at kHeadroom x the largest count seen (a multiple of kGranule, at least kMinSlots), which
// stays put while that count x kRefit fits in it and is sized again once it does not: the same size frame after
// frame (the same pool blocks), between 1.5x and 2x the largest count. A frame over its capacity is rendered
// again, sized exactly, when its pixels come back.
#pragma once

#include <algorithm>
#include <cstdint>

namespace flexavatar {
namespace runtime {

class IntersectionBudget {
 public:
  static constexpr int64_t kHeadroom = 2;                         // slots per largest count, when sized
  static constexpr int64_t kRefitNum = 3, kRefitDen = 2;          // sized again once largest x 3/2 > capacity
  static constexpr int64_t kMinSlots = int64_t(1) << 16;
  static constexpr int64_t kGranule = int64_t(1) << 16;           // capacities are multiples of this
  static constexpr int64_t kMaxSlots = (int64_t(1) << 31) - 1;  // the sort indexes its slots with int32

  // Slots for the next frame; 0 = size it exactly (nothing measured yet, or more than the sort can index).
  int64_t capacity() {
    if (largest_ == 0) return 0;
    if (largest_ > kMaxSlots / kHeadroom) return 0;
    if (largest_ * kRefitNum > sized_ * kRefitDen) sized_ = largest_ * kHeadroom;
    const int64_t need = std::max(kMinSlots, sized_);
    const int64_t slots = (need + kGranule - 1) / kGranule * kGranule;
    return slots <= kMaxSlots ? slots : 0;
  }
  // Records the exact count of a frame.
  void observe(int64_t count) { largest_ = std::max(largest_, count); }
  int64_t largest() const { return largest_; }

 private:
  int64_t largest_ = 0;
  int64_t sized_ = 0;  // kHeadroom x the largest count when last sized (before the rounding)
};

}  // namespace runtime
}  // namespace flexavatar
