"""The numbers that define the rasterizer (gsplat ``rasterization``, classic mode, SH degree 0).

Every backend (reference, Triton, native C++/CUDA) must use these values so that they agree.
"""

SH_C0 = 0.28209479177387814        # degree-0 real spherical harmonic: colour = max(SH_C0*sh0 + 0.5, 0)
EPS2D = 0.3                        # added to the 2D covariance diagonal (low-pass filter, no compensation)
NEAR_PLANE = 0.01                  # Gaussians with camera-space z outside [near, far] are culled
FAR_PLANE = 1e10
RADIUS_CLIP_SIGMAS = 3.33          # radius = ceil(min(3.33, sqrt(2 ln(255 opacity))) * sqrt(cov2d_ii))
MAX_RADIUS = 2.0 ** 30             # pixel radius clamp, before its int32 cast (2^31 would wrap);
                                   # the tile rectangle is clamped to the grid, so this changes
                                   # nothing unless |mean2d| > 2^30 - 16384 px
TILE_SIZE = 16                     # 16x16 pixel tiles
ALPHA_MIN = 1.0 / 255.0            # alpha below this is skipped (and opacity below it gets no footprint)
ALPHA_MAX = 0.99                   # alpha = min(ALPHA_MAX, opacity * exp(-sigma)); see note below
TRANSMITTANCE_MIN = 1e-4           # stop before the Gaussian that would bring T to <= this value
FRUSTUM_CLIP = 0.3                 # Jacobian clamp: |x/z| <= (extent / f) + 0.3 * tan(fov / 2), per side
DEPTH_ALPHA_EPS = 1e-10            # expected depth = sum(w z) / max(alpha, DEPTH_ALPHA_EPS)

# Note on ALPHA_MAX: the issue fixes 0.99 (the original 3DGS value). gsplat's CUDA kernels clamp
# at 0.999; if FLEX-1 checkpoints turn out to need 0.999, change it here and in native backends.
