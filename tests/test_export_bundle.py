"""flexavatar.bundle: manifest schema validation, file verification, metadata readers (no export needed)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from flexavatar.bundle import (MANIFEST_NAME, SCHEMA, SCHEMA_VERSION, ArtifactNotFoundError, AvatarInfo, Bundle,
                               BundleError, BundleFileMissingError, BundleHashMismatchError, BundleMetadataError,
                               Conventions, Manifest, ManifestError, ModelArtifact, ModelInfo, ModelMetadata,
                               OutputParity, ParityReport, TemplateInfo, TensorSpec, file_record,
                               read_onnx_metadata, read_onnx_metadata_props)

G = 7


def _metadata(role: str = "decoder", precision: str = "fp32") -> ModelMetadata:
    return ModelMetadata(schema_version=SCHEMA_VERSION, role=role, precision=precision, n_gaussians=G,
                         template_sha256="ab" * 32, image_size=128, n_head_tokens=4, d_code=8, expression_dim=135,
                         dataset_id=1, axes="opencv", intrinsics="normalised", quaternion_order="wxyz", color="sh0",
                         code_layout="[B, R2, D]", flexavatar_version="0.1.0")


def _tiny_onnx(path: Path, props: dict[str, str], n_weights: int = 16) -> None:
    """y = x * w with a weight initializer of n_weights floats (big ones test the scanner's seeking)."""
    w = numpy_helper.from_array(np.arange(n_weights, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["E", n_weights])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["E", n_weights])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))


def _make_bundle(root: Path) -> Bundle:
    root.mkdir()
    _tiny_onnx(root / "decoder.fp32.onnx", _metadata().to_props())
    np.save(root / "avatar_code.npy", np.arange(4 * 8, dtype=np.float32).reshape(4, 1, 8))
    parity = ParityReport("pytorch-fp32", "onnxruntime", "seeded", (OutputParity("y", 1e-6, 1e-4, True),), True)
    artifact = ModelArtifact("decoder.fp32.onnx", "decoder", "onnx", "fp32", (file_record(root, "decoder.fp32.onnx"),),
                             (TensorSpec("x", ("E", 16), "float32"),), (TensorSpec("y", ("E", 16), "float32"),), parity)
    manifest = Manifest(
        schema=SCHEMA, schema_version=SCHEMA_VERSION, created="2025-01-01T00:00:00+00:00", versions={"onnx": "1"},
        opset=18, model=ModelInfo({"d_hidden": 8}, "ckpt.pt", "cd" * 32, 123, None),
        template=TemplateInfo("ab" * 32, G, 2, 8, "gghead_template.obj"),
        conventions=Conventions(n_gaussians=G, n_head_tokens=4, d_code=8, expression_layout={"expression": (0, 100)}),
        artifacts=(artifact,),
        avatar=AvatarInfo(file_record(root, "avatar_code.npy"), "me.png", "ef" * 32,
                          tuple(tuple(float(i == j) for j in range(4)) for i in range(4)),
                          ((2.9, 0.0, 0.5), (0.0, 2.9, 0.5), (0.0, 0.0, 1.0))))
    manifest.write(root)
    return Bundle.open(root)


@pytest.fixture()
def bundle(tmp_path) -> Bundle:
    return _make_bundle(tmp_path / "bundle")


def test_roundtrip_lookup_and_avatar_code(bundle):
    m = Manifest.read(bundle.root)
    assert m == bundle.manifest                                   # JSON round trip is lossless
    a = bundle.artifact("decoder")
    assert a.input("x").shape == ("E", 16) and a.input("x").is_dynamic and a.parity.output("y").passed
    assert bundle.metadata(a).role == "decoder"
    np.testing.assert_array_equal(bundle.avatar_code(), np.arange(32, dtype=np.float32).reshape(1, 4, 8))
    with pytest.raises(ArtifactNotFoundError, match="decoder.fp32.onnx"):
        bundle.artifact("decoder", precision="fp16")


