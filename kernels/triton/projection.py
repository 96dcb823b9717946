"""Triton projection kernels: 3D Gaussians -> screen-space conics, radii and tile rectangles.

One lane per (view, Gaussian). The math is the reference's ``project_gaussians`` written out
per scalar (3x3 matrices as nine registers); the backward recomputes the forward intermediates
instead of storing them (cheaper than the memory traffic).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .. import constants

# Kernels may only read globals that are tl.constexpr.
ALPHA_MIN = tl.constexpr(constants.ALPHA_MIN)
EPS2D = tl.constexpr(constants.EPS2D)
FAR_PLANE = tl.constexpr(constants.FAR_PLANE)
FRUSTUM_CLIP = tl.constexpr(constants.FRUSTUM_CLIP)
MAX_RADIUS = tl.constexpr(constants.MAX_RADIUS)
NEAR_PLANE = tl.constexpr(constants.NEAR_PLANE)
RADIUS_CLIP_SIGMAS = tl.constexpr(constants.RADIUS_CLIP_SIGMAS)
TILE_SIZE = tl.constexpr(constants.TILE_SIZE)


@triton.jit
def _quat_to_rotmat(qw, qx, qy, qz):
    inv_norm = 1.0 / tl.sqrt(qw * qw + qx * qx + qy * qy + qz * qz)
    w, x, y, z = qw * inv_norm, qx * inv_norm, qy * inv_norm, qz * inv_norm
    r00 = 1.0 - 2.0 * (y * y + z * z)
    r01 = 2.0 * (x * y - w * z)
    r02 = 2.0 * (x * z + w * y)
    r10 = 2.0 * (x * y + w * z)
    r11 = 1.0 - 2.0 * (x * x + z * z)
    r12 = 2.0 * (y * z - w * x)
    r20 = 2.0 * (x * z - w * y)
    r21 = 2.0 * (y * z + w * x)
    r22 = 1.0 - 2.0 * (x * x + y * y)
    return w, x, y, z, inv_norm, r00, r01, r02, r10, r11, r12, r20, r21, r22


@triton.jit
def _load_view(w2c_ptr, k_ptr, view, mask):
    """Rows of the world2cam rotation, translation and fx, fy, cx, cy for each lane's view."""
    w = w2c_ptr + view * 16
    k = k_ptr + view * 9
    w00 = tl.load(w + 0, mask=mask, other=1.0)
    w01 = tl.load(w + 1, mask=mask, other=0.0)
    w02 = tl.load(w + 2, mask=mask, other=0.0)
    t0 = tl.load(w + 3, mask=mask, other=0.0)
    w10 = tl.load(w + 4, mask=mask, other=0.0)
    w11 = tl.load(w + 5, mask=mask, other=1.0)
    w12 = tl.load(w + 6, mask=mask, other=0.0)
    t1 = tl.load(w + 7, mask=mask, other=0.0)
    w20 = tl.load(w + 8, mask=mask, other=0.0)
    w21 = tl.load(w + 9, mask=mask, other=0.0)
    w22 = tl.load(w + 10, mask=mask, other=1.0)
    t2 = tl.load(w + 11, mask=mask, other=1.0)
    fx = tl.load(k + 0, mask=mask, other=1.0)
    cx = tl.load(k + 2, mask=mask, other=0.0)
    fy = tl.load(k + 4, mask=mask, other=1.0)
    cy = tl.load(k + 5, mask=mask, other=0.0)
    return w00, w01, w02, w10, w11, w12, w20, w21, w22, t0, t1, t2, fx, fy, cx, cy


