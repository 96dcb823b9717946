"""End-to-end export of the reduced official fixture (all targets), checked against PyTorch and outputs.npz.

Two exports per session (≈ 2 min on 2 cores): ``full`` — fixture weights + a small random DINOv2 inside
the encoder + an avatar photo, ONNX and OpenVINO, fp32 and fp16; ``features`` — through the CLI, no
DINOv2 (features-input encoder), fp32 ONNX only, into an existing folder with --force, with OpenVINO hidden
and the template under another file name.
"""
from __future__ import annotations

import hashlib
import math
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from flexavatar.bundle import (FORMAT_ONNX, FORMAT_ONNX_ORT, FORMAT_OPENVINO, GAUSSIAN_OUTPUTS, ROLE_DECODER,
                               ROLE_DECODER_AVATAR,
                               ROLE_ENCODER, ROLE_ENCODER_FEATURES, Bundle, read_onnx_metadata,
                               read_onnx_metadata_props, read_openvino_metadata)
from flexavatar.export import ExportArgumentError, ExportStepError, export_bundle
from flexavatar.export.cli import main as cli_main
from flexavatar.export.exporter import DEFAULT_OPSET, TARGETS
from flexavatar.export.onnx_tools import FP16_FP32_OPS, constant_only_nodes
from flexavatar.export.openvino_tools import compile_ir, run_compiled
from flexavatar.export.parity import psnr, render_frontal
from flexavatar.export.testing import fixture_config, write_synthetic_photo
from flexavatar.export.testing import fixture_model as load_fixture_model
from flexavatar.model import AvatarCode, FlexAvatarModel
from flexavatar.template import Template

# fixture README "Recommended parity test": final attributes
ATOL_FINAL = {"means": 2e-5, "scales": 2e-5, "opacities": 2e-5, "quats": 1e-4, "sh0": 1e-4}
FIXTURE_NAMES = {"means": "positions", "quats": "rotations", "scales": "scales", "opacities": "opacities",
                 "sh0": "colors"}


@pytest.fixture(scope="module")
def fixture_model(official_dir):
    return load_fixture_model(official_dir)


TRACED: list[str] = []          # roles torch.onnx traced during the `full` export


@pytest.fixture(scope="module")
def full(tmp_path_factory, official_dir, fixture_model):
    import flexavatar.export.exporter as exporter

    root = tmp_path_factory.mktemp("export_full")
    photo = write_synthetic_photo(root / "photo.png", 200)
    messages: list[str] = []
    real = exporter.export_graph

    def counted(module, args, spec, opset):
        TRACED.append(spec.role)
        return real(module, args, spec, opset)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(exporter, "export_graph", counted)
        result = export_bundle(official_dir / "state_dict.safetensors", root / "bundle",
                               template=official_dir / "gghead_template.obj", config=fixture_config(official_dir),
                               dinov2=fixture_model.dinov2, avatar=photo, targets=TARGETS,
                               progress=messages.append)
    return result, messages, photo


def test_each_graph_is_traced_once_though_finished_graphs_are_released(full):
    # the exporter frees a graph's fp32 proto after its last job (memory at FLEX-1 size); the avatar decoder,
    # built from the traced decoder after the decoder's own jobs, must not make it trace again
    assert sorted(TRACED) == sorted([ROLE_ENCODER, ROLE_DECODER])


@pytest.fixture(scope="module")
def features_bundle(tmp_path_factory, official_dir, full):
    import flexavatar.export.exporter as exporter

    out = tmp_path_factory.mktemp("export_features") / "bundle"
    out.mkdir()
    (out / "stale.txt").write_text("from an older export")
    template = shutil.copy(official_dir / "gghead_template.obj", out.parent / "my_head_v2.obj")
    # the decoder graph is the full bundle's (same network): only the features encoder is traced here
    decoder = onnx.load(str(full[0].path / "decoder.fp32.onnx"))
    real = exporter.export_graph
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(exporter, "export_graph", lambda module, args, spec, opset:
                   decoder if spec.role == ROLE_DECODER else real(module, args, spec, opset))
        mp.setitem(sys.modules, "openvino", None)       # an ONNX-only export needs no OpenVINO
        rc = cli_main([str(official_dir / "state_dict.safetensors"), "-o", str(out), "--template",
                       str(template), "--config", str(official_dir / "config.json"),
                       "--precision", "fp32", "--targets", "onnx", "--force"])
    assert rc == 0
    return Bundle.open(out)


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(bundle: Bundle, artifact, feeds: dict) -> dict[str, np.ndarray]:
    path = bundle.path(artifact)
    if artifact.format in (FORMAT_ONNX, FORMAT_ONNX_ORT):
        out = _session(path).run(None, feeds)
    else:
        out = run_compiled(compile_ir(path), feeds)
    return dict(zip([o.name for o in artifact.outputs], out, strict=True))