@pytest.mark.parametrize("damage, error, match", [
    (lambda p: p.unlink(), BundleFileMissingError, "missing: decoder.fp32.onnx"),
    (lambda p: p.write_bytes(p.read_bytes()[:-10]), BundleHashMismatchError, "bytes, the manifest says"),
    (lambda p: p.write_bytes(b"X" + p.read_bytes()[1:]), BundleHashMismatchError, "sha256"),
])
def test_damaged_files_are_detected(bundle, damage, error, match):
    damage(bundle.root / "decoder.fp32.onnx")
    with pytest.raises(error, match=match):
        Bundle.open(bundle.root)


def test_size_only_verification_skips_hashes(bundle):
    path = bundle.root / "decoder.fp32.onnx"
    path.write_bytes(b"X" + path.read_bytes()[1:])                  # same size, other content
    Bundle.open(bundle.root, verify="size")
    with pytest.raises(BundleHashMismatchError):
        Bundle.open(bundle.root, verify="full")


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(schema="something-else"), "not a flexavatar bundle"),
    (lambda d: d.update(schema_version=99), "schema_version is 99"),
    (lambda d: d.pop("template"), r"manifest.template is missing"),
    (lambda d: d["artifacts"][0].update(role="renderer"), r"artifacts\[0\].role is 'renderer'"),
    (lambda d: d["artifacts"][0]["files"][0].update(path="../evil.onnx"), "without '..'"),
    (lambda d: d["artifacts"][0]["files"][0].update(sha256="xyz"), "64 lowercase hex"),
    (lambda d: d["artifacts"][0]["inputs"][0].update(dtype="float64"), r"inputs\[0\].dtype"),
    (lambda d: d["artifacts"][0]["inputs"][0].update(shape=[-1, 16]), "non-negative ints or dim names"),
    (lambda d: d["conventions"].update(n_gaussians="7"), "conventions.n_gaussians must be an integer"),
    (lambda d: d["artifacts"].append(dict(d["artifacts"][0])), "duplicate names"),
    (lambda d: d["avatar"].update(cam2world=[[1, 0], [0, 1]]), "4x4"),
])
def test_malformed_manifest_is_rejected_with_the_field_named(bundle, edit, match):
    path = bundle.root / MANIFEST_NAME
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match=match):
        Bundle.open(bundle.root)


def test_missing_or_invalid_manifest(tmp_path):
    with pytest.raises(BundleFileMissingError):
        Bundle.open(tmp_path / "nothing")
    with pytest.raises(ManifestError, match="not a flexavatar bundle"):
        Bundle.open(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        Bundle.open(tmp_path)
    assert issubclass(ManifestError, BundleError) and issubclass(BundleHashMismatchError, BundleError)


def test_metadata_scanner_agrees_with_onnx_on_a_large_model(tmp_path):
    path = tmp_path / "big.onnx"
    props = _metadata("encoder", "fp16").to_props() | {"other.key": "ünïcode ✓"}
    _tiny_onnx(path, props, n_weights=3_000_000)                    # 12 MB of weights before the metadata
    assert read_onnx_metadata_props(path) == {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    meta = read_onnx_metadata(path)
    assert meta == _metadata("encoder", "fp16")
    path.write_bytes(path.read_bytes()[:1000])                       # truncated inside the graph
    with pytest.raises(BundleMetadataError, match="truncated"):
        read_onnx_metadata(path)


def test_metadata_errors(tmp_path, bundle):
    path = tmp_path / "plain.onnx"
    _tiny_onnx(path, {})
    with pytest.raises(BundleMetadataError, match="flexavatar.schema_version' is missing"):
        read_onnx_metadata(path)
    _tiny_onnx(path, _metadata().to_props() | {"flexavatar.n_gaussians": "many"})
    with pytest.raises(BundleMetadataError, match="not an integer"):
        read_onnx_metadata(path)
    # a file whose metadata disagrees with the manifest (another template)
    _tiny_onnx(bundle.root / "decoder.fp32.onnx", {**_metadata().to_props(), "flexavatar.template_sha256": "0" * 64})
    with pytest.raises(BundleMetadataError, match="template_sha256"):
        Bundle.open(bundle.root, verify="none").metadata(bundle.artifact("decoder"))


def test_bundle_module_imports_neither_torch_nor_onnx():
    code = ("import sys, flexavatar.bundle; "
            "bad = [m for m in ('torch', 'onnx', 'onnxruntime', 'openvino', 'numpy') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
