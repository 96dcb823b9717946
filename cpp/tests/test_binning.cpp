// Tile binning: the exact ellipse/tile test against brute force, and the per-tile lists.
#include <algorithm>
#include <cmath>

#include "flexavatar/cpu_rasterizer.h"
#include "flexavatar/gaussian_math.h"
#include "harness.h"
#include "scene_util.h"

using namespace flexavatar;
using namespace flexavatar::math;

TEST_CASE(min_quadratic_over_rect_matches_dense_sampling) {
  testutil::Rng rng(3);
  for (int trial = 0; trial < 200; ++trial) {
    // Random positive-definite [[a, b], [b, c]].
    const double a = rng.uniform(0.01, 2), c = rng.uniform(0.01, 2);
    const double b = rng.uniform(-0.95, 0.95) * std::sqrt(a * c);
    const double x0 = rng.uniform(-10, 10), y0 = rng.uniform(-10, 10);
    const double x1 = x0 + rng.uniform(0, 8), y1 = y0 + rng.uniform(0, 8);
    const double exact = min_quadratic_over_rect(a, b, c, x0, x1, y0, y1);
    double sampled = 1e300;
    const int n = 200;
    for (int i = 0; i <= n; ++i)
      for (int j = 0; j <= n; ++j) {
        const double dx = x0 + (x1 - x0) * i / n, dy = y0 + (y1 - y0) * j / n;
        // std::min, not an fmin reduction: GCC 12.2 for aarch64 crashes vectorizing one at -O3
        sampled = std::min(sampled, a * dx * dx + 2 * b * dx * dy + c * dy * dy);
      }
    CHECK(exact <= sampled + 1e-12);                         // never above a sampled value
    CHECK_NEAR(exact, sampled, 0.05 * (1.0 + sampled));      // and close to the sampled minimum
  }
}

// Every pixel that sees a Gaussian with α ≥ 1/255 lies in a tile the exact test keeps, and the
// test never keeps a tile the radius box excludes (it only prunes).
TEST_CASE(exact_tile_test_keeps_every_contributing_pixel) {
  const testutil::Scene s = testutil::random_scene(11, 1, 300, 1, 70, 45);
  ProjectedView view;
  view.resize(s.G);
  project_gaussians_cpu(s.gaussians(), s.cameras(), s.settings(), 0, 0, 0, s.G, &view);
  collect_visible(s.G, &view);
  CHECK(view.visible.size() > 100);
  const int tiles_x = 5, tiles_y = 3;
  long kept = 0, boxed = 0;
  for (const int32_t i : view.visible) {
    for (int ty = 0; ty < tiles_y; ++ty)
      for (int tx = 0; tx < tiles_x; ++tx) {
        const bool in_box = tx >= view.tile_x0[i] && tx < view.tile_x1[i] && ty >= view.tile_y0[i] && ty < view.tile_y1[i];
        const bool touched = tile_touches_gaussian(view.mean_x[i], view.mean_y[i], view.conic_a[i], view.conic_b[i],
                                                   view.conic_c[i], max_sigma(view.opacity[i]), tx, ty, 70, 45);
        bool any_pixel = false;
        for (int y = ty * 16; y < std::min(45, ty * 16 + 16); ++y)
          for (int x = tx * 16; x < std::min(70, tx * 16 + 16); ++x) {
            const float dx = view.mean_x[i] - (x + 0.5f), dy = view.mean_y[i] - (y + 0.5f);
            const float sigma = 0.5f * (view.conic_a[i] * dx * dx + view.conic_c[i] * dy * dy) + view.conic_b[i] * dx * dy;
            any_pixel |= view.opacity[i] * std::exp(-sigma) >= kAlphaThreshold * 1.001f;
          }
        if (any_pixel && in_box) CHECK(touched);
        boxed += in_box;
        kept += in_box && touched;
      }
  }
  CHECK(kept < boxed);  // the exact test does prune corner tiles
}

TEST_CASE(tile_lists_are_front_to_back_and_complete) {
  const testutil::Scene s = testutil::random_scene(5, 1, 500, 1, 96, 64);
  ProjectedView view;
  view.resize(s.G);
  project_gaussians_cpu(s.gaussians(), s.cameras(), s.settings(), 0, 0, 0, s.G, &view);
  collect_visible(s.G, &view);
  TileBins bins;
  bin_gaussians_cpu(view, s.W, s.H, &bins);
  CHECK(bins.tiles_x == 6 && bins.tiles_y == 4);
  for (int t = 0; t < bins.tiles_x * bins.tiles_y; ++t) {
    const int tx = t % bins.tiles_x, ty = t / bins.tiles_x;
    std::vector<int32_t> expected;
    for (const int32_t i : view.visible)
      if (tx >= view.tile_x0[i] && tx < view.tile_x1[i] && ty >= view.tile_y0[i] && ty < view.tile_y1[i] &&
          tile_touches_gaussian(view.mean_x[i], view.mean_y[i], view.conic_a[i], view.conic_b[i], view.conic_c[i],
                                view.sigma_cut[i], tx, ty, int(s.W), int(s.H)))
        expected.push_back(i);
    std::stable_sort(expected.begin(), expected.end(),
                     [&](int32_t a, int32_t b) { return view.depth[a] < view.depth[b]; });
    const std::vector<int32_t> got(bins.ids.begin() + bins.offsets[t], bins.ids.begin() + bins.offsets[t + 1]);
    CHECK(got == expected);
  }
}

HARNESS_MAIN()
