"""Times the cuda backend (forward, forward+backward) at 512x512 with 58,361 Gaussians next to the
reference and Triton, with CUDA events; ``--small`` runs one small forward+backward in each sort form (for
compute-sanitizer); ``--sort-ab`` times the native forward's two sort forms (FLEXAVATAR_CUDA_SORT) side by side,
exact and sync-free, in alternating rounds."""
import os
import statistics
import sys

import torch

from flexavatar import _native
from flexavatar.kernels import Cameras, Splats, available_backends, rasterize
from flexavatar.kernels.testing import random_head_scene, random_scene


def cuda_scene(splats, cameras, grad):
    s = Splats(**{k: torch.tensor(v, device="cuda", requires_grad=grad) for k, v in splats.arrays().items()})
    return s, Cameras(torch.tensor(cameras.world2cam, device="cuda"), torch.tensor(cameras.K, device="cuda"))


def time_ms(fn, iters=50, warmup=5):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


SORT_FORMS = ("depth-first", "tile-depth-keys")   # FLEXAVATAR_CUDA_SORT (cpp/cuda/forward.cu)

if "--small" in sys.argv:
    splats, cameras = random_scene(500, 2, 80, 56, seed=0)
    for form in SORT_FORMS:
        os.environ["FLEXAVATAR_CUDA_SORT"] = form
        s, c = cuda_scene(splats, cameras, True)
        out = rasterize(s, c, 80, 56, background=[0.2, 0.3, 0.4], backend="cuda")
        (out.rgb.sum() + out.alpha.sum() + out.depth.sum()).backward()
        # the sync-free sort, with room to spare and with too little (intersections dropped, nothing out of bounds)
        with torch.no_grad():
            n = rasterize(s, c, 80, 56, backend="cuda").intersections
            for capacity in (2 * n, n // 3, 1):
                free = rasterize(s, c, 80, 56, backend="cuda", intersection_capacity=capacity)
                assert int(free.intersections.item()) == n, (capacity, n)
        torch.cuda.synchronize()
        print(f"small ok ({form} sort)", float(s.means.grad.abs().sum()), "intersections", n)
    sys.exit(0)

def native_forward_args(s, c):
    """The native entry point's arguments for the torch scene (s, c) at 512²: splats [1, G, …], viewmats
    [1, 1, 4, 4], Ks [1, 1, 3, 3], no background, then preallocated image, alpha and depth."""
    args = [getattr(s, k)[None].contiguous() for k in ("means", "quats", "scales", "opacities", "sh0")]
    args += [c.world2cam[None].contiguous(), c.K[None].contiguous(), None]
    outs = [torch.empty(1, 1, 512, 512, 3, device="cuda"), torch.empty(1, 1, 512, 512, device="cuda"),
            torch.empty(1, 1, 512, 512, device="cuda")]
    return args + outs


if "--sort-ab" in sys.argv:
    print(torch.cuda.get_device_name(0), "native forward at 512², 58,361 Gaussians, both sort forms, 7 rounds")
    args = native_forward_args(*cuda_scene(*random_head_scene(width=512, height=512), False))
    stream = torch.cuda.current_stream().cuda_stream
    count = torch.zeros(1, dtype=torch.int64, device="cuda")
    n = _native.cuda_forward(*args, 512, 512, stream=stream).num_intersections
    cases = {"exact": {}, "sync-free 2x": dict(intersection_capacity=2 * n, num_intersections_out=count)}
    times = {(form, case): [] for form in SORT_FORMS for case in cases}
    frames = {}
    for _ in range(7):
        for form in SORT_FORMS:
            os.environ["FLEXAVATAR_CUDA_SORT"] = form
            for case, kwargs in cases.items():
                times[form, case].append(time_ms(lambda: _native.cuda_forward(*args, 512, 512, stream=stream,
                                                                              **kwargs), iters=30, warmup=3))
                frames[form, case] = [t.clone() for t in args[8:11]]      # image, alpha, depth
    same = all(torch.equal(x, y) for case in cases
               for x, y in zip(frames["depth-first", case], frames["tile-depth-keys", case]))
    print(f"intersections {n}; the two forms' frames bit-identical: {same} (image, alpha, depth; exact and sync-free)")
    for case in cases:
        a, b = (statistics.median(times[form, case]) for form in SORT_FORMS)
        print(f"{case:13s} depth-first {a:.4f} ms   tile-depth-keys {b:.4f} ms   ratio {b / a:.2f}x")
    os.environ.pop("FLEXAVATAR_CUDA_SORT")
    sys.exit(0 if same else 1)

print(torch.cuda.get_device_name(0), "backends:", available_backends("cuda"))
splats, cameras = random_head_scene(width=512, height=512)
s, c = cuda_scene(splats, cameras, False)
sg, cg = cuda_scene(splats, cameras, True)
w = torch.randn(1, 512, 512, 3, device="cuda")

# Kernel-only view: the native entry point with preallocated outputs.
args = native_forward_args(s, c)
stream = torch.cuda.current_stream().cuda_stream
state = _native.cuda_forward(*args, 512, 512, stream=stream)
n_isect = state.num_intersections
print("intersections", n_isect)
print(f"native cuda_forward call: {time_ms(lambda: _native.cuda_forward(*args, 512, 512, stream=stream)):.3f} ms")
count = torch.zeros(1, dtype=torch.int64, device="cuda")
for headroom in (1, 2, 4):      # the sync-free sort: no host wait, the sort covers every slot of the capacity
    capacity = headroom * n_isect
    ms = time_ms(lambda: _native.cuda_forward(*args, 512, 512, stream=stream, intersection_capacity=capacity,
                                              num_intersections_out=count))
    print(f"native cuda_forward call, sync-free, capacity {headroom} x intersections: {ms:.3f} ms")

for backend in ("cuda", "reference", "triton"):
    if backend not in available_backends("cuda"):
        print(backend, "unavailable")
        continue
    n = 50 if backend != "reference" else 3
    with torch.no_grad():
        fwd = time_ms(lambda: rasterize(s, c, 512, 512, backend=backend, check_values=False), iters=n, warmup=2)

    def step():
        for t in sg.arrays().values():
            t.grad = None
        out = rasterize(sg, cg, 512, 512, backend=backend, check_values=False)
        ((out.rgb * w).sum() + out.alpha.sum()).backward()

    fb = time_ms(step, iters=n, warmup=2)
    print(f"{backend:10s} forward {fwd:8.3f} ms   forward+backward {fb:8.3f} ms")
