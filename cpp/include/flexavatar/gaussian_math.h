// Per-Gaussian maths shared by the CPU and CUDA rasterizers (and their tests).
//
// Semantics follow gsplat's classic rasterization with SH degree 0 (re-derived, not copied):
//   colour   = max(SH_C0 * sh0 + 0.5, 0)
//   Σ3       = R(q) S Sᵀ R(q)ᵀ,  q normalised wxyz, S = diag(scales)
//   Σcam     = W Σ3 Wᵀ               (W: world-to-camera rotation)
//   Σ2       = J Σcam Jᵀ + eps2d·I    (J: perspective Jacobian with frustum clamping)
//   radius   = ceil(min(3.33, sqrt(2 ln(255 o))) · sqrt(Σ2_ii)) per axis
//   α(pixel) = min(0.99, o · exp(-½ dᵀ Σ2⁻¹ d)),  d = mean2d - pixel centre
//
// Everything is templated on the scalar so the tests can run it in double precision, and
// marked host+device so the CUDA kernels use the very same code.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define FLEXAVATAR_HD __host__ __device__ __forceinline__
#else
#define FLEXAVATAR_HD inline
#endif

namespace flexavatar {
namespace math {

// Float overloads on the host too (plain sqrt(float) would promote to double there).
using std::ceil;
using std::floor;
using std::log;
using std::sqrt;

constexpr int kTileSize = 16;
constexpr float kShC0 = 0.28209479177387814f;
constexpr float kAlphaThreshold = 1.0f / 255.0f;  // contributions below this are skipped
constexpr float kMaxAlpha = 0.99f;                // per-Gaussian alpha clamp
constexpr float kMinTransmittance = 1e-4f;        // stop before T would drop to this
constexpr float kMaxExtent = 3.33f;               // radius clamp in standard deviations
constexpr float kMaxRadius = 1073741824.0f;       // pixel radius clamp (2^30): fits int
constexpr float kDepthAlphaFloor = 1e-10f;        // expected depth = Σ w z / max(alpha, floor)

template <typename T>
FLEXAVATAR_HD T clamp_value(T v, T lo, T hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

template <typename T>
struct Mat3 {
  T m[3][3];
};

template <typename T>
FLEXAVATAR_HD Mat3<T> matmul(const Mat3<T>& a, const Mat3<T>& b) {
  Mat3<T> r;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) r.m[i][j] = a.m[i][0] * b.m[0][j] + a.m[i][1] * b.m[1][j] + a.m[i][2] * b.m[2][j];
  return r;
}

// a · bᵀ
template <typename T>
FLEXAVATAR_HD Mat3<T> matmul_bt(const Mat3<T>& a, const Mat3<T>& b) {
  Mat3<T> r;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) r.m[i][j] = a.m[i][0] * b.m[j][0] + a.m[i][1] * b.m[j][1] + a.m[i][2] * b.m[j][2];
  return r;
}

// aᵀ · b
template <typename T>
FLEXAVATAR_HD Mat3<T> matmul_at(const Mat3<T>& a, const Mat3<T>& b) {
  Mat3<T> r;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) r.m[i][j] = a.m[0][i] * b.m[0][j] + a.m[1][i] * b.m[1][j] + a.m[2][i] * b.m[2][j];
  return r;
}

// One camera: world-to-camera rotation/translation (OpenCV axes) and pixel intrinsics.
template <typename T>
struct Camera {
  Mat3<T> R;
  T t[3];
  T fx, fy, cx, cy;
  int width, height;
};

// viewmat: row-major 4x4 world-to-camera; K: row-major 3x3 pixel intrinsics.
template <typename T, typename In>
FLEXAVATAR_HD Camera<T> make_camera(const In* viewmat, const In* K, int width, int height) {
  Camera<T> cam;
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) cam.R.m[i][j] = T(viewmat[i * 4 + j]);
    cam.t[i] = T(viewmat[i * 4 + 3]);
  }
  cam.fx = T(K[0]);
  cam.fy = T(K[4]);
  cam.cx = T(K[2]);
  cam.cy = T(K[5]);
  cam.width = width;
  cam.height = height;
  return cam;
}

