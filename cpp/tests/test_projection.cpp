// Projection maths: closed forms, culling, frustum clamping, and the analytic backward against
// central finite differences in double precision.
#include <cmath>

#include "flexavatar/gaussian_math.h"
#include "harness.h"
#include "scene_util.h"

using namespace flexavatar::math;

namespace {

Camera<double> simple_camera(double tz, double f, double cx, double cy, int w, int h) {
  const double vm[16] = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, tz, 0, 0, 0, 1};
  const double K[9] = {f, 0, cx, 0, f, cy, 0, 0, 1};
  return make_camera<double>(vm, K, w, h);
}

}  // namespace

TEST_CASE(isotropic_gaussian_on_axis_matches_closed_form) {
  const double z = 4.0, f = 100.0, s = 0.05, o = 0.8, eps = 0.3;
  const Camera<double> cam = simple_camera(z, f, 32.0, 24.0, 64, 48);
  const double mean[3] = {0, 0, 0}, quat[4] = {0.3, -0.5, 0.2, 0.7}, scale[3] = {s, s, s};
  const Projected<double> p = project_gaussian(cam, mean, quat, scale, o, eps, 0.01, 1e10);
  CHECK(p.visible);
  const double var = (f * s / z) * (f * s / z) + eps;  // J Σ Jᵀ of an isotropic Gaussian on the axis
  CHECK_NEAR(p.mean_x, 32.0, 1e-12);
  CHECK_NEAR(p.mean_y, 24.0, 1e-12);
  CHECK_NEAR(p.depth, z, 1e-12);
  CHECK_NEAR(p.cov_xx, var, 1e-12);
  CHECK_NEAR(p.cov_yy, var, 1e-12);
  CHECK_NEAR(p.cov_xy, 0.0, 1e-12);
  CHECK_NEAR(p.conic_a, 1.0 / var, 1e-12);
  CHECK_NEAR(p.conic_c, 1.0 / var, 1e-12);
  CHECK_NEAR(p.conic_b, 0.0, 1e-12);
  const double extend = std::fmin(3.33, std::sqrt(2.0 * std::log(255.0 * o)));
  CHECK(p.radius_x == int(std::ceil(extend * std::sqrt(var))));
  CHECK(p.radius_y == p.radius_x);
}

TEST_CASE(off_axis_mean_projects_with_pinhole_model) {
  const Camera<double> cam = simple_camera(3.0, 80.0, 30.0, 20.0, 64, 48);
  const double mean[3] = {0.4, -0.3, 1.0}, quat[4] = {1, 0, 0, 0}, scale[3] = {0.1, 0.02, 0.05};
  const Projected<double> p = project_gaussian(cam, mean, quat, scale, 0.9, 0.3, 0.01, 1e10);
  CHECK(p.visible);
  CHECK_NEAR(p.mean_x, 80.0 * 0.4 / 4.0 + 30.0, 1e-12);
  CHECK_NEAR(p.mean_y, 80.0 * -0.3 / 4.0 + 20.0, 1e-12);
  // Axis-aligned scales: J Σ Jᵀ by hand with J = [[f/z, 0, -f x/z²], [0, f/z, -f y/z²]].
  const double z = 4.0, x = 0.4, y = -0.3, f = 80.0;
  const double sx2 = 0.01, sy2 = 0.0004, sz2 = 0.0025;
  const double j00 = f / z, j02 = -f * x / (z * z), j11 = f / z, j12 = -f * y / (z * z);
  CHECK_NEAR(p.cov_xx, j00 * j00 * sx2 + j02 * j02 * sz2 + 0.3, 1e-12);
  CHECK_NEAR(p.cov_yy, j11 * j11 * sy2 + j12 * j12 * sz2 + 0.3, 1e-12);
  CHECK_NEAR(p.cov_xy, j02 * j12 * sz2, 1e-12);
}

