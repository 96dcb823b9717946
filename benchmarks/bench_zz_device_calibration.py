"""Device calibration (temporary, for the infrastructure's first GPU run): dense GEMM vs the peak table."""
import pytest

@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_gemm(benchmark, bench_meta, cuda_device, dtype):
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    n = 8192
    tdtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    a = torch.randn(n, n, device=cuda_device, dtype=tdtype)
    b = torch.randn(n, n, device=cuda_device, dtype=tdtype)
    bench_meta(stage="calibration", backend="torch-matmul", size=f"n{n}", device="cuda", dtype=dtype, flops=2 * n**3)
    def run():
        out = a @ b
        torch.cuda.synchronize()
        return out
    for _ in range(3):
        run()
    out = benchmark(run)
    ref = (a[:64].double() @ b.double())
    assert torch.allclose(out[:64].double(), ref, rtol=5e-2, atol=5e-1 * n**0.5)

def test_gemm_cpu(benchmark, bench_meta):
    import torch
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    bench_meta(stage="calibration", backend="torch-matmul", size=f"n{n}", device="cpu", dtype="fp32", flops=2 * n**3)
    benchmark(torch.mm, a, b)
