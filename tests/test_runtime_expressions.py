"""Building expression codes from a FLAME tracker's parameters (runtime/expressions.py), against the tracked
sequences in ../shared/fixtures/driving and a float64 matrix exponential (torch) as the oracles."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from flexavatar.runtime import (ExpressionInputError, axis_angle_to_matrix, compose_expression, expression_parts,
                                head_pose, load_expressions, neutral_expression)


@pytest.fixture(scope="module")
def tracked(driving_dir):
    """EXP-1-head: the largest head, neck and jaw rotations of the set; raw (un-orthonormalised) 6D codes."""
    with np.load(driving_dir / "EXP-1-head.npz") as d:
        return d["expression_codes"], d["head_rotation_matrix_tracked"]


def _exp_skew(v: np.ndarray) -> np.ndarray:
    """The rotation of an axis-angle vector as the matrix exponential of its skew matrix, in float64."""
    v = torch.from_numpy(np.asarray(v, np.float64))
    zero = torch.zeros_like(v[..., 0])
    k = torch.stack([torch.stack([zero, -v[..., 2], v[..., 1]], -1), torch.stack([v[..., 2], zero, -v[..., 0]], -1),
                     torch.stack([-v[..., 1], v[..., 0], zero], -1)], -2)
    return torch.linalg.matrix_exp(k).numpy()


def test_parts_round_trip_bit_for_bit(tracked):
    codes, _ = tracked
    parts = expression_parts(codes)
    assert parts["eyes"].shape == (len(codes), 2, 6) and parts["expression"].shape == (len(codes), 100)
    np.testing.assert_array_equal(compose_expression(**parts), codes)
    # raw 6D stays raw: the tracked rows are not unit vectors, and composing keeps them so
    assert np.abs(np.linalg.norm(codes[:, 120:123], axis=1) - 1).max() > 0.1


def test_matrices_give_the_tracked_head_rotation(tracked):
    codes, rotation_tracked = tracked
    composed = compose_expression(head_rotation=rotation_tracked)
    rot, trans = head_pose(composed)
    np.testing.assert_allclose(rot, rotation_tracked, atol=5e-6)      # the tracker's matrix, through the float32 code
    np.testing.assert_allclose(rot, head_pose(codes)[0], atol=5e-6)    # the same pose as the raw tracked code
    np.testing.assert_array_equal(trans, 0.0)
    # every other slot is neutral
    neutral = neutral_expression(len(codes))
    np.testing.assert_array_equal(np.delete(composed, np.s_[126:132], 1), np.delete(neutral, np.s_[126:132], 1))


@pytest.mark.parametrize("angle", [0.0, 1e-9, 3e-5, 0.3, 2.0, np.pi])
def test_axis_angle_is_the_matrix_exponential(angle):
    axes = np.random.default_rng(0).normal(size=(5, 3))
    v = axes / np.linalg.norm(axes, axis=1, keepdims=True) * angle
    got = axis_angle_to_matrix(v)
    np.testing.assert_allclose(got, _exp_skew(v), atol=1e-12)
    np.testing.assert_allclose(got @ got.swapaxes(-1, -2), np.broadcast_to(np.eye(3), got.shape), atol=1e-12)


def test_axis_angle_rotation_about_z():
    r = axis_angle_to_matrix([0.0, 0.0, np.pi / 2])
    np.testing.assert_allclose(r @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], atol=1e-15)   # x → y: right-handed


def test_every_form_of_a_rotation_gives_the_same_code():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(4, 3)) * 0.4                                     # [T, 3] axis-angle
    m = _exp_skew(v)                                                       # [T, 3, 3]
    r6 = m[:, :2, :].reshape(4, 6)
    eyes_aa = np.stack([v, -v], 1)                                         # [T, 2, 3]
    from_aa = compose_expression(jaw=v, neck=v, head_rotation=v, eyes=eyes_aa)
    from_m = compose_expression(jaw=m, neck=m, head_rotation=m, eyes=_exp_skew(eyes_aa))
    from_6d = compose_expression(jaw=r6, neck=r6, head_rotation=r6, eyes=np.stack([r6, _exp_skew(-v)[:, :2].reshape(4, 6)], 1))
    np.testing.assert_allclose(from_aa, from_m, atol=1e-7)
    np.testing.assert_allclose(from_6d, from_m, atol=1e-7)
    np.testing.assert_allclose(from_m[:, 120:126], r6, atol=1e-7)          # jaw slot = the first two matrix rows
    np.testing.assert_allclose(from_m[:, 106:112], _exp_skew(-v)[:, :2].reshape(4, 6), atol=1e-7)   # right eye


def test_vector_parts_land_in_their_slots():
    rng = np.random.default_rng(2)
    exp50, lids, t = rng.normal(size=(3, 50)), rng.uniform(size=(3, 2)), rng.normal(size=(3, 3)) * 0.01
    codes = compose_expression(exp50, eyelids=lids, head_translation=t)
    np.testing.assert_array_equal(codes[:, :50], exp50.astype(np.float32))
    np.testing.assert_array_equal(codes[:, 50:100], 0.0)                   # fewer coefficients: zero-padded
    np.testing.assert_array_equal(codes[:, 112:114], lids.astype(np.float32))
    np.testing.assert_array_equal(codes[:, 132:135], t.astype(np.float32))
    np.testing.assert_array_equal(compose_expression(frames=4), neutral_expression(4))
    assert compose_expression(torch.ones(2, 100)).dtype == np.float32


def test_head_motion_can_be_removed_from_a_sequence(driving_dir):
    codes = load_expressions(driving_dir / "EXP-1-head.npz")
    still = compose_expression(**{**expression_parts(codes), "head_rotation": None, "head_translation": None})
    np.testing.assert_array_equal(still[:, :126], codes[:, :126])
    np.testing.assert_array_equal(head_pose(still)[0], np.broadcast_to(np.eye(3), (len(codes), 3, 3)))


@pytest.mark.parametrize("kwargs, argument, text", [
    ({"jaw": np.zeros((3, 4))}, "jaw", "[T, R]"),
    ({"jaw": np.zeros(3)}, "jaw", "has shape [3]"),
    ({"eyes": np.zeros((3, 3))}, "eyes", "[T, 2, R]"),
    ({"expression": np.zeros((2, 101))}, "expression", "1 ≤ K ≤ 100"),
    ({"expression": np.zeros((2, 100)), "jaw": np.zeros((3, 3))}, "jaw", "2, as expression"),
    ({"frames": 2, "jaw": np.zeros((3, 3))}, "jaw", "2, as frames="),
    ({"head_translation": np.full((1, 3), np.nan)}, "head_translation", "NaN"),
    ({"eyelids": np.zeros((1, 2), bool)}, "eyelids", "dtype bool"),
    ({"neck": np.zeros((0, 3))}, "neck", "0 frames"),
    ({"frames": 0}, "frames", "int ≥ 1"),
])
def test_bad_parts_name_the_argument(kwargs, argument, text):
    with pytest.raises(ExpressionInputError) as e:
        compose_expression(**kwargs)
    assert e.value.argument == argument and text in str(e.value), str(e.value)