// Rotation matrix of a (not necessarily unit) wxyz quaternion; normalises first.
template <typename T>
FLEXAVATAR_HD Mat3<T> quat_to_rotmat(T w, T x, T y, T z) {
  const T inv = T(1) / sqrt(w * w + x * x + y * y + z * z);
  w *= inv;
  x *= inv;
  y *= inv;
  z *= inv;
  Mat3<T> r;
  r.m[0][0] = T(1) - T(2) * (y * y + z * z);
  r.m[0][1] = T(2) * (x * y - w * z);
  r.m[0][2] = T(2) * (x * z + w * y);
  r.m[1][0] = T(2) * (x * y + w * z);
  r.m[1][1] = T(1) - T(2) * (x * x + z * z);
  r.m[1][2] = T(2) * (y * z - w * x);
  r.m[2][0] = T(2) * (x * z - w * y);
  r.m[2][1] = T(2) * (y * z + w * x);
  r.m[2][2] = T(1) - T(2) * (x * x + y * y);
  return r;
}

// Colour of SH degree 0, clamped at zero like gsplat.
template <typename T>
FLEXAVATAR_HD T sh0_to_color(T sh0) {
  const T c = T(kShC0) * sh0 + T(0.5);
  return c > T(0) ? c : T(0);
}

// Largest σ = ½ dᵀΣ⁻¹d at which o·exp(-σ) still reaches the alpha threshold: ln(255 o).
// Written as o / (1/255) to round like the PyTorch reference.
template <typename T>
FLEXAVATAR_HD T max_sigma(T opacity) {
  return log(opacity / T(kAlphaThreshold));
}

// Projection result of one Gaussian in one view.
template <typename T>
struct Projected {
  bool visible;
  T mean_x, mean_y;     // pixel coordinates of the projected mean
  T depth;              // camera-space z
  T cov_xx, cov_xy, cov_yy;  // Σ2 with eps2d added
  T conic_a, conic_b, conic_c;  // Σ2⁻¹ = [[a, b], [b, c]]
  int radius_x, radius_y;   // opacity-aware pixel radii (tile binning)
};

// Clamped perspective Jacobian entries J = [[j00, 0, j02], [0, j11, j12]].
template <typename T>
struct Jacobian {
  T j00, j02, j11, j12;
  bool clamped_x, clamped_y;
  T tx, ty;
};

template <typename T>
FLEXAVATAR_HD Jacobian<T> perspective_jacobian(const Camera<T>& cam, T x, T y, T z) {
  // Limits of the clamped frustum: 1.3 × the half field of view past the principal point.
  const T tan_fovx = T(0.5) * T(cam.width) / cam.fx;
  const T tan_fovy = T(0.5) * T(cam.height) / cam.fy;
  const T lim_x_pos = (T(cam.width) - cam.cx) / cam.fx + T(0.3) * tan_fovx;
  const T lim_x_neg = cam.cx / cam.fx + T(0.3) * tan_fovx;
  const T lim_y_pos = (T(cam.height) - cam.cy) / cam.fy + T(0.3) * tan_fovy;
  const T lim_y_neg = cam.cy / cam.fy + T(0.3) * tan_fovy;
  const T rz = T(1) / z;
  const T xs = x * rz, ys = y * rz;
  Jacobian<T> j;
  j.clamped_x = xs < -lim_x_neg || xs > lim_x_pos;
  j.clamped_y = ys < -lim_y_neg || ys > lim_y_pos;
  j.tx = z * clamp_value(xs, -lim_x_neg, lim_x_pos);
  j.ty = z * clamp_value(ys, -lim_y_neg, lim_y_pos);
  j.j00 = cam.fx * rz;
  j.j11 = cam.fy * rz;
  j.j02 = -cam.fx * j.tx * rz * rz;
  j.j12 = -cam.fy * j.ty * rz * rz;
  return j;
}