def _export_fixture_with_cli(official_dir: Path, out: Path, *options: str) -> int:
    """flexavatar-export of the reduced official fixture into ``out`` with these options → its exit status."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # official config fields without effect on inference
        return cli_main([str(official_dir / "state_dict.safetensors"), "-o", str(out), "--template",
                         str(official_dir / "gghead_template.obj"), "--config", str(official_dir / "config.json"),
                         *options])


def _torch_gaussians(model: FlexAvatarModel, code_1rd: np.ndarray, expressions: np.ndarray) -> dict:
    g = model.decode(AvatarCode(torch.from_numpy(code_1rd).transpose(0, 1)), torch.from_numpy(expressions),
                     dataset_id=1)
    return {"means": g.means, "quats": g.quats, "scales": g.scales, "opacities": g.opacities, "sh0": g.sh0}


# ---- the full bundle -------------------------------------------------------------------------------------

def test_bundle_lists_every_target_and_progress_is_reported(full):
    result, messages, _ = full
    m = result.manifest
    names = {a.name for a in m.artifacts}
    assert names == ({f"{role}.{p}.{fmt}" for role in (ROLE_ENCODER, ROLE_DECODER, ROLE_DECODER_AVATAR)
                      for p in ("fp32", "fp16") for fmt in (FORMAT_ONNX, FORMAT_OPENVINO)}
                     | {f"{role}.{p}.{FORMAT_ONNX_ORT}" for role in (ROLE_DECODER, ROLE_DECODER_AVATAR)
                        for p in ("fp32", "fp16")})          # the fused files: decoders only
    assert {a.path for a in m.find(format=FORMAT_ONNX_ORT)} == {f"{role}.{p}.ort.onnx" for p in ("fp32", "fp16")
                                                                 for role in (ROLE_DECODER, ROLE_DECODER_AVATAR)}
    on_disk = {p.name for p in result.path.iterdir()}
    listed = {Path(f.path).name for f in m.files()} | {"manifest.json"}
    assert on_disk == listed                                   # nothing unlisted, nothing missing
    assert not list(result.path.parent.glob(".bundle.partial-*"))
    assert any(msg.startswith("[20/20]") for msg in messages)
    assert m.torch_model.path == "model.safetensors" and "PyTorch model" in result.summary   # target pytorch
    assert "decoder_avatar.fp16.onnx" in result.summary and "PSNR" in result.summary


def test_manifest_hashes_sizes_and_metadata_match_the_files(full):
    result, _, photo = full
    bundle = Bundle.open(result.path, verify="full")
    for rec in bundle.manifest.files():
        data = (result.path / rec.path).read_bytes()
        assert rec.size == len(data) and rec.sha256 == hashlib.sha256(data).hexdigest()
    assert bundle.manifest.avatar.photo_sha256 == hashlib.sha256(photo.read_bytes()).hexdigest()
    for artifact in bundle.manifest.artifacts:
        meta = bundle.metadata(artifact)                        # cross-checked against the manifest
        assert meta.role == artifact.role and meta.precision == artifact.precision
        assert meta.n_gaussians == 3405 and meta.quaternion_order == "wxyz"
    avatar = bundle.artifact(ROLE_DECODER_AVATAR)
    assert bundle.metadata(avatar).avatar_code_sha256 == bundle.manifest.avatar.code.sha256
    ir = bundle.artifact(ROLE_DECODER, FORMAT_OPENVINO, "fp16")
    assert read_openvino_metadata(bundle.path(ir)).precision == "fp16"


def test_template_and_conventions_recorded(full, official_dir):
    m = full[0].manifest
    template = Template.from_obj(official_dir / "gghead_template.obj", 8, 64)
    assert m.template.sha256 == template.sha256() and m.template.n_gaussians == template.n_gaussians == 3405
    c = m.conventions
    assert (c.axes, c.intrinsics, c.quaternion_order, c.color, c.dataset_id) == ("opencv", "normalised", "wxyz",
                                                                                  "sh0", 1)
    assert (c.n_head_tokens, c.d_code, c.image_size, c.expression_dim) == (64, 64, 128, 135)
    assert c.expression_layout["expression"] == (0, 100) and c.expression_layout["head_translation"] == (132, 135)
    assert m.opset == DEFAULT_OPSET == 23 and {"torch", "onnx", "onnxruntime", "openvino"} <= set(m.versions)


def test_onnx_files_pass_the_checker_and_carry_metadata(full):
    result = full[0]
    for artifact in result.manifest.find(format=FORMAT_ONNX):
        path = result.path / artifact.path
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        assert model.opset_import[0].version == DEFAULT_OPSET
        # opset 23: attention, RMS norm and GELU are single nodes (the fast fused kernels of the runtimes)
        ops = {n.op_type for n in model.graph.node}
        assert {"Attention", "Gelu", "LayerNormalization", "RMSNormalization"} <= ops
        assert not ops & {"Softmax", "Tanh", "Erf"}
        props = {p.key: p.value for p in model.metadata_props}
        assert read_onnx_metadata_props(path) == props         # the protobuf scanner reads what onnx reads
        assert read_onnx_metadata(path).role == artifact.role
        # the manifest's io specs are the graph's
        session = _session(path)
        nodes = session.get_inputs() + session.get_outputs()
        for spec, node in zip(artifact.inputs + artifact.outputs, nodes, strict=True):
            assert spec.name == node.name and list(spec.shape) == node.shape
            assert node.type == "tensor(float)" and spec.dtype == "float32"


def test_fused_decoders_are_the_portable_files_with_onnxruntime_kernels(full):
    """Target onnx-ort: each decoder of each precision again, its bias + residual + LayerNorm chains and bias GELUs
    as ONNX Runtime's contrib kernels (export.ort_fusions), the rest (weights, metadata, io) as the portable file."""
    result = full[0]
    count = lambda m, op: sum(n.op_type == op for n in m.graph.node)  # noqa: E731
    fused_artifacts = result.manifest.find(format=FORMAT_ONNX_ORT)
    assert len(fused_artifacts) == 4
    for artifact in fused_artifacts:
        path = result.path / artifact.path
        fused = onnx.load(str(path))
        portable = onnx.load(str(result.path / artifact.path.replace(".ort.onnx", ".onnx")))
        onnx.checker.check_model(fused, full_check=True)
        assert {o.domain: o.version for o in fused.opset_import}["com.microsoft"] == 1
        skips, gelus = count(fused, "SkipLayerNormalization"), count(fused, "FastGelu")
        assert skips == count(portable, "LayerNormalization") - count(fused, "LayerNormalization") >= 2
        assert gelus == count(portable, "Gelu") >= 1 and count(fused, "Gelu") == 0
        assert count(portable, "Add") - count(fused, "Add") == 2 * skips + gelus    # bias and residual Adds
        assert count(fused, "MatMul") == count(portable, "MatMul")
        assert f"{skips} skip layer norms, {gelus} bias fast gelus" in artifact.notes
        assert read_onnx_metadata_props(path) == read_onnx_metadata_props(path.with_name(
            artifact.path.replace(".ort.onnx", ".onnx")))
        assert [i.name for i in fused.graph.input] == [i.name for i in portable.graph.input]
        assert [o.name for o in fused.graph.output] == [o.name for o in portable.graph.output]
        assert artifact.parity.passed and artifact.fp32_ops == (() if artifact.precision == "fp32" else FP16_FP32_OPS)


