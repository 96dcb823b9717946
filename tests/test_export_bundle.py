"""flexavatar.bundle: manifest schema validation, file verification, metadata readers (no export needed)."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from flexavatar.bundle import (GAUSSIAN_OUTPUTS, MANIFEST_NAME, SCHEMA, SCHEMA_VERSION, ArtifactNotFoundError,
                               AvatarInfo, Bundle, BundleError, BundleFileError, BundleFileMissingError,
                               BundleHashMismatchError, BundleMetadataError, Conventions, Manifest, ManifestError,
                               ModelArtifact, ModelInfo, ModelMetadata, OutputParity, ParityReport, TemplateInfo,
                               TensorNotFoundError, TensorSpec, file_record, read_onnx_metadata,
                               read_onnx_metadata_props, read_onnx_signature)

G = 7
DECODER_INPUTS = (TensorSpec("code", (1, 4, 8), "float32"), TensorSpec("expressions", ("E", 135), "float32"))
DECODER_OUTPUTS = tuple(TensorSpec(name, ("E", G, *trail), "float32") for name, trail in GAUSSIAN_OUTPUTS.items())


def _metadata(role: str = "decoder", precision: str = "fp32") -> ModelMetadata:
    return ModelMetadata(schema_version=SCHEMA_VERSION, role=role, precision=precision, n_gaussians=G,
                         template_sha256="ab" * 32, image_size=128, n_head_tokens=4, d_code=8, expression_dim=135,
                         dataset_id=1, axes="opencv", intrinsics="normalised", quaternion_order="wxyz", color="sh0",
                         code_layout=Conventions.code_layout, flexavatar_version="0.1.0")


def _tiny_onnx(path: Path, props: dict[str, str], n_weights: int = 16, inputs=DECODER_INPUTS,
               outputs=DECODER_OUTPUTS) -> None:
    """A graph declaring the decoder's inputs and outputs (not meant to be run: each output = expressions * w),
    with a weight initializer of n_weights floats (big ones test the scanner's seeking)."""
    w = numpy_helper.from_array(np.arange(n_weights, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("Mul", ["expressions", "w"], [o.name]) for o in outputs], "g",
                              [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, t.shape) for t in inputs],
                              [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, t.shape) for t in outputs],
                              [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))