// Camera-space mean and covariance of one Gaussian.
template <typename T>
FLEXAVATAR_HD void camera_space(const Camera<T>& cam, const T mean[3], const T quat[4], const T scale[3],
                                T mean_c[3], Mat3<T>& cov_c) {
  for (int i = 0; i < 3; ++i)
    mean_c[i] = cam.R.m[i][0] * mean[0] + cam.R.m[i][1] * mean[1] + cam.R.m[i][2] * mean[2] + cam.t[i];
  const Mat3<T> rq = quat_to_rotmat(quat[0], quat[1], quat[2], quat[3]);
  Mat3<T> m;  // M = R(q) S
  for (int i = 0; i < 3; ++i)
    for (int k = 0; k < 3; ++k) m.m[i][k] = rq.m[i][k] * scale[k];
  const Mat3<T> cov3 = matmul_bt(m, m);
  cov_c = matmul_bt(matmul(cam.R, cov3), cam.R);
}

template <typename T>
FLEXAVATAR_HD Projected<T> project_gaussian(const Camera<T>& cam, const T mean[3], const T quat[4],
                                            const T scale[3], T opacity, T eps2d, T near_plane,
                                            T far_plane) {
  Projected<T> p{};
  p.visible = false;
  T mc[3];
  Mat3<T> cc;
  camera_space(cam, mean, quat, scale, mc, cc);
  const T z = mc[2];
  if (!(z >= near_plane && z <= far_plane)) return p;  // also rejects NaN

  const Jacobian<T> j = perspective_jacobian(cam, mc[0], mc[1], z);
  // Σ2 = J Σc Jᵀ with J's zero entries (j01, j10) left out.
  const T a0 = j.j00 * cc.m[0][0] + j.j02 * cc.m[2][0];
  const T a1 = j.j00 * cc.m[0][1] + j.j02 * cc.m[2][1];
  const T a2 = j.j00 * cc.m[0][2] + j.j02 * cc.m[2][2];
  const T b1 = j.j11 * cc.m[1][1] + j.j12 * cc.m[2][1];
  const T b2 = j.j11 * cc.m[1][2] + j.j12 * cc.m[2][2];
  p.cov_xx = a0 * j.j00 + a2 * j.j02 + eps2d;
  p.cov_xy = a1 * j.j11 + a2 * j.j12;
  p.cov_yy = b1 * j.j11 + b2 * j.j12 + eps2d;
  const T det = p.cov_xx * p.cov_yy - p.cov_xy * p.cov_xy;
  if (!(det > T(0))) return p;
  const T inv_det = T(1) / det;
  p.conic_a = p.cov_yy * inv_det;
  p.conic_b = -p.cov_xy * inv_det;
  p.conic_c = p.cov_xx * inv_det;
  p.mean_x = cam.fx * mc[0] / z + cam.cx;
  p.mean_y = cam.fy * mc[1] / z + cam.cy;
  p.depth = z;

  if (!(opacity >= T(kAlphaThreshold))) return p;  // can never reach the alpha threshold
  T extend = sqrt(T(2) * max_sigma(opacity));
  if (extend > T(kMaxExtent)) extend = T(kMaxExtent);
  // Clamped before the int cast (a radius >= 2^31 would wrap negative and cull the Gaussian); the
  // tile rectangle is clamped to the grid anyway. Same bound as MAX_RADIUS in kernels/constants.py.
  p.radius_x = int(clamp_value(ceil(extend * sqrt(p.cov_xx)), T(0), T(kMaxRadius)));
  p.radius_y = int(clamp_value(ceil(extend * sqrt(p.cov_yy)), T(0), T(kMaxRadius)));
  if (p.radius_x <= 0 && p.radius_y <= 0) return p;
  if (p.mean_x + T(p.radius_x) <= T(0) || p.mean_x - T(p.radius_x) >= T(cam.width) ||
      p.mean_y + T(p.radius_y) <= T(0) || p.mean_y - T(p.radius_y) >= T(cam.height))
    return p;
  p.visible = true;
  return p;
}