def test_pytorch_target_carries_the_model_itself(full, fixture_model):
    """model.safetensors (target pytorch) is the exported model: weights, template and DINOv2, nothing else needed."""
    result = full[0]
    loaded = FlexAvatarModel.load(result.path / result.manifest.torch_model.path)
    assert loaded.template.sha256() == result.manifest.template.sha256 and loaded.dinov2 is not None
    assert loaded.config.to_dict() == result.manifest.model.config
    code = AvatarCode(torch.from_numpy(np.load(result.path / "avatar_code.npy")))
    expressions = (np.random.default_rng(4).standard_normal((2, 135)) * 0.5).astype(np.float32)
    want, got = fixture_model.decode(code, expressions, dataset_id=1), loaded.decode(code, expressions, dataset_id=1)
    assert all(torch.equal(getattr(got, f), getattr(want, f)) for f in GAUSSIAN_OUTPUTS)


def test_bundle_files_say_nothing_of_the_machine_that_made_them(full):
    """Tracing attaches stack traces with absolute source paths to every node; none may reach a bundle."""
    import flexavatar
    result = full[0]
    sources = Path(flexavatar.__file__).resolve().parents[1]       # the checkout (or site-packages) here
    needles = {str(sources).encode(), str(Path(torch.__file__).resolve().parent).encode()}
    files = sorted(p for p in result.path.iterdir() if p.is_file())
    assert {p.suffix for p in files} >= {".onnx", ".xml", ".bin", ".json", ".npz"}
    for path in files:
        data = path.read_bytes()
        assert not [n for n in needles if n in data], path.name
        if path.suffix == ".onnx":
            graph = onnx.load(str(path)).graph
            assert not [n.name for n in graph.node if n.metadata_props or n.doc_string], path.name
            assert not [v.name for v in graph.value_info if v.metadata_props], path.name


def test_tracing_again_gives_the_same_graph_bytes(full, fixture_model):
    """Reproducible bundles: the same weights trace (other inputs, another time) to the byte-identical graph."""
    from flexavatar.export.exporter import TRACE_EXPRESSIONS
    from flexavatar.export.graphs import DecoderGraph
    from flexavatar.export.onnx_tools import export_graph, strip_trace_metadata

    net = fixture_model.network
    generator = torch.Generator().manual_seed(11)
    code = torch.randn(1, net.cfg.n_head_tokens, net.cfg.d_hidden, generator=generator)
    expressions = torch.randn(TRACE_EXPRESSIONS, net.cfg.d_expression_codes, generator=generator)
    again = export_graph(DecoderGraph(net), (code, expressions), DecoderGraph.spec(net), DEFAULT_OPSET)
    strip_trace_metadata(again)
    written = onnx.load(str(full[0].path / "decoder.fp32.onnx"))
    assert again.graph.SerializeToString() == written.graph.SerializeToString()