@triton.jit
def _camera_covariance(r00, r01, r02, r10, r11, r12, r20, r21, r22, sx, sy, sz,
                       w00, w01, w02, w10, w11, w12, w20, w21, w22):
    """Sigma_cam = W (R S)(R S)^T W^T, returned as its 6 unique entries (and M = R S)."""
    m00, m01, m02 = r00 * sx, r01 * sy, r02 * sz
    m10, m11, m12 = r10 * sx, r11 * sy, r12 * sz
    m20, m21, m22 = r20 * sx, r21 * sy, r22 * sz
    s00 = m00 * m00 + m01 * m01 + m02 * m02
    s01 = m00 * m10 + m01 * m11 + m02 * m12
    s02 = m00 * m20 + m01 * m21 + m02 * m22
    s11 = m10 * m10 + m11 * m11 + m12 * m12
    s12 = m10 * m20 + m11 * m21 + m12 * m22
    s22 = m20 * m20 + m21 * m21 + m22 * m22
    # A = W Sigma
    a00 = w00 * s00 + w01 * s01 + w02 * s02
    a01 = w00 * s01 + w01 * s11 + w02 * s12
    a02 = w00 * s02 + w01 * s12 + w02 * s22
    a10 = w10 * s00 + w11 * s01 + w12 * s02
    a11 = w10 * s01 + w11 * s11 + w12 * s12
    a12 = w10 * s02 + w11 * s12 + w12 * s22
    a20 = w20 * s00 + w21 * s01 + w22 * s02
    a21 = w20 * s01 + w21 * s11 + w22 * s12
    a22 = w20 * s02 + w21 * s12 + w22 * s22
    # C = A W^T
    c00 = a00 * w00 + a01 * w01 + a02 * w02
    c01 = a00 * w10 + a01 * w11 + a02 * w12
    c02 = a00 * w20 + a01 * w21 + a02 * w22
    c11 = a10 * w10 + a11 * w11 + a12 * w12
    c12 = a10 * w20 + a11 * w21 + a12 * w22
    c22 = a20 * w20 + a21 * w21 + a22 * w22
    return c00, c01, c02, c11, c12, c22, m00, m01, m02, m10, m11, m12, m20, m21, m22


@triton.jit
def _frustum_limits(fx, fy, cx, cy, width, height):
    tan_x = 0.5 * width / fx
    tan_y = 0.5 * height / fy
    lim_x_neg = cx / fx + FRUSTUM_CLIP * tan_x
    lim_x_pos = (width - cx) / fx + FRUSTUM_CLIP * tan_x
    lim_y_neg = cy / fy + FRUSTUM_CLIP * tan_y
    lim_y_pos = (height - cy) / fy + FRUSTUM_CLIP * tan_y
    return lim_x_neg, lim_x_pos, lim_y_neg, lim_y_pos