def _make_bundle(root: Path) -> Bundle:
    root.mkdir()
    _tiny_onnx(root / "decoder.fp32.onnx", _metadata().to_props())
    np.save(root / "avatar_code.npy", np.arange(4 * 8, dtype=np.float32).reshape(4, 1, 8))
    parity = ParityReport("pytorch-fp32", "onnxruntime", "seeded", (OutputParity("means", 1e-6, 1e-4, True),), True)
    artifact = ModelArtifact("decoder.fp32.onnx", "decoder", "onnx", "fp32", (file_record(root, "decoder.fp32.onnx"),),
                             DECODER_INPUTS, DECODER_OUTPUTS, parity)
    manifest = Manifest(
        schema=SCHEMA, schema_version=SCHEMA_VERSION, created="2025-01-01T00:00:00+00:00", versions={"onnx": "1"},
        opset=18, model=ModelInfo({"d_hidden": 8}, "ckpt.pt", "cd" * 32, 123, None),
        template=TemplateInfo("ab" * 32, G, 2, 8, "gghead_template.obj"),
        conventions=Conventions(image_size=128, n_gaussians=G, n_head_tokens=4, d_code=8,
                                expression_layout={"expression": (0, 100)}),
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
    assert a.input("expressions").shape == ("E", 135) and a.input("expressions").is_dynamic
    assert a.parity.output("means").passed
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
    (lambda d: d["artifacts"][0].update(role=3), r"artifacts\[0\].role must be a string, got 3"),
    (lambda d: d["artifacts"][0]["files"][0].update(path="../evil.onnx"), "without '..'"),
    (lambda d: d["artifacts"][0]["files"][0].update(sha256="xyz"), "64 lowercase hex"),
    (lambda d: d["artifacts"][0]["inputs"][0].update(dtype="float64"), r"inputs\[0\].dtype"),
    (lambda d: d["artifacts"][0]["inputs"][0].update(shape=[-1, 4, 8]), "non-negative ints or dim names"),
    (lambda d: d["conventions"].update(n_gaussians="7"), "conventions.n_gaussians must be an integer"),
    (lambda d: d["artifacts"].append(dict(d["artifacts"][0])), "duplicate names"),
    (lambda d: d["avatar"].update(cam2world=[[1, 0], [0, 1]]), "4x4"),
    # expression_layout: exactly [start, stop], two ints with 0 <= start <= stop <= expression_dim
    *[(lambda d, v=v: d["conventions"]["expression_layout"].update(expression=v),
       r"conventions.expression_layout.expression must be \[start, stop\]")
      for v in ({}, [float("inf"), 3], "12", [1.5, 3], [1, 2, 3], [5, 3], [-1, 3], [0, 136], [True, 3])],
    (lambda d: d["conventions"].update(image_size=-5), r"conventions.image_size must be ≥ 0"),
    # numbers: finite, and within a float's range (NaN / Infinity literals are not JSON)
    (lambda d: d.update(export_seconds=10 ** 400), "export_seconds must be a finite number"),
    (lambda d: d.update(export_seconds=float("nan")), "export_seconds must be a finite number, got nan"),
    (lambda d: d["artifacts"][0]["parity"]["outputs"][0].update(max_abs_error=float("inf")),
     r"parity.outputs\[0\].max_abs_error must be a finite number"),
    (lambda d: d["artifacts"][0]["parity"].update(psnr_db=10 ** 400), "psnr_db must be a finite number"),
    (lambda d: d["avatar"]["cam2world"][1].__setitem__(2, float("nan")), r"cam2world\[1\]\[2\] must be a finite"),
    (lambda d: d["avatar"]["intrinsics"][0].__setitem__(0, 10 ** 400), r"intrinsics\[0\]\[0\] must be a finite"),
    (lambda d: d["model"]["config"].update(scale=float("-inf")), r"model.config.scale must be a finite number"),
    # each role's tensors are the ones the runtimes feed and read
    (lambda d: d["artifacts"][0]["inputs"][1].update(name="expr"), r"inputs must be named .* for role 'decoder'"),
    (lambda d: d["artifacts"][0]["inputs"].pop(0), r"inputs must be named .* for role 'decoder'"),
    (lambda d: d["artifacts"][0]["inputs"][1].update(shape=[135]), r"expressions must have 2 dims for role 'decoder'"),
    (lambda d: d["artifacts"][0]["outputs"].pop(), r"outputs must be named .* for role 'decoder'"),
    (lambda d: d["artifacts"][0]["outputs"][0].update(name="quats"), r"outputs must be named .* for role 'decoder'"),
    # duplicates: one model per role / format / precision, each file once (paths compared normalised)
    (lambda d: d["artifacts"].append(_renamed(d["artifacts"][0], "other.fp32.onnx", "other.fp32.onnx")),
     "lists 2 decoder models in format 'onnx' at precision 'fp32'"),
    (lambda d: d["artifacts"].append({**_renamed(d["artifacts"][0], "x.fp16", "./decoder.fp32.onnx"),
                                      "precision": "fp16"}), r"the same file twice: \['decoder.fp32.onnx'\]"),
    (lambda d: d.update(torch_model=dict(d["artifacts"][0]["files"][0])), r"the same file twice.*torch_model"),
    (lambda d: d.update(torch_model={"path": "model.safetensors"}), r"torch_model.sha256 is missing"),
    (lambda d: d["avatar"]["code"].update(path="sub/../decoder.fp32.onnx"), "without '..'"),
    (lambda d: d["avatar"]["code"].update(path="decoder.fp32.onnx//"), r"the same file twice"),
    *[(lambda d, v=v: d["avatar"]["code"].update(path=v), "must name a file") for v in ("", ".", "./", "a\0b")],
])
def test_malformed_manifest_is_rejected_with_the_field_named(bundle, edit, match):
    path = bundle.root / MANIFEST_NAME
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match=match):
        Bundle.open(bundle.root)


def _renamed(artifact: dict, name: str, path: str) -> dict:
    other = copy.deepcopy(artifact)
    other["name"] = name
    other["files"][0]["path"] = path
    return other


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