TEST_CASE(quaternion_scale_does_not_matter) {
  const Camera<double> cam = simple_camera(3.0, 80.0, 30.0, 20.0, 64, 48);
  const double mean[3] = {0.1, 0.2, 0.3}, scale[3] = {0.1, 0.02, 0.05};
  const double q1[4] = {0.5, 0.1, -0.7, 0.2}, q2[4] = {1.5, 0.3, -2.1, 0.6};
  const Projected<double> a = project_gaussian(cam, mean, q1, scale, 0.5, 0.3, 0.01, 1e10);
  const Projected<double> b = project_gaussian(cam, mean, q2, scale, 0.5, 0.3, 0.01, 1e10);
  CHECK_NEAR(a.cov_xx, b.cov_xx, 1e-12);
  CHECK_NEAR(a.cov_xy, b.cov_xy, 1e-12);
  CHECK_NEAR(a.cov_yy, b.cov_yy, 1e-12);
}

TEST_CASE(culling_near_far_opacity_and_offscreen) {
  const Camera<double> cam = simple_camera(0.0, 80.0, 32.0, 24.0, 64, 48);
  const double quat[4] = {1, 0, 0, 0}, scale[3] = {0.05, 0.05, 0.05};
  const double behind[3] = {0, 0, -1}, too_near[3] = {0, 0, 0.005}, ok[3] = {0, 0, 2}, far_off[3] = {50, 0, 2};
  CHECK(!project_gaussian(cam, behind, quat, scale, 0.9, 0.3, 0.01, 1e10).visible);
  CHECK(!project_gaussian(cam, too_near, quat, scale, 0.9, 0.3, 0.01, 1e10).visible);
  CHECK(!project_gaussian(cam, ok, quat, scale, 0.9, 0.3, 0.01, 1.5).visible);  // beyond far
  CHECK(project_gaussian(cam, ok, quat, scale, 0.9, 0.3, 0.01, 1e10).visible);
  CHECK(!project_gaussian(cam, ok, quat, scale, 0.003, 0.3, 0.01, 1e10).visible);  // o < 1/255
  CHECK(!project_gaussian(cam, far_off, quat, scale, 0.9, 0.3, 0.01, 1e10).visible);
}

TEST_CASE(huge_gaussian_radius_is_clamped_not_wrapped) {
  // σ ≈ f·s/z = 40·1e8/2 = 2e9 px: radius ≈ 6.7e9 px does not fit an int and once wrapped negative
  // (the Gaussian was culled). Clamped to kMaxRadius it stays visible, its tile box the whole grid.
  const float vm[16] = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1};
  const float K[9] = {40, 0, 8, 0, 40, 8, 0, 0, 1};
  const Camera<float> cam = make_camera<float>(vm, K, 16, 16);
  const float mean[3] = {0, 0, 2}, quat[4] = {1, 0, 0, 0}, scale[3] = {1e8f, 1e8f, 1e8f};
  const Projected<float> p = project_gaussian<float>(cam, mean, quat, scale, 0.8f, 0.3f, 0.01f, 1e10f);
  CHECK(p.visible);
  CHECK(p.radius_x == int(kMaxRadius) && p.radius_y == int(kMaxRadius));
  const TileRect r = tile_rect(p.mean_x, p.mean_y, p.radius_x, p.radius_y, 1, 1);
  CHECK(r.x0 == 0 && r.y0 == 0 && r.x1 == 1 && r.y1 == 1);
}

TEST_CASE(jacobian_clamps_outside_the_widened_frustum) {
  const Camera<double> cam = simple_camera(0.0, 50.0, 20.0, 24.0, 64, 48);
  // x/z = 3 is far past lim_x_pos = (64-20)/50 + 0.3·0.64 = 1.072
  const Jacobian<double> j = perspective_jacobian(cam, 6.0, 0.0, 2.0);
  CHECK(j.clamped_x);
  CHECK(!j.clamped_y);
  CHECK_NEAR(j.tx, 2.0 * (44.0 / 50.0 + 0.3 * 0.64), 1e-12);
  CHECK_NEAR(j.j02, -50.0 * j.tx / 4.0, 1e-12);
  const Jacobian<double> k = perspective_jacobian(cam, -6.0, 0.0, 2.0);  // lim_x_neg = 20/50 + 0.192
  CHECK_NEAR(k.tx, -2.0 * (20.0 / 50.0 + 0.3 * 0.64), 1e-12);
}

