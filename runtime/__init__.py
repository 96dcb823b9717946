"""flexavatar.runtime: run an exported bundle on ONNX Runtime / OpenVINO / PyTorch and render frames.

    from flexavatar.runtime import Runtime, orbit_camera, load_expressions
    rt = Runtime("bundle/")                                   # backend / device / rasterizer: "auto"
    avatar = rt.create_avatar("me.png")                       # once; avatar.save("me.npy"), Avatar.load(...)
    expressions = load_expressions("EMO-1-shout+laugh.npz")   # [T, 135]
    frames = rt.render(avatar, expressions, orbit_camera(len(expressions)))     # uint8 [T, 512, 512, 3]
    pending = rt.render_async(avatar, expressions[:1])       # live loops: queue frame i + 1, then take frame i
    frame = pending.result()

    print(rt.check_numerics().table())                        # this engine vs PyTorch, on the bundle's check.npz

CLI: ``flexavatar-render BUNDLE --avatar PHOTO_OR_CODE --expressions SEQ -o clip.mp4``; ``flexavatar-verify BUNDLE``.
Importing this package imports neither torch nor an inference library; the ONNX Runtime and OpenVINO paths with the
native CPU rasterizer never import torch.
"""
from .avatar import Avatar
from .cameras import Camera, default_camera, look_at, orbit_camera, photo_camera, sequence_cameras, stereo_camera
from .engines import (EngineOptions, EngineSpec, InferenceBackend, available_engines, get_engine, register_engine,
                      registered_engines, select_engine)
from .errors import (AvatarFileError, CameraInputError, EncoderUnavailableError, EngineUnavailableError,
                     ExecutionProviderError, ExpressionInputError, ImageInputError, ModelMismatchError, OutputFileError, RuntimeArgumentError,
                     RuntimeFailure, UnknownEngineError)
from .expressions import (axis_angle_to_matrix, compose_expression, expression_parts, head_pose, head_pose_matrix,
                          load_expressions, neutral_expression, synthetic_expressions)
from .intersections import IncompleteFrameWarning, IntersectionBudget
from .numerics import GraphCheck, NumericsReport
from .runtime import FRAME_FORMATS, WHITE, Gaussians, PendingFrames, Runtime, apply_pose
from .timing import StageTimes

__all__ = [
    "Runtime", "PendingFrames", "Avatar", "Gaussians",
    "Camera", "default_camera", "orbit_camera", "sequence_cameras", "photo_camera", "stereo_camera", "look_at",
    "load_expressions", "compose_expression", "expression_parts", "axis_angle_to_matrix",
    "neutral_expression", "synthetic_expressions", "head_pose", "head_pose_matrix", "apply_pose", "StageTimes",
    "FRAME_FORMATS", "WHITE", "NumericsReport", "GraphCheck",
    "EngineOptions", "EngineSpec", "InferenceBackend", "register_engine", "registered_engines", "available_engines",
    "get_engine", "select_engine",
    "RuntimeFailure", "RuntimeArgumentError", "ImageInputError", "ExpressionInputError", "CameraInputError",
    "AvatarFileError", "EngineUnavailableError", "ExecutionProviderError", "UnknownEngineError", "EncoderUnavailableError",
    "ModelMismatchError", "OutputFileError", "IncompleteFrameWarning", "IntersectionBudget",
]