// Tiles [x0, x1) × [y0, y1) covered by the radius box, clamped to the tile grid.
struct TileRect {
  int x0, y0, x1, y1;
};

template <typename T>
FLEXAVATAR_HD TileRect tile_rect(T mean_x, T mean_y, int radius_x, int radius_y, int tiles_x, int tiles_y) {
  const T inv = T(1) / T(kTileSize);
  TileRect r;
  r.x0 = int(clamp_value(floor((mean_x - T(radius_x)) * inv), T(0), T(tiles_x)));
  r.x1 = int(clamp_value(ceil((mean_x + T(radius_x)) * inv), T(0), T(tiles_x)));
  r.y0 = int(clamp_value(floor((mean_y - T(radius_y)) * inv), T(0), T(tiles_y)));
  r.y1 = int(clamp_value(ceil((mean_y + T(radius_y)) * inv), T(0), T(tiles_y)));
  return r;
}

// Smallest value of q(d) = a dx² + 2 b dx dy + c dy² (positive definite) over the rectangle
// dx ∈ [x0, x1], dy ∈ [y0, y1]: 0 if the rectangle holds the origin, else the least of the
// four edge minima (each a clamped 1-D quadratic).
template <typename T>
FLEXAVATAR_HD T min_quadratic_over_rect(T a, T b, T c, T x0, T x1, T y0, T y1) {
  if (x0 <= T(0) && T(0) <= x1 && y0 <= T(0) && T(0) <= y1) return T(0);
  T best;
  {  // edges dx = x0 and dx = x1: minimise over dy
    T dy = clamp_value(-b * x0 / c, y0, y1);
    best = a * x0 * x0 + T(2) * b * x0 * dy + c * dy * dy;
    dy = clamp_value(-b * x1 / c, y0, y1);
    T q = a * x1 * x1 + T(2) * b * x1 * dy + c * dy * dy;
    best = q < best ? q : best;
  }
  {  // edges dy = y0 and dy = y1: minimise over dx
    T dx = clamp_value(-b * y0 / a, x0, x1);
    T q = a * dx * dx + T(2) * b * dx * y0 + c * y0 * y0;
    best = q < best ? q : best;
    dx = clamp_value(-b * y1 / a, x0, x1);
    q = a * dx * dx + T(2) * b * dx * y1 + c * y1 * y1;
    best = q < best ? q : best;
  }
  return best;
}

// Exact tile test: does any pixel centre of tile (tx, ty) see this Gaussian with α ≥ 1/255?
// `sigma_cut` is the largest σ kept (ln(255 o) plus a rounding margin).
template <typename T>
FLEXAVATAR_HD bool tile_touches_gaussian(T mean_x, T mean_y, T conic_a, T conic_b, T conic_c, T sigma_cut,
                                         int tx, int ty, int width, int height) {
  // Pixel centres of the tile, clipped to the image.
  const T px0 = T(tx * kTileSize) + T(0.5);
  const T py0 = T(ty * kTileSize) + T(0.5);
  const T px1 = T((tx + 1) * kTileSize < width ? (tx + 1) * kTileSize : width) - T(0.5);
  const T py1 = T((ty + 1) * kTileSize < height ? (ty + 1) * kTileSize : height) - T(0.5);
  // d = mean - pixel, so d ranges over [mean - p1, mean - p0].
  const T q = min_quadratic_over_rect(conic_a, conic_b, conic_c, mean_x - px1, mean_x - px0, mean_y - py1,
                                      mean_y - py0);
  return T(0.5) * q <= sigma_cut;
}

// Rounding margin on the α cut used when culling tiles and pixels, so that culling never drops a
// pixel whose α rounds to ≥ 1/255 in the blend (α margin of about 2 %).
template <typename T>
FLEXAVATAR_HD T culling_sigma_cut(T opacity) {
  return max_sigma(opacity) + T(0.02);
}

// ----------------------------------------------------------------------------------------------
// Backward of the projection: gradients of one Gaussian's inputs from the gradients of its
// projected quantities in one view. Accumulates (+=) into the output arrays.
template <typename T>
struct ProjectedGrad {
  T mean_x, mean_y;          // ∂L/∂mean2d
  T conic_a, conic_b, conic_c;  // ∂L/∂(a, b, c) with b the single off-diagonal parameter
  T depth;                   // ∂L/∂z
};