// L = Σ g · (mean2d, conic, depth): analytic gradient vs central differences.
TEST_CASE(projection_backward_matches_finite_differences) {
  testutil::Rng rng(7);
  int cases = 0;
  for (int trial = 0; trial < 40; ++trial) {
    // Random camera with rotation; some Gaussians far off-axis so the clamp is exercised.
    const double ang = rng.uniform(-0.5, 0.5);
    const double vm[16] = {std::cos(ang), 0, std::sin(ang), rng.uniform(-0.3, 0.3),
                           0, 1, 0, rng.uniform(-0.3, 0.3),
                           -std::sin(ang), 0, std::cos(ang), rng.uniform(3, 4),
                           0, 0, 0, 1};
    const double K[9] = {60, 0, 30, 0, 55, 22, 0, 0, 1};
    const Camera<double> cam = make_camera<double>(vm, K, 64, 48);
    const double spread = trial % 4 == 0 ? 6.0 : 1.0;
    double mean[3] = {rng.uniform(-spread, spread), rng.uniform(-spread, spread), rng.uniform(-0.5, 0.5)};
    double quat[4] = {rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(-1, 1)};
    double scale[3] = {std::exp(rng.uniform(-3, -1)), std::exp(rng.uniform(-3, -1)), std::exp(rng.uniform(-3, -1))};
    const ProjectedGrad<double> g{rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(-1, 1),
                                  rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(-1, 1)};
    auto loss = [&](const double* m, const double* q, const double* s) {
      // Re-run the projection without the culling so the loss is smooth everywhere.
      const Projected<double> p = project_gaussian(cam, m, q, s, 1.0, 0.3, 1e-6, 1e10);
      return g.mean_x * p.mean_x + g.mean_y * p.mean_y + g.conic_a * p.conic_a + g.conic_b * p.conic_b +
             g.conic_c * p.conic_c + g.depth * p.depth;
    };
    double v_mean[3] = {0, 0, 0}, v_quat[4] = {0, 0, 0, 0}, v_scale[3] = {0, 0, 0};
    project_gaussian_backward(cam, mean, quat, scale, 0.3, g, v_mean, v_quat, v_scale);
    auto fd = [&](double* x, double h) {
      const double keep = *x;
      *x = keep + h;
      const double up = loss(mean, quat, scale);
      *x = keep - h;
      const double down = loss(mean, quat, scale);
      *x = keep;
      return (up - down) / (2 * h);
    };
    double max_err = 0, max_ref = 1e-9;
    for (int i = 0; i < 3; ++i) {
      const double e = fd(&mean[i], 1e-6);
      max_err = std::fmax(max_err, std::fabs(e - v_mean[i]));
      max_ref = std::fmax(max_ref, std::fabs(e));
    }
    for (int i = 0; i < 4; ++i) {
      const double e = fd(&quat[i], 1e-6);
      max_err = std::fmax(max_err, std::fabs(e - v_quat[i]));
      max_ref = std::fmax(max_ref, std::fabs(e));
    }
    for (int i = 0; i < 3; ++i) {
      const double e = fd(&scale[i], 1e-7);
      max_err = std::fmax(max_err, std::fabs(e - v_scale[i]));
      max_ref = std::fmax(max_ref, std::fabs(e));
    }
    CHECK(max_err <= 1e-5 * max_ref);
    if (!(max_err <= 1e-5 * max_ref)) std::printf("    trial %d: max_err %g, max_ref %g\n", trial, max_err, max_ref);
    ++cases;
  }
  CHECK(cases == 40);
}

HARNESS_MAIN()