# ---- audit fixes: unreadable manifests, strict JSON, OpenVINO files, links, avatar code, model cross-checks ----

def _write_manifest(bundle: Bundle, edit) -> None:
    path = bundle.root / MANIFEST_NAME
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw))


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000,
                                  '{"schema": "flexavatar-bundle", "schema_version": ' + "9" * 5000 + "}"])
def test_manifest_json_that_python_cannot_parse_is_a_manifest_error(tmp_path, text):
    (tmp_path / MANIFEST_NAME).write_text(text)
    with pytest.raises(ManifestError, match=MANIFEST_NAME):
        Manifest.read(tmp_path)


def test_manifest_is_written_as_strict_json(bundle, tmp_path):
    def strict(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    m = bundle.manifest
    m.write(tmp_path)
    assert Manifest.from_dict(json.loads((tmp_path / MANIFEST_NAME).read_text(), parse_constant=strict)) == m
    (tmp_path / MANIFEST_NAME).unlink()
    from dataclasses import replace
    with pytest.raises(ManifestError, match="export_seconds must be a finite number"):
        replace(m, export_seconds=float("inf")).write(tmp_path)
    parity = replace(m.artifacts[0].parity, outputs=(OutputParity("means", float("nan"), None, True),))
    with pytest.raises(ManifestError, match=r"artifacts\[0\].parity.outputs\[0\].max_abs_error"):
        replace(m, artifacts=(replace(m.artifacts[0], parity=parity),)).write(tmp_path)
    assert not (tmp_path / MANIFEST_NAME).exists()


def test_openvino_artifact_lists_its_xml_and_bin(bundle):
    raw = bundle.manifest.to_dict()
    ir = raw["artifacts"][0]
    ir.update(name="decoder.fp32.openvino", format="openvino")
    xml = {**ir["files"][0], "path": "decoder.fp32.xml"}
    ir["files"] = [xml, {**xml, "path": "decoder.fp32.bin"}]
    assert [f.path for f in Manifest.from_dict(raw).artifacts[0].files] == ["decoder.fp32.xml", "decoder.fp32.bin"]
    for files in ([xml], [xml, {**xml, "path": "other.bin"}], [xml, {**xml, "path": "decoder.fp32.bin"}, xml]):
        ir["files"] = files
        with pytest.raises(ManifestError, match=r"artifacts\[0\].files must be exactly \['decoder.fp32.xml', "
                                                r"'decoder.fp32.bin'\]"):
            Manifest.from_dict(raw)


def test_onnx_runtime_artifact_is_an_onnx_file_beside_the_portable_one(bundle):
    """Format onnx-ort (ONNX with ONNX Runtime's contrib ops): its model file is a .onnx file, and it may sit beside
    the portable file of the same role and precision (each format once)."""
    raw = bundle.manifest.to_dict()
    fused = _renamed(raw["artifacts"][0], "decoder.fp32.onnx-ort", "decoder.fp32.ort.onnx")
    fused["format"] = "onnx-ort"
    raw["artifacts"].append(fused)
    m = Manifest.from_dict(raw)
    assert m.artifact("decoder", "onnx-ort").files[0].path == "decoder.fp32.ort.onnx"
    assert m.artifact("decoder", "onnx").files[0].path == "decoder.fp32.onnx"
    fused["files"][0]["path"] = "decoder.fp32.ort.xml"
    with pytest.raises(ManifestError, match=r"artifacts\[1\].files\[0\] must be the .onnx model file"):
        Manifest.from_dict(raw)
    fused["format"] = 7
    with pytest.raises(ManifestError, match=r"artifacts\[1\].format must be a string, got 7"):
        Manifest.from_dict(raw)


def test_artifacts_of_kinds_this_flexavatar_does_not_know_are_left_aside(bundle, caplog):
    """A newer exporter's artifact (a format, role or precision this reader does not know) does not make the bundle
    unreadable: it is left aside with a warning (its files are not opened, so not checked), the rest runs, and a
    lookup that finds nothing names what was left aside. Its fields must still have their types."""
    raw = bundle.manifest.to_dict()
    newer = {"format": "tensorrt", "role": "decoder_lite", "precision": "int4"}
    for key, value in newer.items():
        entry = _renamed(raw["artifacts"][0], f"decoder.{key}.plan", f"decoder.{key}.plan")
        entry[key] = value
        raw["artifacts"].append(entry)
    (bundle.root / "manifest.json").write_text(json.dumps(raw))
    with caplog.at_level("WARNING", logger="flexavatar.bundle"):
        opened = Bundle.open(bundle.root, verify="full")             # the .plan files do not exist: never opened
    m = opened.manifest
    assert [a.name for a in m.artifacts] == ["decoder.fp32.onnx"]
    assert m.ignored == ("decoder.format.plan (format 'tensorrt')", "decoder.role.plan (role 'decoder_lite')",
                         "decoder.precision.plan (precision 'int4')")
    assert "manifest.artifacts[3]: decoder.precision.plan (precision 'int4'): left aside (flexavatar" in caplog.text
    assert "ignored" not in m.to_dict()                              # what a reader left aside is not written
    assert opened.artifact("decoder").name == "decoder.fp32.onnx"
    with pytest.raises(ArtifactNotFoundError, match=r"it has: decoder.fp32.onnx \(and, unknown to this flexavatar: "
                                                    r"decoder.format.plan \(format 'tensorrt'\), "):
        opened.artifact("decoder", "onnx", "fp16")
    raw["artifacts"][-1]["precision"] = None
    with pytest.raises(ManifestError, match=r"artifacts\[3\].precision must be a string, got None"):
        Manifest.from_dict(raw)


def test_files_linking_out_of_the_bundle_are_refused(bundle, tmp_path):
    outside = tmp_path / "outside.onnx"
    model = bundle.root / "decoder.fp32.onnx"
    outside.write_bytes(model.read_bytes())
    model.unlink()
    model.symlink_to(outside)
    for verify in ("full", "size"):
        with pytest.raises(BundleFileError, match="decoder.fp32.onnx links to .*outside the bundle"):
            Bundle.open(bundle.root, verify=verify)
    unverified = Bundle.open(bundle.root, verify="none")
    with pytest.raises(BundleFileError, match="outside the bundle"):
        unverified.path(unverified.artifact("decoder"))           # what the engines open
    with pytest.raises(BundleFileError, match="outside the bundle"):
        unverified.metadata(unverified.artifact("decoder"))
    # a link that stays inside the bundle is fine
    (bundle.root / "models").mkdir()
    os.replace(outside, bundle.root / "models" / "decoder.onnx")
    model.unlink()
    model.symlink_to(Path("models") / "decoder.onnx")
    Bundle.open(bundle.root).metadata(bundle.artifact("decoder"))
    code = bundle.root / "avatar_code.npy"
    code.unlink()
    code.symlink_to(code)                                            # a loop
    with pytest.raises(BundleFileError, match="avatar_code.npy"):
        Bundle.open(bundle.root, verify="none").avatar_code()


def _npy(path: Path, array) -> None:
    np.save(path, array, allow_pickle=True)


def _npz(path: Path, array) -> None:
    with path.open("wb") as fh:                         # a zip archive under the .npy name
        np.savez(fh, array)


@pytest.mark.parametrize("write, match", [
    (lambda p: _npy(p, np.float32(1)), r"holds float32 \(\)"),
    (lambda p: _npy(p, np.zeros((4, 8), np.float32)), r"holds float32 \(4, 8\)"),
    (lambda p: _npy(p, np.zeros((4, 2, 8), np.float32)), r"holds float32 \(4, 2, 8\)"),
    (lambda p: _npy(p, np.zeros((5, 1, 8), np.float32)), r"holds float32 \(5, 1, 8\)"),
    (lambda p: _npy(p, np.zeros((4, 1, 8), np.int64)), r"holds int64"),
    (lambda p: _npy(p, np.full((4, 1, 8), "a")), r"holds <U1"),
    (lambda p: _npy(p, np.array([{"a": 1}], dtype=object)), "not a readable .npy file"),
    (lambda p: p.write_bytes(b"hello world"), "not a readable .npy file"),
    (lambda p: p.write_bytes(b""), "not a readable .npy file"),
    (lambda p: _npz(p, np.zeros((4, 1, 8), np.float32)), "an .npz archive"),
])
def test_malformed_avatar_code_is_a_bundle_error(bundle, write, match):
    write(bundle.root / "avatar_code.npy")
    with pytest.raises(BundleFileError, match=r"avatar.code avatar_code.npy: .*" + match):
        Bundle.open(bundle.root, verify="none").avatar_code()


def test_avatar_code_of_another_float_type_is_converted(bundle):
    np.save(bundle.root / "avatar_code.npy", np.ones((4, 1, 8), np.float64))
    code = Bundle.open(bundle.root, verify="none").avatar_code()
    assert code.dtype == np.float32 and code.shape == (1, 4, 8)


@pytest.mark.parametrize("key, value", [("image_size", "64"), ("n_head_tokens", "5"), ("d_code", "9"),
                                        ("expression_dim", "100"), ("dataset_id", "0"), ("axes", "opengl"),
                                        ("quaternion_order", "xyzw"), ("code_layout", "[R2, B, D]"),
                                        ("avatar_code_sha256", "ef" * 32)])
def test_model_metadata_disagreeing_with_the_conventions_is_refused(bundle, key, value):
    _tiny_onnx(bundle.root / "decoder.fp32.onnx", _metadata().to_props() | {f"flexavatar.{key}": value})
    with pytest.raises(BundleMetadataError, match=f"decoder.fp32.onnx: metadata disagrees .*{key}: file says"):
        Bundle.open(bundle.root, verify="none").metadata(bundle.artifact("decoder"))


def test_graph_inputs_and_outputs_are_checked_against_the_manifest(bundle):
    assert read_onnx_signature(bundle.root / "decoder.fp32.onnx") == (
        [(frozenset({"code"}), (1, 4, 8)), (frozenset({"expressions"}), (None, 135))],
        [(frozenset({o.name}), (None, G, *o.shape[2:])) for o in DECODER_OUTPUTS])
    code, expressions = DECODER_INPUTS
    means, *others = DECODER_OUTPUTS
    cases = [
        ((TensorSpec("latent", (1, 4, 8), "float32"), expressions), DECODER_OUTPUTS, r"input 'code' of the manifest "
                                                                                     r"is not in the graph"),
        ((expressions,), DECODER_OUTPUTS, r"inputs: the graph has \[\['expressions'\]\], the manifest lists"),
        ((TensorSpec("code", (1, 4, 16), "float32"), expressions), DECODER_OUTPUTS,
         r"input 'code': the graph declares shape \[1, 4, 16\], the manifest \[1, 4, 8\]"),
        ((code, TensorSpec("expressions", (1, 135), "float32")), DECODER_OUTPUTS,
         r"input 'expressions': the graph declares shape \[1, 135\], the manifest \['E', 135\]"),
        (DECODER_INPUTS, (TensorSpec("means", ("E", G), "float32"), *others), r"output 'means': the graph declares"),
    ]
    for inputs, outputs, match in cases:
        _tiny_onnx(bundle.root / "decoder.fp32.onnx", _metadata().to_props(), inputs=inputs, outputs=outputs)
        with pytest.raises(BundleMetadataError, match=r"decoder.fp32.onnx: " + match):
            Bundle.open(bundle.root, verify="none").metadata(bundle.artifact("decoder"))
    # a dim that the manifest fixes may be dynamic in the graph
    _tiny_onnx(bundle.root / "decoder.fp32.onnx", _metadata().to_props(),
               inputs=(TensorSpec("code", ("B", 4, 8), "float32"), expressions))
    Bundle.open(bundle.root, verify="none").metadata(bundle.artifact("decoder"))


def test_unknown_tensor_names_are_bundle_errors(bundle):
    a = bundle.artifact("decoder")
    for lookup in (lambda: a.input("features"), lambda: a.output("colors"), lambda: a.parity.output("colors")):
        with pytest.raises(TensorNotFoundError, match="no (tensor|output) 'features'|'colors'") as raised:
            lookup()
        assert isinstance(raised.value, KeyError) and not str(raised.value).startswith('"')