def test_fp16_models_keep_float32_io_and_blocked_ops(full):
    result = full[0]
    for artifact in result.manifest.find(format=FORMAT_ONNX, precision="fp16"):
        model = onnx.load(str(result.path / artifact.path))
        sizes = {t.data_type: 0 for t in model.graph.initializer}
        for t in model.graph.initializer:
            sizes[t.data_type] += int(np.prod(t.dims))
        # weights are fp16; only constants feeding float32-kept ops (e.g. folded head queries) stay float32
        assert sizes[onnx.TensorProto.FLOAT16] > 0.9 * sum(sizes.values())
        assert set(artifact.fp32_ops) == set(FP16_FP32_OPS)
        inferred = onnx.shape_inference.infer_shapes(model)
        types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info)
                 + list(inferred.graph.output)}
        for node in model.graph.node:
            if node.op_type in FP16_FP32_OPS:
                assert types.get(node.output[0], onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT, node.name
            if node.op_type in ("LayerNormalization", "RMSNormalization", "MatMul", "Attention"):
                # fp16 tensors; the norms' statistics stay float32 (stash_type 1 = the ONNX default)
                assert types[node.output[0]] == onnx.TensorProto.FLOAT16, node.name
                assert all(a.i == onnx.TensorProto.FLOAT for a in node.attribute if a.name == "stash_type")


def test_decoders_are_lean(full, fixture_model):
    """No work on constants alone is left in the per-frame graphs (template, baked upsampler weights,
    dataset token are folded), and the avatar decoder folded its code's first-layer projections."""
    result = full[0]
    generic = onnx.load(str(result.path / "decoder.fp32.onnx"))
    special = onnx.load(str(result.path / "decoder_avatar.fp32.onnx"))
    assert constant_only_nodes(generic) == [] and constant_only_nodes(special) == []
    assert [o.name for o in generic.graph.output] == list(GAUSSIAN_OUTPUTS)
    count = lambda m, op: sum(n.op_type == op for n in m.graph.node)  # noqa: E731
    # layer 0's to_q / to_k / to_v of the code tokens (one merged MatMul, see graph_passes; and the code's
    # LayerNorm) became constants
    assert count(generic, "MatMul") - count(special, "MatMul") >= 1
    assert count(generic, "LayerNormalization") - count(special, "LayerNormalization") >= 1
    for model in (generic, special):
        # graph_passes.slim ran: no two MatMuls read one tensor with constant weights, every attention is
        # token-major (3-D, no Transpose in front), and no Expand copies a tensor after the first layer
        inits = {t.name for t in model.graph.initializer}
        sources = [n.input[0] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
        assert len(sources) == len(set(sources))
        producers = {o: n.op_type for n in model.graph.node for o in n.output}
        attentions = [n for n in model.graph.node if n.op_type == "Attention"]
        assert len(attentions) == fixture_model.config.n_layers_expression
        # the first layer's shared q / k / v projection of the code tokens (one Expand of the merged projection:
        # graph_passes.joint_attention_streams), the context's dataset token, the UV grid: the same count whatever
        # the number of layers
        assert count(model, "Expand") == 3
        assert all({a.name for a in n.attribute} >= {"q_num_heads", "kv_num_heads"} for n in attentions)
        assert not [i for n in attentions for i in n.input if producers.get(i) == "Transpose"]
    encoder = onnx.load(str(result.path / "encoder.fp32.onnx"))
    assert count(encoder, "Resize") == 0                         # antialiased resize = two MatMuls


def test_decoders_match_pytorch_on_new_inputs(full, fixture_model):
    """ORT and OpenVINO (f32) vs PyTorch for E = 1 and E = 5 (graphs were traced with E = 2)."""
    result = full[0]
    bundle = Bundle.open(result.path, verify="none")
    code = bundle.avatar_code()
    gen = np.random.default_rng(7)
    for e in (1, 5):
        expressions = (gen.standard_normal((e, 135)) * 0.5).astype(np.float32)
        want = _torch_gaussians(fixture_model, code, expressions)
        for artifact in bundle.artifacts(precision="fp32"):
            if artifact.role not in (ROLE_DECODER, ROLE_DECODER_AVATAR):
                continue
            feeds = {"expressions": expressions} | ({"code": code} if artifact.role == ROLE_DECODER else {})
            got = _run(bundle, artifact, feeds)
            for name, value in want.items():
                assert got[name].shape == tuple(value.shape)
                np.testing.assert_allclose(got[name], value.numpy(), atol=1e-4, rtol=0,
                                           err_msg=f"{artifact.name} {name} E={e}")


def test_decoder_reproduces_official_outputs(full, official_dir):
    """The exported decoders fed the fixture's avatar_code and expression codes give outputs.npz
    (avatar 1 uses dataset id 1, the decoder's fixed token; rows n = 2, 3)."""
    bundle = Bundle.open(full[0].path, verify="none")
    ref = np.load(official_dir / "outputs.npz")
    inputs = np.load(official_dir / "inputs.npz")
    assert inputs["dataset_ids"][1, 0] == 1
    code = np.ascontiguousarray(ref["avatar_code"][:, 1][None])            # [1, R², D]
    for fmt in (FORMAT_ONNX, FORMAT_OPENVINO):
        got = _run(bundle, bundle.artifact(ROLE_DECODER, fmt), {"code": code,
                                                                "expressions": inputs["expression_codes"][1]})
        for name, atol in ATOL_FINAL.items():
            want = ref[FIXTURE_NAMES[name]][2:4].reshape(got[name].shape)
            np.testing.assert_allclose(got[name], want, atol=atol, rtol=0, err_msg=f"{fmt} {name}")


def test_specialised_decoder_equals_generic_fed_the_same_code(full):
    bundle = Bundle.open(full[0].path, verify="none")
    expressions = (np.random.default_rng(11).standard_normal((4, 135)) * 0.5).astype(np.float32)
    for fmt in (FORMAT_ONNX, FORMAT_OPENVINO):
        generic = _run(bundle, bundle.artifact(ROLE_DECODER, fmt), {"code": bundle.avatar_code(),
                                                                    "expressions": expressions})
        special = _run(bundle, bundle.artifact(ROLE_DECODER_AVATAR, fmt), {"expressions": expressions})
        for name in GAUSSIAN_OUTPUTS:
            np.testing.assert_allclose(special[name], generic[name], atol=2e-5, rtol=0, err_msg=f"{fmt} {name}")


def test_encoder_with_dinov2_matches_pytorch(full, fixture_model):
    """B = 1 (traced with B = 2), another camera; DinoV2.forward (F.interpolate antialias) is the reference."""
    bundle = Bundle.open(full[0].path, verify="none")
    gen = np.random.default_rng(5)
    image = np.clip(gen.uniform(0, 1, (1, 3, 16, 16)), 0, 1).astype(np.float32)
    image = torch.nn.functional.interpolate(torch.from_numpy(image), size=(128, 128), mode="bilinear").numpy()
    c2w = np.eye(4, dtype=np.float32)[None]
    c2w[0, :3, :3] = [[0, 0, -1], [0, 1, 0], [1, 0, 0]]                  # looking along -x from +x
    c2w[0, :3, 3] = [1.0, 0.05, 0.0]
    k = np.array([[[2.5, 0, 0.52], [0, 2.6, 0.47], [0, 0, 1]]], np.float32)
    want = fixture_model.encode(torch.from_numpy(image), torch.from_numpy(c2w), torch.from_numpy(k))
    want = want.tokens.transpose(0, 1).numpy()
    for fmt in (FORMAT_ONNX, FORMAT_OPENVINO):
        got = _run(bundle, bundle.artifact(ROLE_ENCODER, fmt), {"image": image, "cam2world": c2w, "intrinsics": k})
        np.testing.assert_allclose(got["code"], want, atol=1e-4, rtol=0, err_msg=fmt)
    # the avatar code in the bundle is the photo's code under the default camera
    assert full[0].manifest.avatar.intrinsics[0][0] == pytest.approx(1500 / 512)


def test_fp16_error_and_psnr_are_reported_and_reproducible(full, fixture_model):
    result = full[0]
    bundle = Bundle.open(result.path, verify="none")
    m = bundle.manifest
    code = bundle.avatar_code()
    expressions = (np.random.default_rng(2).standard_normal((1, 135)) * 0.5).astype(np.float32)
    ref = {k: v.numpy() for k, v in _torch_gaussians(fixture_model, code, expressions).items()}
    c2w, k = np.array(m.avatar.cam2world, np.float32), np.array(m.avatar.intrinsics, np.float32)
    ref_rgb = render_frontal(ref, c2w, k)
    assert (ref_rgb < 0.98).mean() > 0.02                       # the head covers part of the image
    for artifact in bundle.artifacts(precision="fp16"):
        # the fp16 twin measured the headroom of the ONNX files (the IR computes in f32 on the CPU)
        peak = artifact.parity.fp16_peak_abs
        onnx_file = artifact.format in (FORMAT_ONNX, FORMAT_ONNX_ORT)
        assert (0 < peak < 65504 / 8) if onnx_file else peak is None, artifact.name
    for artifact in bundle.artifacts(role=ROLE_DECODER_AVATAR, precision="fp16"):
        report = artifact.parity
        assert report.psnr_db >= report.psnr_target_db == 40.0 and report.passed
        assert all(o.tolerance is None and 0 < o.max_abs_error < 0.5 for o in report.outputs)
        got = _run(bundle, artifact, {"expressions": expressions})
        assert psnr(render_frontal(got, c2w, k), ref_rgb) >= 40.0
    for artifact in bundle.artifacts(precision="fp32"):
        assert all(o.tolerance == 1e-4 and o.max_abs_error <= 1e-4 for o in artifact.parity.outputs)
        assert artifact.parity.fp16_peak_abs is None


# ---- the features-input variant (CLI, fp32 ONNX only, --force) ---------------------------------------------

def test_features_encoder_reproduces_the_official_avatar_code(features_bundle, official_dir):
    bundle = features_bundle
    assert {a.name for a in bundle.manifest.artifacts} == {"encoder_features.fp32.onnx", "decoder.fp32.onnx"}
    assert {p.name for p in bundle.root.iterdir()} == {"encoder_features.fp32.onnx", "decoder.fp32.onnx",
                                                        "check.npz", "manifest.json"}   # stale.txt replaced
    inp = np.load(official_dir / "inputs.npz")
    ref = np.load(official_dir / "outputs.npz")
    session = _session(bundle.path(bundle.artifact(ROLE_ENCODER_FEATURES)))
    code, = session.run(None, {"image": inp["images"][:, 0], "cam2world": inp["cam2world"][:, 0],
                               "intrinsics": inp["intrinsics"][:, 0], "features": inp["features"][:, 0]})
    np.testing.assert_allclose(code, ref["avatar_code"].transpose(1, 0, 2), atol=1e-4, rtol=0)


def test_features_bundle_names_its_template_file_and_records_missing_openvino(features_bundle, full):
    assert features_bundle.manifest.template.source == "my_head_v2.obj"
    assert features_bundle.manifest.versions["openvino"] == "not installed"
    assert full[0].manifest.template.source == "gghead_template.obj"
    assert full[0].manifest.versions["openvino"] not in ("", "not installed")


# ---- atomicity: a failure after the first file is written leaves nothing ---------------------------------

@pytest.mark.parametrize("failure", [RuntimeError("injected"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_failure_after_first_file_leaves_no_partial_bundle(tmp_path, monkeypatch, official_dir, features_bundle,
                                                           failure):
    import flexavatar.export.exporter as exporter
    import flexavatar.export.parity as parity

    # reuse the already-exported graphs (no torch trace) so that this test is fast
    cached = {spec_role: onnx.load(str(features_bundle.path(features_bundle.artifact(spec_role))))
              for spec_role in (ROLE_ENCODER_FEATURES, ROLE_DECODER)}
    monkeypatch.setattr(exporter, "export_graph", lambda module, args, spec, opset: cached[spec.role])
    seen: list[list[str]] = []
    real = parity.RUNNERS[(FORMAT_ONNX, "fp32")]

    def failing_run(path, feeds):
        seen.append(sorted(p.name for p in Path(path).parent.iterdir()))
        raise failure

    monkeypatch.setitem(parity.RUNNERS, (FORMAT_ONNX, "fp32"), real.__class__(failing_run, real.describe))
    out = tmp_path / "bundle"
    expected = ExportStepError if isinstance(failure, Exception) else KeyboardInterrupt
    with pytest.raises(expected) as info:
        export_bundle(official_dir / "state_dict.safetensors", out, template=official_dir / "gghead_template.obj",
                      config=fixture_config(official_dir), progress=None)
    assert seen == [["check.npz", "encoder_features.fp32.onnx"]]   # the check set and the first model were written
    assert list(tmp_path.iterdir()) == []                       # ... and is gone, with its staging folder
    if expected is ExportStepError:
        assert info.value.step == "encoder_features.fp32.onnx" and "injected" in str(info.value)


@pytest.mark.parametrize("strict", [False, True], ids=["flag", "strict"])
def test_fp16_below_psnr_target_is_flagged_or_fatal(tmp_path, monkeypatch, official_dir, features_bundle, strict):
    """fp16 quality below the target: kept + flagged + warned by default, ParityError with strict_fp16."""
    import flexavatar.export.exporter as exporter
    from flexavatar.export import ParityError

    cached = {role: onnx.load(str(features_bundle.path(features_bundle.artifact(role))))
              for role in (ROLE_ENCODER_FEATURES, ROLE_DECODER)}
    monkeypatch.setattr(exporter, "export_graph", lambda module, args, spec, opset: cached[spec.role])
    monkeypatch.setitem(exporter.PSNR_TARGET_DB, "fp16", 500.0)        # unreachable
    messages: list[str] = []
    run = lambda: export_bundle(official_dir / "state_dict.safetensors", tmp_path / "b",  # noqa: E731
                                template=official_dir / "gghead_template.obj", config=fixture_config(official_dir),
                                precisions="fp16", targets="onnx", strict_fp16=strict, progress=messages.append)
    if strict:
        with pytest.raises(ParityError, match="PSNR .* < target 500 dB"):
            run()
        assert list(tmp_path.iterdir()) == []
        return
    result = run()
    m = Bundle.open(result.path).manifest
    assert {a.name for a in m.artifacts} == {"encoder_features.fp16.onnx", "decoder.fp16.onnx"}
    assert all(not a.parity.passed and a.parity.psnr_target_db == 500.0 for a in m.artifacts)
    assert sum("WARNING" in msg for msg in messages) == 2 and "FLAGGED" in result.summary
    assert "check.npz" in result.summary and f"flexavatar-verify {result.path}" in result.summary
    assert sorted(p.name for p in result.path.iterdir()) == ["check.npz", "decoder.fp16.onnx",
                                                            "encoder_features.fp16.onnx",
                                                            "manifest.json"]        # fp32 sources removed


def test_identical_fp16_render_is_recorded_as_the_psnr_cap(tmp_path, monkeypatch, official_dir, features_bundle):
    """An fp16 render equal to the fp32 one has PSNR inf, which strict JSON cannot hold (the C++ runtime reads the
    manifest): the export records the cap and passes."""
    import flexavatar.export.exporter as exporter
    from flexavatar.export.parity import MAX_RECORDED_PSNR_DB

    cached = {role: onnx.load(str(features_bundle.path(features_bundle.artifact(role))))
              for role in (ROLE_ENCODER_FEATURES, ROLE_DECODER)}
    monkeypatch.setattr(exporter, "export_graph", lambda module, args, spec, opset: cached[spec.role])
    monkeypatch.setattr(exporter, "psnr", lambda a, b: math.inf)                     # identical renders
    result = export_bundle(official_dir / "state_dict.safetensors", tmp_path / "b",
                           template=official_dir / "gghead_template.obj", config=fixture_config(official_dir),
                           precisions="fp16", targets="onnx", progress=None)
    text = (result.path / "manifest.json").read_text()
    assert "Infinity" not in text
    m = Bundle.open(result.path).manifest
    assert all(a.parity.psnr_db == MAX_RECORDED_PSNR_DB and a.parity.passed for a in m.artifacts)


def test_fp16_overflow_that_the_cpu_provider_hides_fails_the_export(tmp_path, monkeypatch, official_dir,
                                                                    features_bundle):
    """An activation beyond fp16's range (here: a LayerNorm output scaled by 3e4 and back, an identity in
    float32) is caught by the fp16 storage twin although ONNX Runtime's CPU provider runs the file finely."""
    import flexavatar.export.exporter as exporter
    from flexavatar.export import ParityError
    from flexavatar.export.mixed_precision import emulate_fp16_storage
    from flexavatar.export.onnx_tools import to_fp16

    decoder = onnx.load(str(features_bundle.path(features_bundle.artifact(ROLE_DECODER))))
    norm = next(n for n in decoder.graph.node if n.op_type == "LayerNormalization")
    normed = norm.output[0]
    for node in decoder.graph.node:
        node.input[:] = [f"{normed}__restored" if i == normed else i for i in node.input]
    decoder.graph.initializer.extend([onnx.numpy_helper.from_array(np.array(3.0e4, np.float32), "up"),
                                      onnx.numpy_helper.from_array(np.array(1 / 3.0e4, np.float32), "down")])
    at = list(decoder.graph.node).index(norm) + 1
    for k, node in enumerate([onnx.helper.make_node("Mul", [normed, "up"], [f"{normed}__up"]),
                              onnx.helper.make_node("Mul", [f"{normed}__up", "down"], [f"{normed}__restored"])]):
        decoder.graph.node.insert(at + k, node)
    cached = {ROLE_ENCODER_FEATURES: onnx.load(str(features_bundle.path(features_bundle.artifact(
        ROLE_ENCODER_FEATURES)))), ROLE_DECODER: decoder}
    monkeypatch.setattr(exporter, "export_graph", lambda module, args, spec, opset: cached[spec.role])

    # the premise: the CPU provider keeps the scaled chain in float32, the twin rounds it to inf
    half = to_fp16(decoder)
    code_shape = [d.dim_value for d in half.graph.input[0].type.tensor_type.shape.dim]     # [1, R², D]
    feeds = {"code": np.random.default_rng(0).standard_normal(code_shape).astype(np.float32),
             "expressions": np.zeros((1, 135), np.float32)}
    run = lambda m: ort.InferenceSession(m.SerializeToString(),  # noqa: E731
                                         providers=["CPUExecutionProvider"]).run(None, feeds)
    assert all(np.isfinite(o).all() for o in run(half))
    assert not all(np.isfinite(o).all() for o in run(emulate_fp16_storage(half)))

    with pytest.raises(ParityError, match=r"decoder\.fp16\.onnx gives (non-finite values|an fp16 tensor "
                                          r"reaching inf) .*fp16 range"):
        export_bundle(official_dir / "state_dict.safetensors", tmp_path / "b",
                      template=official_dir / "gghead_template.obj", config=fixture_config(official_dir),
                      precisions="fp16", targets="onnx", progress=None)
    assert list(tmp_path.iterdir()) == []


def test_gpu_conv_form_rewrites_only_the_fp16_onnx_decoder_and_is_checked(tmp_path, monkeypatch, official_dir,
                                                                            features_bundle):
    """--gpu-conv-form subpixel: the fp16 ONNX decoder loses its transposed convolutions and passes the same parity
    check as any file; the fp32 decoder and the fp16 IR (CPUs, Intel GPUs) keep the exported form."""
    import flexavatar.export.exporter as exporter

    cached = {role: onnx.load(str(features_bundle.path(features_bundle.artifact(role))))
              for role in (ROLE_ENCODER_FEATURES, ROLE_DECODER)}
    monkeypatch.setattr(exporter, "export_graph", lambda module, args, spec, opset: cached[spec.role])
    out = tmp_path / "b"
    assert _export_fixture_with_cli(official_dir, out, "--precision", "fp32,fp16", "--targets", "onnx,openvino",
                                    "--gpu-conv-form", "subpixel") == 0
    bundle = Bundle.open(out)
    ops = {p: {n.op_type for n in onnx.load(str(out / f"decoder.{p}.onnx")).graph.node} for p in ("fp32", "fp16")}
    assert "ConvTranspose" in ops["fp32"] and "ConvTranspose" not in ops["fp16"] and "DepthToSpace" in ops["fp16"]
    fp16 = bundle.artifact(ROLE_DECODER, FORMAT_ONNX, "fp16")
    assert fp16.parity.passed and "GPU form 'subpixel'" in fp16.notes
    assert "GPU form" not in bundle.artifact(ROLE_DECODER, FORMAT_ONNX, "fp32").notes
    ir = (out / "decoder.fp16.xml").read_text()
    assert 'type="ConvolutionBackpropData"' in ir                          # the exported form, not the GPU one
    assert bundle.artifact(ROLE_DECODER, FORMAT_OPENVINO, "fp16").parity.passed
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []   # no stray conversion file
    # the two decoders compute the same Gaussians (fp16 rounding apart)
    rng = np.random.default_rng(5)
    feeds = {"code": (0.5 * rng.standard_normal((1, *fp16.input("code").shape[1:]))).astype(np.float32),
             "expressions": (0.3 * rng.standard_normal((2, 135))).astype(np.float32)}
    want, got = _run(bundle, bundle.artifact(ROLE_DECODER, FORMAT_ONNX, "fp32"), feeds), _run(bundle, fp16, feeds)
    for name in GAUSSIAN_OUTPUTS:
        assert np.abs(got[name] - want[name]).max() <= 2e-2 * max(1.0, np.abs(want[name]).max()), name


def test_fused_decoders_alone_skip_the_encoder_and_keep_the_gpu_conv_form(tmp_path, official_dir, capsys,
                                                                          monkeypatch):
    """--targets onnx-ort alone: the fused fp16 decoder, derived from the fp16 file in its GPU convolution form
    (written as a source, then removed); the encoder, which no target asks for, is not even traced; a warning says
    the bundle cannot encode photos."""
    import flexavatar.export.exporter as exporter

    traced = []
    real = exporter.export_graph
    monkeypatch.setattr(exporter, "export_graph", lambda module, args, spec, opset: traced.append(spec.role)
                        or real(module, args, spec, opset))
    out = tmp_path / "b"
    assert _export_fixture_with_cli(official_dir, out, "--precision", "fp16", "--targets", "onnx-ort",
                                    "--gpu-conv-form", "subpixel") == 0
    assert traced == [ROLE_DECODER]
    assert "WARNING: targets ['onnx-ort'] hold decoders only" in capsys.readouterr().out
    bundle = Bundle.open(out)
    assert [a.name for a in bundle.manifest.artifacts] == ["decoder.fp16.onnx-ort"]
    assert sorted(p.name for p in out.iterdir()) == ["check.npz", "decoder.fp16.ort.onnx", "manifest.json"]
    fused = bundle.artifact(ROLE_DECODER, FORMAT_ONNX_ORT, "fp16")
    assert fused.parity.passed and "GPU form 'subpixel'" in fused.notes and "ONNX Runtime only" in fused.notes
    ops = {n.op_type for n in onnx.load(str(out / "decoder.fp16.ort.onnx")).graph.node}
    assert {"DepthToSpace", "SkipLayerNormalization", "FastGelu"} <= ops and "ConvTranspose" not in ops


def test_unknown_gpu_conv_form_is_refused_before_anything_is_written(tmp_path, official_dir):
    with pytest.raises(ExportArgumentError, match="gpu_conv_form must be one of"):
        export_bundle(official_dir / "state_dict.safetensors", tmp_path / "b", gpu_conv_form="winograd",
                      template=official_dir / "gghead_template.obj", progress=None)
    assert not (tmp_path / "b").exists()