@triton.jit
def project_fwd_kernel(
    means_ptr, quats_ptr, scales_ptr, opac_ptr,        # [N, G, *] (strided, may be broadcasts)
    stride_mn, stride_mg, stride_qn, stride_qg, stride_sn, stride_sg, stride_on, stride_og,
    w2c_ptr, k_ptr,                                    # [N, 4, 4], [N, 3, 3] contiguous
    means2d_ptr, conics_ptr, depths_ptr, radii_ptr, rect_ptr, counts_ptr,  # [N*G, *] outputs
    num_gaussians, total, width, height, tiles_x, tiles_y,
    BLOCK: tl.constexpr,
):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = i < total
    view = i // num_gaussians
    g = i % num_gaussians
    mp = means_ptr + view * stride_mn + g * stride_mg
    qp = quats_ptr + view * stride_qn + g * stride_qg
    sp = scales_ptr + view * stride_sn + g * stride_sg
    mx = tl.load(mp + 0, mask=mask, other=0.0)
    my = tl.load(mp + 1, mask=mask, other=0.0)
    mz = tl.load(mp + 2, mask=mask, other=0.0)
    qw = tl.load(qp + 0, mask=mask, other=1.0)
    qx = tl.load(qp + 1, mask=mask, other=0.0)
    qy = tl.load(qp + 2, mask=mask, other=0.0)
    qz = tl.load(qp + 3, mask=mask, other=0.0)
    sx = tl.load(sp + 0, mask=mask, other=1.0)
    sy = tl.load(sp + 1, mask=mask, other=1.0)
    sz = tl.load(sp + 2, mask=mask, other=1.0)
    opac = tl.load(opac_ptr + view * stride_on + g * stride_og, mask=mask, other=0.0)
    w00, w01, w02, w10, w11, w12, w20, w21, w22, t0, t1, t2, fx, fy, cx, cy = _load_view(w2c_ptr, k_ptr, view, mask)

    # Camera-space mean; culled lanes get z = 1 so that nothing below divides by zero.
    x = w00 * mx + w01 * my + w02 * mz + t0
    y = w10 * mx + w11 * my + w12 * mz + t1
    z_raw = w20 * mx + w21 * my + w22 * mz + t2
    in_range = (z_raw >= NEAR_PLANE) & (z_raw <= FAR_PLANE)
    z = tl.where(in_range, z_raw, 1.0)

    _, _, _, _, _, r00, r01, r02, r10, r11, r12, r20, r21, r22 = _quat_to_rotmat(qw, qx, qy, qz)
    c00, c01, c02, c11, c12, c22, _, _, _, _, _, _, _, _, _ = _camera_covariance(
        r00, r01, r02, r10, r11, r12, r20, r21, r22, sx, sy, sz, w00, w01, w02, w10, w11, w12, w20, w21, w22)

    lim_x_neg, lim_x_pos, lim_y_neg, lim_y_pos = _frustum_limits(fx, fy, cx, cy, width, height)
    u = tl.minimum(tl.maximum(x / z, -lim_x_neg), lim_x_pos)
    v = tl.minimum(tl.maximum(y / z, -lim_y_neg), lim_y_pos)
    j00 = fx / z
    j02 = -fx * u / z
    j11 = fy / z
    j12 = -fy * v / z
    cov_a = j00 * j00 * c00 + 2.0 * j00 * j02 * c02 + j02 * j02 * c22 + EPS2D
    cov_b = j00 * j11 * c01 + j00 * j12 * c02 + j02 * j11 * c12 + j02 * j12 * c22
    cov_c = j11 * j11 * c11 + 2.0 * j11 * j12 * c12 + j12 * j12 * c22 + EPS2D
    det = cov_a * cov_c - cov_b * cov_b
    invertible = det > 0
    det = tl.where(invertible, det, 1.0)
    mean_u = fx * x / z + cx
    mean_v = fy * y / z + cy

    # Opacity-aware radius (alpha >= 1/255 only inside it), then on-image and tile rectangle.
    visible = opac >= ALPHA_MIN
    extent = tl.sqrt(2.0 * tl.log(tl.where(visible, opac / ALPHA_MIN, 1.0)))
    extent = tl.minimum(extent, RADIUS_CLIP_SIGMAS)
    rad_x = tl.minimum(tl.ceil(extent * tl.sqrt(cov_a)), MAX_RADIUS)   # fits the int32 radii (> 0 = drawn)
    rad_y = tl.minimum(tl.ceil(extent * tl.sqrt(cov_c)), MAX_RADIUS)
    on_image = (mean_u + rad_x > 0) & (mean_u - rad_x < width) & (mean_v + rad_y > 0) & (mean_v - rad_y < height)
    valid = mask & in_range & invertible & visible & on_image & ((rad_x > 0) | (rad_y > 0))
    rad_x = tl.where(valid, rad_x, 0.0)
    rad_y = tl.where(valid, rad_y, 0.0)
    tile_x0 = tl.minimum(tl.maximum(tl.floor(mean_u / TILE_SIZE - rad_x / TILE_SIZE), 0.0), tiles_x * 1.0)
    tile_x1 = tl.minimum(tl.maximum(tl.ceil(mean_u / TILE_SIZE + rad_x / TILE_SIZE), 0.0), tiles_x * 1.0)
    tile_y0 = tl.minimum(tl.maximum(tl.floor(mean_v / TILE_SIZE - rad_y / TILE_SIZE), 0.0), tiles_y * 1.0)
    tile_y1 = tl.minimum(tl.maximum(tl.ceil(mean_v / TILE_SIZE + rad_y / TILE_SIZE), 0.0), tiles_y * 1.0)
    count = ((tile_x1 - tile_x0) * (tile_y1 - tile_y0)).to(tl.int32)
    count = tl.where(valid & (rad_x > 0) & (rad_y > 0), count, 0)

    tl.store(means2d_ptr + i * 2 + 0, mean_u, mask=mask)
    tl.store(means2d_ptr + i * 2 + 1, mean_v, mask=mask)
    tl.store(conics_ptr + i * 3 + 0, cov_c / det, mask=mask)
    tl.store(conics_ptr + i * 3 + 1, -cov_b / det, mask=mask)
    tl.store(conics_ptr + i * 3 + 2, cov_a / det, mask=mask)
    tl.store(depths_ptr + i, z, mask=mask)
    tl.store(radii_ptr + i * 2 + 0, rad_x.to(tl.int32), mask=mask)
    tl.store(radii_ptr + i * 2 + 1, rad_y.to(tl.int32), mask=mask)
    tl.store(rect_ptr + i * 4 + 0, tile_x0.to(tl.int32), mask=mask)
    tl.store(rect_ptr + i * 4 + 1, tile_y0.to(tl.int32), mask=mask)
    tl.store(rect_ptr + i * 4 + 2, tile_x1.to(tl.int32), mask=mask)
    tl.store(rect_ptr + i * 4 + 3, tile_y1.to(tl.int32), mask=mask)
    tl.store(counts_ptr + i, count, mask=mask)


