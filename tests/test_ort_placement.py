"""benchmarks/device/ort_placement.py (the GPU session's node-placement report), run on the CPU provider."""
from __future__ import annotations

import onnx


def test_every_node_of_the_bundle_is_counted_on_the_provider_that_ran_it(device_script, onnx_features_bundle, tmp_path,
                                                                          capsys):
    tool = device_script("ort_placement")
    decoder = onnx_features_bundle / "decoder.fp32.onnx"
    report = tool.placement(decoder, tool.PROVIDERS["cpu"], tmp_path)
    # ONNX Runtime fuses some nodes, so the profiled count is positive and at most the graph's node count
    n_graph = len(onnx.load(str(decoder)).graph.node)
    assert 0 < report["providers"]["CPUExecutionProvider"] <= n_graph
    assert set(report["providers"]) == {"CPUExecutionProvider"}
    assert report["memcpy"] == 0 and report["off_provider"] == {} and report["compute_off_provider"] == []
    assert "cuda_graphs" not in report                       # only asked of the CUDA provider
    times = report["kernel_ms_per_op"]                       # one run's kernel time per op type, largest first
    assert "MatMul" in times and all(ms >= 0 for ms in times.values()) and list(times.values()) == sorted(
        times.values(), reverse=True)

    assert tool.main([str(onnx_features_bundle), "--provider", "cpu", "--times", "--json",
                      str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "decoder.fp32.onnx: {'CPUExecutionProvider'" in out and (tmp_path / "r.json").is_file()
    assert "kernel time: " in out and " ms (" in out


def test_gpu_kernel_profile_classes_and_per_frame_summary(device_script):
    """benchmarks/device/gpu_kernel_profile.py's bookkeeping (its CUDA run needs a GPU): kernel names of cuBLAS,
    cuDNN, flash attention, ONNX Runtime and the rasterizer land in their classes, figures are per frame."""
    tool = device_script("gpu_kernel_profile")
    named = {
        "sm90_xmma_gemm_f16f16_f16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off": "gemm",
        "ampere_fp16_s16816gemm_fp16_128x128_ldg8_f2f_stages_32x5_tn": "gemm",
        "void cudnn::engines_precompiled::nchwToNhwcKernel<__half, __half, float, false, true>": "convolution",
        "sm80_xmma_dgrad_implicit_gemm_indexed_f16f16_f16f32_f32_nhwckrsc_nchw": "convolution",
        "void flash::flash_fwd_kernel<Flash_fwd_kernel_traits<192, 64, 64, 4>>": "attention",
        "void onnxruntime::cuda::_BinaryElementWiseSimple<true, true, __half, __half, __half, OP_Add<__half>>": "elementwise",
        "void onnxruntime::cuda::cuApplyLayerNorm<__half, float, __half, false>": "normalisation",
        "void onnxruntime::cuda::_TransposeKernel<4, unsigned short>": "layout / copy",
        "Memcpy DtoH (Device -> Pinned)": "layout / copy",
        "void onnxruntime::cuda::_GridSampleKernel<float, true>": "grid sample",
        "void flexavatar::cuda::(anonymous namespace)::blend_forward_kernel(long, long, int, int, int2 const*)": "rasterizer",
        "void cub::CUB_300000_SM_900::detail::radix_sort::DeviceRadixSortOnesweepKernel<Policy, false>": "rasterizer",
        "nvjet_sm90_hsh_96x64_64x8_1x2_h_bz_NNN": "gemm",                         # cuBLAS 13's JIT GEMMs
        "triton_per_fused_native_layer_norm_3": "normalisation",                   # Inductor (torch-compile)
        "triton_poi_fused_add_gelu_view_7": "fused (Inductor)",
        "triton_red_fused_mean_pow_2": "fused (Inductor)",
        "triton_tem_fused_mm_5": "gemm",
        "some_unknown_kernel": "other",
    }
    for name, cls in named.items():
        assert tool.kernel_class(name) == cls, name
    kernels = [("gemm_a", 30.0), ("gemm_a", 10.0), ("void onnxruntime::cuda::_TransposeKernel", 20.0)] * 2   # 2 frames
    s = tool.summarise(kernels, calls=2, wall_ms=10.0)
    assert s["wall_ms_per_frame"] == 5.0 and s["gpu_busy_ms_per_frame"] == 0.06 and s["kernels_per_frame"] == 3.0
    assert s["gpu_ms_per_class"] == {"gemm": 0.04, "layout / copy": 0.02}
    assert s["top_kernels"][0] == {"name": "gemm_a", "ms_per_frame": 0.04, "launches_per_frame": 2.0}


def test_gpu_kernel_profile_host_side_per_frame(device_script):
    """gpu_kernel_profile.host_profile: the host's own time per function and frame, heaviest first."""
    import time
    tool = device_script("gpu_kernel_profile")

    def wait_for_the_gpu():                                   # stands in for a native call that waits
        time.sleep(0.004)

    def glue(i):
        return sum(range(50))

    def frame(i):
        glue(i)
        glue(i)
        wait_for_the_gpu()

    host = tool.host_profile(frame, calls=5)
    top = host["top_functions"]
    assert host["calls"] == 5 and host["wall_ms_per_frame"] >= 4.0
    assert "time.sleep" in top[0]["function"] and 3.5 <= top[0]["own_ms_per_frame"] <= host["wall_ms_per_frame"]
    assert top[0]["calls_per_frame"] == 1.0
    by_name = {row["function"].split(" ")[-1]: row for row in top}
    assert by_name["glue"]["calls_per_frame"] == 2.0
    assert by_name["frame"]["cumulative_ms_per_frame"] >= top[0]["own_ms_per_frame"]
    assert [r["own_ms_per_frame"] for r in top] == sorted((r["own_ms_per_frame"] for r in top), reverse=True)
