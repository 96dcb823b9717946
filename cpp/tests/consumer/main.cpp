// Renders one Gaussian through the installed library and checks the centre pixel is covered.
#include <cstdio>
#include <vector>

#include "flexavatar/build_info.h"
#include "flexavatar/cpu_rasterizer.h"

int main() {
  const float means[3] = {0, 0, 0}, quats[4] = {1, 0, 0, 0}, scales[3] = {0.1f, 0.1f, 0.1f};
  const float opacities[1] = {0.9f}, sh0[3] = {0, 0, 0};
  const float viewmat[16] = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 0, 0, 0, 1};
  const float K[9] = {50, 0, 16, 0, 50, 16, 0, 0, 1};
  std::vector<float> image(32 * 32 * 3), alpha(32 * 32), depth(32 * 32);
  flexavatar::RasterSettings settings;
  settings.width = 32;
  settings.height = 32;
  const flexavatar::Status st = flexavatar::rasterize_cpu({1, 1, means, quats, scales, opacities, sh0},
                                                          {1, viewmat, K, nullptr},
                                                          settings, {image.data(), alpha.data(), depth.data()});
  const float centre = alpha[16 * 32 + 16];
  std::printf("flexavatar %s: status %d, centre alpha %.4f, depth %.4f\n", flexavatar::build_info().version,
              static_cast<int>(st.code()), centre, depth[16 * 32 + 16]);
  return st.ok() && centre > 0.8f && centre < 0.91f ? 0 : 1;
}