@triton.jit
def project_bwd_kernel(
    means_ptr, quats_ptr, scales_ptr,
    stride_mn, stride_mg, stride_qn, stride_qg, stride_sn, stride_sg,
    w2c_ptr, k_ptr, radii_ptr,
    v_means2d_ptr, v_conics_ptr, v_depths_ptr,         # [N*G, *] gradients from blending
    v_means_ptr, v_quats_ptr, v_scales_ptr,            # [N*G, *] outputs
    num_gaussians, total, width, height,
    BLOCK: tl.constexpr,
):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    in_bounds = i < total
    valid = in_bounds & (tl.load(radii_ptr + i * 2, mask=in_bounds, other=0) > 0)
    view = i // num_gaussians
    g = i % num_gaussians
    mp = means_ptr + view * stride_mn + g * stride_mg
    qp = quats_ptr + view * stride_qn + g * stride_qg
    sp = scales_ptr + view * stride_sn + g * stride_sg
    mx = tl.load(mp + 0, mask=valid, other=0.0)
    my = tl.load(mp + 1, mask=valid, other=0.0)
    mz = tl.load(mp + 2, mask=valid, other=0.0)
    qw = tl.load(qp + 0, mask=valid, other=1.0)
    qx = tl.load(qp + 1, mask=valid, other=0.0)
    qy = tl.load(qp + 2, mask=valid, other=0.0)
    qz = tl.load(qp + 3, mask=valid, other=0.0)
    sx = tl.load(sp + 0, mask=valid, other=1.0)
    sy = tl.load(sp + 1, mask=valid, other=1.0)
    sz = tl.load(sp + 2, mask=valid, other=1.0)
    w00, w01, w02, w10, w11, w12, w20, w21, w22, t0, t1, t2, fx, fy, cx, cy = _load_view(w2c_ptr, k_ptr, view, valid)
    v_mu = tl.load(v_means2d_ptr + i * 2 + 0, mask=valid, other=0.0)
    v_mv = tl.load(v_means2d_ptr + i * 2 + 1, mask=valid, other=0.0)
    v_ca = tl.load(v_conics_ptr + i * 3 + 0, mask=valid, other=0.0)
    v_cb = tl.load(v_conics_ptr + i * 3 + 1, mask=valid, other=0.0)
    v_cc = tl.load(v_conics_ptr + i * 3 + 2, mask=valid, other=0.0)
    v_z = tl.load(v_depths_ptr + i, mask=valid, other=0.0)

    # ---- recompute the forward --------------------------------------------------------------
    x = w00 * mx + w01 * my + w02 * mz + t0
    y = w10 * mx + w11 * my + w12 * mz + t1
    z = w20 * mx + w21 * my + w22 * mz + t2
    z = tl.where(valid, z, 1.0)
    qwn, qxn, qyn, qzn, inv_norm, r00, r01, r02, r10, r11, r12, r20, r21, r22 = _quat_to_rotmat(qw, qx, qy, qz)
    c00, c01, c02, c11, c12, c22, m00, m01, m02, m10, m11, m12, m20, m21, m22 = _camera_covariance(
        r00, r01, r02, r10, r11, r12, r20, r21, r22, sx, sy, sz, w00, w01, w02, w10, w11, w12, w20, w21, w22)
    lim_x_neg, lim_x_pos, lim_y_neg, lim_y_pos = _frustum_limits(fx, fy, cx, cy, width, height)
    x_over_z = x / z
    y_over_z = y / z
    u = tl.minimum(tl.maximum(x_over_z, -lim_x_neg), lim_x_pos)
    v = tl.minimum(tl.maximum(y_over_z, -lim_y_neg), lim_y_pos)
    u_free = (x_over_z >= -lim_x_neg) & (x_over_z <= lim_x_pos)   # clamp inactive: u depends on x, z
    v_free = (y_over_z >= -lim_y_neg) & (y_over_z <= lim_y_pos)
    j00 = fx / z
    j02 = -fx * u / z
    j11 = fy / z
    j12 = -fy * v / z
    a = j00 * j00 * c00 + 2.0 * j00 * j02 * c02 + j02 * j02 * c22 + EPS2D
    b = j00 * j11 * c01 + j00 * j12 * c02 + j02 * j11 * c12 + j02 * j12 * c22
    c = j11 * j11 * c11 + 2.0 * j11 * j12 * c12 + j12 * j12 * c22 + EPS2D
    det = a * c - b * b
    det = tl.where(valid, det, 1.0)

    # ---- conic = inverse(cov2d): (c, -b, a) / det --------------------------------------------
    inv_det = 1.0 / det
    inv_det2 = inv_det * inv_det
    v_a = v_ca * (-c * c * inv_det2) + v_cb * (b * c * inv_det2) + v_cc * (inv_det - a * c * inv_det2)
    v_b = v_ca * (2.0 * b * c * inv_det2) + v_cb * (-inv_det - 2.0 * b * b * inv_det2) + v_cc * (2.0 * a * b * inv_det2)
    v_c = v_ca * (inv_det - a * c * inv_det2) + v_cb * (a * b * inv_det2) + v_cc * (-a * a * inv_det2)

    # ---- cov2d = J Sigma_cam J^T (entries of Sigma_cam as independent symmetric parameters) ----
    v_c00 = v_a * j00 * j00
    v_c01 = v_b * j00 * j11
    v_c02 = v_a * 2.0 * j00 * j02 + v_b * j00 * j12
    v_c11 = v_c * j11 * j11
    v_c12 = v_b * j02 * j11 + v_c * 2.0 * j11 * j12
    v_c22 = v_a * j02 * j02 + v_b * j02 * j12 + v_c * j12 * j12
    v_j00 = v_a * (2.0 * j00 * c00 + 2.0 * j02 * c02) + v_b * (j11 * c01 + j12 * c02)
    v_j02 = v_a * (2.0 * j00 * c02 + 2.0 * j02 * c22) + v_b * (j11 * c12 + j12 * c22)
    v_j11 = v_b * (j00 * c01 + j02 * c12) + v_c * (2.0 * j11 * c11 + 2.0 * j12 * c12)
    v_j12 = v_b * (j00 * c02 + j02 * c22) + v_c * (2.0 * j11 * c12 + 2.0 * j12 * c22)

    # ---- J and the projected mean as functions of the camera-space mean ------------------------
    inv_z = 1.0 / z
    inv_z2 = inv_z * inv_z
    du_dx = tl.where(u_free, inv_z, 0.0)
    du_dz = tl.where(u_free, -x * inv_z2, 0.0)
    dv_dy = tl.where(v_free, inv_z, 0.0)
    dv_dz = tl.where(v_free, -y * inv_z2, 0.0)
    v_x = v_j02 * (-fx * inv_z) * du_dx + v_mu * fx * inv_z
    v_y = v_j12 * (-fy * inv_z) * dv_dy + v_mv * fy * inv_z
    v_zc = (v_j00 * (-fx * inv_z2) + v_j11 * (-fy * inv_z2)
            + v_j02 * (fx * u * inv_z2 - fx * inv_z * du_dz)
            + v_j12 * (fy * v * inv_z2 - fy * inv_z * dv_dz)
            - v_mu * fx * x * inv_z2 - v_mv * fy * y * inv_z2 + v_z)

    # ---- world means: p_cam = W m + t -> v_m = W^T v_p -----------------------------------------
    v_mx = w00 * v_x + w10 * v_y + w20 * v_zc
    v_my = w01 * v_x + w11 * v_y + w21 * v_zc
    v_mz = w02 * v_x + w12 * v_y + w22 * v_zc

    # ---- Sigma_cam = W Sigma W^T -> G = W^T V W with V the symmetric gradient matrix ----------
    h01 = 0.5 * v_c01
    h02 = 0.5 * v_c02
    h12 = 0.5 * v_c12
    # B = V W (V symmetric: rows (v_c00, h01, h02), (h01, v_c11, h12), (h02, h12, v_c22))
    b00 = v_c00 * w00 + h01 * w10 + h02 * w20
    b01 = v_c00 * w01 + h01 * w11 + h02 * w21
    b02 = v_c00 * w02 + h01 * w12 + h02 * w22
    b10 = h01 * w00 + v_c11 * w10 + h12 * w20
    b11 = h01 * w01 + v_c11 * w11 + h12 * w21
    b12 = h01 * w02 + v_c11 * w12 + h12 * w22
    b20 = h02 * w00 + h12 * w10 + v_c22 * w20
    b21 = h02 * w01 + h12 * w11 + v_c22 * w21
    b22 = h02 * w02 + h12 * w12 + v_c22 * w22
    g00 = w00 * b00 + w10 * b10 + w20 * b20
    g01 = w00 * b01 + w10 * b11 + w20 * b21
    g02 = w00 * b02 + w10 * b12 + w20 * b22
    g11 = w01 * b01 + w11 * b11 + w21 * b21
    g12 = w01 * b02 + w11 * b12 + w21 * b22
    g22 = w02 * b02 + w12 * b12 + w22 * b22

    # ---- Sigma = M M^T -> v_M = 2 G M; M = R S ---------------------------------------------------
    vm00 = 2.0 * (g00 * m00 + g01 * m10 + g02 * m20)
    vm01 = 2.0 * (g00 * m01 + g01 * m11 + g02 * m21)
    vm02 = 2.0 * (g00 * m02 + g01 * m12 + g02 * m22)
    vm10 = 2.0 * (g01 * m00 + g11 * m10 + g12 * m20)
    vm11 = 2.0 * (g01 * m01 + g11 * m11 + g12 * m21)
    vm12 = 2.0 * (g01 * m02 + g11 * m12 + g12 * m22)
    vm20 = 2.0 * (g02 * m00 + g12 * m10 + g22 * m20)
    vm21 = 2.0 * (g02 * m01 + g12 * m11 + g22 * m21)
    vm22 = 2.0 * (g02 * m02 + g12 * m12 + g22 * m22)
    v_sx = vm00 * r00 + vm10 * r10 + vm20 * r20
    v_sy = vm01 * r01 + vm11 * r11 + vm21 * r21
    v_sz = vm02 * r02 + vm12 * r12 + vm22 * r22
    vr00, vr10, vr20 = vm00 * sx, vm10 * sx, vm20 * sx
    vr01, vr11, vr21 = vm01 * sy, vm11 * sy, vm21 * sy
    vr02, vr12, vr22 = vm02 * sz, vm12 * sz, vm22 * sz

    # ---- rotation matrix of the normalised quaternion, then the normalisation -----------------
    w, qa, qb, qc = qwn, qxn, qyn, qzn  # (w, x, y, z) normalised
    vw = 2.0 * (-qc * vr01 + qb * vr02 + qc * vr10 - qa * vr12 - qb * vr20 + qa * vr21)
    vx = 2.0 * (qb * vr01 + qc * vr02 + qb * vr10 - 2.0 * qa * vr11 - w * vr12 + qc * vr20 + w * vr21 - 2.0 * qa * vr22)
    vy = 2.0 * (-2.0 * qb * vr00 + qa * vr01 + w * vr02 + qa * vr10 + qc * vr12 - w * vr20 + qc * vr21 - 2.0 * qb * vr22)
    vz = 2.0 * (-2.0 * qc * vr00 - w * vr01 + qa * vr02 + w * vr10 - 2.0 * qc * vr11 + qb * vr12 + qa * vr20 + qb * vr21)
    dot = vw * w + vx * qa + vy * qb + vz * qc
    v_qw = (vw - dot * w) * inv_norm
    v_qx = (vx - dot * qa) * inv_norm
    v_qy = (vy - dot * qb) * inv_norm
    v_qz = (vz - dot * qc) * inv_norm

    zero = 0.0
    tl.store(v_means_ptr + i * 3 + 0, tl.where(valid, v_mx, zero), mask=in_bounds)
    tl.store(v_means_ptr + i * 3 + 1, tl.where(valid, v_my, zero), mask=in_bounds)
    tl.store(v_means_ptr + i * 3 + 2, tl.where(valid, v_mz, zero), mask=in_bounds)
    tl.store(v_quats_ptr + i * 4 + 0, tl.where(valid, v_qw, zero), mask=in_bounds)
    tl.store(v_quats_ptr + i * 4 + 1, tl.where(valid, v_qx, zero), mask=in_bounds)
    tl.store(v_quats_ptr + i * 4 + 2, tl.where(valid, v_qy, zero), mask=in_bounds)
    tl.store(v_quats_ptr + i * 4 + 3, tl.where(valid, v_qz, zero), mask=in_bounds)
    tl.store(v_scales_ptr + i * 3 + 0, tl.where(valid, v_sx, zero), mask=in_bounds)
    tl.store(v_scales_ptr + i * 3 + 1, tl.where(valid, v_sy, zero), mask=in_bounds)
    tl.store(v_scales_ptr + i * 3 + 2, tl.where(valid, v_sz, zero), mask=in_bounds)