template <typename T>
FLEXAVATAR_HD void project_gaussian_backward(const Camera<T>& cam, const T mean[3], const T quat[4],
                                             const T scale[3], T eps2d, const ProjectedGrad<T>& g,
                                             T v_mean[3], T v_quat[4], T v_scale[3]) {
  // Recompute the forward intermediates.
  T mc[3];
  for (int i = 0; i < 3; ++i)
    mc[i] = cam.R.m[i][0] * mean[0] + cam.R.m[i][1] * mean[1] + cam.R.m[i][2] * mean[2] + cam.t[i];
  const T qn = sqrt(quat[0] * quat[0] + quat[1] * quat[1] + quat[2] * quat[2] + quat[3] * quat[3]);
  const T w = quat[0] / qn, x = quat[1] / qn, y = quat[2] / qn, z = quat[3] / qn;
  const Mat3<T> rq = quat_to_rotmat(w, x, y, z);
  Mat3<T> m;
  for (int i = 0; i < 3; ++i)
    for (int k = 0; k < 3; ++k) m.m[i][k] = rq.m[i][k] * scale[k];
  const Mat3<T> cov3 = matmul_bt(m, m);
  const Mat3<T> cc = matmul_bt(matmul(cam.R, cov3), cam.R);
  const T zc = mc[2];
  const Jacobian<T> jac = perspective_jacobian(cam, mc[0], mc[1], zc);
  Mat3<T> J{};  // 2x3 Jacobian in the top two rows
  J.m[0][0] = jac.j00;
  J.m[0][2] = jac.j02;
  J.m[1][1] = jac.j11;
  J.m[1][2] = jac.j12;
  const Mat3<T> jc = matmul(J, cc);  // rows 0..1 used
  const T s_xx = jc.m[0][0] * J.m[0][0] + jc.m[0][1] * J.m[0][1] + jc.m[0][2] * J.m[0][2] + eps2d;
  const T s_xy = jc.m[0][0] * J.m[1][0] + jc.m[0][1] * J.m[1][1] + jc.m[0][2] * J.m[1][2];
  const T s_yy = jc.m[1][0] * J.m[1][0] + jc.m[1][1] * J.m[1][1] + jc.m[1][2] * J.m[1][2] + eps2d;
  const T inv_det = T(1) / (s_xx * s_yy - s_xy * s_xy);
  const T qa = s_yy * inv_det, qb = -s_xy * inv_det, qc = s_xx * inv_det;

  // conic Q = Σ2⁻¹: ∂L/∂Σ2 = -Q G Q with G the symmetric gradient of Q.
  const T ga = g.conic_a, gb = T(0.5) * g.conic_b, gc = g.conic_c;
  // QG
  const T qg00 = qa * ga + qb * gb, qg01 = qa * gb + qb * gc;
  const T qg10 = qb * ga + qc * gb, qg11 = qb * gb + qc * gc;
  const T v_s00 = -(qg00 * qa + qg01 * qb);
  const T v_s01 = -(qg00 * qb + qg01 * qc);
  const T v_s11 = -(qg10 * qb + qg11 * qc);
  Mat3<T> V2{};  // ∂L/∂Σ2 as a symmetric 2x2 in the top-left block
  V2.m[0][0] = v_s00;
  V2.m[0][1] = v_s01;
  V2.m[1][0] = v_s01;
  V2.m[1][1] = v_s11;

  // Σ2 = J Σc Jᵀ: ∂L/∂Σc = Jᵀ V2 J, ∂L/∂J = 2 V2 J Σc.
  const Mat3<T> v_cc = matmul(matmul_at(J, V2), J);
  const Mat3<T> v_J = matmul(matmul(V2, J), cc);  // times 2 below

  // Camera-space mean: mean2d, depth and J all depend on it.
  const T rz = T(1) / zc, rz2 = rz * rz, rz3 = rz2 * rz;
  T v_mc[3];
  v_mc[0] = g.mean_x * cam.fx * rz;
  v_mc[1] = g.mean_y * cam.fy * rz;
  v_mc[2] = -(g.mean_x * cam.fx * mc[0] + g.mean_y * cam.fy * mc[1]) * rz2 + g.depth;
  const T vj00 = T(2) * v_J.m[0][0], vj02 = T(2) * v_J.m[0][2];
  const T vj11 = T(2) * v_J.m[1][1], vj12 = T(2) * v_J.m[1][2];
  // j00 = fx/z, j11 = fy/z
  v_mc[2] += -cam.fx * rz2 * vj00 - cam.fy * rz2 * vj11;
  // j02 = -fx tx / z²; tx = x unclamped, else z·limit.
  if (jac.clamped_x) {
    v_mc[2] += cam.fx * jac.tx * rz3 * vj02;
  } else {
    v_mc[0] += -cam.fx * rz2 * vj02;
    v_mc[2] += T(2) * cam.fx * jac.tx * rz3 * vj02;
  }
  if (jac.clamped_y) {
    v_mc[2] += cam.fy * jac.ty * rz3 * vj12;
  } else {
    v_mc[1] += -cam.fy * rz2 * vj12;
    v_mc[2] += T(2) * cam.fy * jac.ty * rz3 * vj12;
  }
  for (int i = 0; i < 3; ++i)
    v_mean[i] += cam.R.m[0][i] * v_mc[0] + cam.R.m[1][i] * v_mc[1] + cam.R.m[2][i] * v_mc[2];

  // Σc = W Σ3 Wᵀ: ∂L/∂Σ3 = Wᵀ V W; Σ3 = M Mᵀ: ∂L/∂M = 2 V3 M.
  const Mat3<T> v_cov3 = matmul(matmul_at(cam.R, v_cc), cam.R);
  const Mat3<T> v_m = matmul(v_cov3, m);  // times 2 below
  Mat3<T> G;  // ∂L/∂R(q) = ∂L/∂M · S
  for (int i = 0; i < 3; ++i)
    for (int k = 0; k < 3; ++k) G.m[i][k] = T(2) * v_m.m[i][k] * scale[k];
  for (int k = 0; k < 3; ++k)
    v_scale[k] += T(2) * (v_m.m[0][k] * rq.m[0][k] + v_m.m[1][k] * rq.m[1][k] + v_m.m[2][k] * rq.m[2][k]);

  // R(q) of the normalised quaternion.
  const T dw = T(2) * (-z * G.m[0][1] + y * G.m[0][2] + z * G.m[1][0] - x * G.m[1][2] - y * G.m[2][0] +
                       x * G.m[2][1]);
  const T dx = T(2) * (y * G.m[0][1] + z * G.m[0][2] + y * G.m[1][0] - T(2) * x * G.m[1][1] - w * G.m[1][2] +
                       z * G.m[2][0] + w * G.m[2][1] - T(2) * x * G.m[2][2]);
  const T dy = T(2) * (-T(2) * y * G.m[0][0] + x * G.m[0][1] + w * G.m[0][2] + x * G.m[1][0] + z * G.m[1][2] -
                       w * G.m[2][0] + z * G.m[2][1] - T(2) * y * G.m[2][2]);
  const T dz = T(2) * (-T(2) * z * G.m[0][0] - w * G.m[0][1] + x * G.m[0][2] + w * G.m[1][0] -
                       T(2) * z * G.m[1][1] + y * G.m[1][2] + x * G.m[2][0] + y * G.m[2][1]);
  // Normalisation q/|q|: project out the radial part.
  const T dot = dw * w + dx * x + dy * y + dz * z;
  v_quat[0] += (dw - dot * w) / qn;
  v_quat[1] += (dx - dot * x) / qn;
  v_quat[2] += (dy - dot * y) / qn;
  v_quat[3] += (dz - dot * z) / qn;
}

}  // namespace math
}  // namespace flexavatar
