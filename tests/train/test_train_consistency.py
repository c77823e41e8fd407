"""The consistency (identity) loss: formula, weight schedule, gradients, face alignment, the frozen feature network
and the region decode. Expected values are worked out by hand in the comments."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from firered_core.config import get_preset
from firered_core.latents import pack_latents
from firered_core.rewards.extras import MissingExtraError
from firered_core.vae import FireRedVAE
from firered_train.config.coerce import ConfigError
from firered_train.model.face_features import FaceFeatureConfig, FaceFeatures, load_face_features
from firered_train.loop.consistency_step import consistency_terms
from firered_train.model.region_decode import decode_regions, receptive_margin
from firered_train.objectives.consistency import (ConsistencyConfig, consistency_loss, consistency_weight,
                                                  x0_from_velocity)
from firered_train.objectives.face_alignment import (ARCFACE_TEMPLATE, alignment_from_landmarks, find_regions,
                                                     sampled_box, shift_alignment, template_points)

from tests.train_fixtures import tiny_face_features

TINY_FACE = FaceFeatureConfig(layers=(1, 1, 1, 1), widths=(4, 4, 8, 8), embedding_dim=8, crop=16)
IDENTITY = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)


def _tiny_features(dtype: torch.dtype = torch.float32) -> FaceFeatures:
    """The tests' tiny IResNet (``tiny_face_features``), eval mode, frozen."""
    return tiny_face_features(seed=3).to(dtype).eval().requires_grad_(False)


def _similarity(scale: float, degrees: float, shift: tuple[float, float]) -> torch.Tensor:
    a = math.radians(degrees)
    return torch.tensor([[scale * math.cos(a), -scale * math.sin(a), shift[0]],
                         [scale * math.sin(a), scale * math.cos(a), shift[1]]], dtype=torch.float64)


def _apply(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    return points @ matrix[:, :2].T + matrix[:, 2]


# -- x0 estimate and weight ----------------------------------------------------------------------------------------


def test_x0_from_velocity_recovers_x0_and_passes_gradient_to_v() -> None:
    x0, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    s = torch.tensor([0.3, 0.8])
    x_t = (1 - s[:, None, None, None]) * x0 + s[:, None, None, None] * eps
    v = (eps - x0).requires_grad_(True)
    x0_hat = x0_from_velocity(x_t, v, s)
    torch.testing.assert_close(x0_hat, x0, atol=1e-6, rtol=0)
    x0_hat.sum().backward()  # d(x_t - s v)/dv = -s per element
    torch.testing.assert_close(v.grad, -s[:, None, None, None].expand_as(v))


def test_weight_is_eta_sigma_squared_below_sigma_max_and_zero_from_it() -> None:
    config = ConsistencyConfig(eta=0.2, sigma_max=0.9)
    weight = consistency_weight(torch.tensor([0.5, 0.0, 0.9, 0.95]), config)
    # 0.2 * 0.25 = 0.05; sigma 0 -> 0; at and above 0.9 -> 0
    torch.testing.assert_close(weight, torch.tensor([0.05, 0.0, 0.0, 0.0], dtype=torch.float64))


# -- the loss -----------------------------------------------------------------------------------------------------


def _halves(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """A constant 0.5 image and one that is -0.5 on its right half: orthogonal when flattened (cos = 0)."""
    flat = torch.full((1, 3, n, n), 0.5, dtype=torch.float64)
    split = flat.clone()
    split[..., n // 2:] = -0.5
    return flat, split


def test_loss_is_weighted_one_minus_cosine_by_hand() -> None:
    flat, split = _halves()
    config = ConsistencyConfig(eta=0.4, crop=16)
    # features = flatten: the identity warp keeps the 16x16 image, cos(flat, split) = 0, so L = 1 for the sample;
    # weight 0.4 * 0.5^2 = 0.1, and the mean over the single sample gives 0.1
    terms = consistency_loss(flat, split, [[IDENTITY]], nn.Flatten(), torch.tensor([0.5]), config)
    assert terms.loss.item() == pytest.approx(0.1, abs=1e-12)
    assert terms.per_sample.tolist() == pytest.approx([1.0], abs=1e-12) and terms.n_regions == 1
    # a sample without a face counts in the mean with 0: (0.1 + 0) / 2
    terms = consistency_loss(torch.cat([flat, flat]), torch.cat([split, split]), [[IDENTITY], []], nn.Flatten(),
                             torch.tensor([0.5, 0.5]), config)
    assert terms.loss.item() == pytest.approx(0.05, abs=1e-12)


def test_loss_is_zero_for_identical_inputs_and_positive_otherwise() -> None:
    features = _tiny_features(torch.float64)
    gt = torch.rand(2, 3, 24, 24, dtype=torch.float64) * 2 - 1
    regions = [[_similarity(0.8, 10.0, (1.0, -2.0))], [IDENTITY, _similarity(0.5, -5.0, (3.0, 2.0))]]
    sigma, config = torch.tensor([0.4, 0.7]), ConsistencyConfig(eta=1.0, crop=16)
    same = consistency_loss(gt.clone(), gt, regions, features, sigma, config)
    assert same.loss.item() == pytest.approx(0.0, abs=1e-12) and same.n_regions == 3
    other = consistency_loss(gt.flip(-1), gt, regions, features, sigma, config)
    # a random tiny network maps different crops to nearby embeddings: 1 - cos is small (~3e-4) but not 0
    assert other.loss.item() > 1e-5 and (other.per_sample > 1e-5).all()


def test_above_sigma_max_the_loss_and_its_gradient_are_exactly_zero() -> None:
    features = _tiny_features()
    x0_hat = torch.rand(2, 3, 16, 16, requires_grad=True)
    gt = torch.rand(2, 3, 16, 16)
    config = ConsistencyConfig(eta=1.0, crop=16)
    skipped = consistency_loss(x0_hat, gt, [[IDENTITY], [IDENTITY]], features, torch.tensor([0.95, 0.9]), config)
    assert skipped.loss.item() == 0.0 and not skipped.loss.requires_grad  # no graph was built
    assert skipped.n_regions == 0 and skipped.per_sample.tolist() == [0.0, 0.0]
    mixed = consistency_loss(x0_hat, gt, [[IDENTITY], [IDENTITY]], features, torch.tensor([0.5, 0.95]), config)
    (grad,) = torch.autograd.grad(mixed.loss, x0_hat)
    assert grad[0].abs().sum() > 0 and torch.equal(grad[1], torch.zeros_like(grad[1]))


def test_gradcheck_float64_through_warp_and_feature_network() -> None:
    features = _tiny_features(torch.float64)
    gt = torch.rand(1, 3, 20, 20, dtype=torch.float64) * 2 - 1
    x0_hat = (gt + 0.3 * torch.randn_like(gt)).requires_grad_(True)
    regions = [[_similarity(0.9, 15.0, (-1.0, 2.5))]]
    config = ConsistencyConfig(eta=1.0, crop=16)

    def loss(x: torch.Tensor) -> torch.Tensor:
        return consistency_loss(x, gt, regions, features, torch.tensor([0.6]), config).loss

    # fast mode: the analytic vector-Jacobian product against a numerical directional derivative along random
    # directions (the full Jacobian needs two forward passes per input element: minutes on a shared CPU)
    assert torch.autograd.gradcheck(loss, (x0_hat,), eps=1e-6, atol=1e-6, fast_mode=True)

    def patch_loss(patch: torch.Tensor) -> torch.Tensor:  # the full Jacobian, on a 3x3 patch inside the face
        x = x0_hat.detach().clone()
        x[..., 8:11, 9:12] = patch
        return loss(x)

    patch = x0_hat.detach()[..., 8:11, 9:12].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(patch_loss, (patch,), eps=1e-6, atol=1e-6)


def test_gradient_reaches_the_velocity() -> None:
    features = _tiny_features()
    gt, x_t = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    v = torch.randn(1, 3, 16, 16, requires_grad=True)
    sigma = torch.tensor([0.5])
    x0_hat = x0_from_velocity(x_t, v, sigma)
    x0_hat.retain_grad()
    terms = consistency_loss(x0_hat, gt, [[IDENTITY]], features, sigma, ConsistencyConfig(eta=1.0, crop=16))
    terms.loss.backward()
    assert v.grad.abs().sum() > 0
    torch.testing.assert_close(v.grad, -0.5 * x0_hat.grad)  # chain rule through x_t - sigma v


def test_mismatched_batch_is_refused() -> None:
    with pytest.raises(ValueError, match="same 2 samples"):
        consistency_loss(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16), [[], []], nn.Flatten(),
                         torch.tensor([0.5, 0.5]), ConsistencyConfig(crop=16))


@pytest.mark.parametrize(("kwargs", "field"), [({"eta": -1.0}, "eta"), ({"sigma_max": 1.5}, "sigma_max"),
                                               ({"crop": 100}, "crop"), ({"enabled": True}, "features_path")])
def test_config_errors_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"^{field}:"):
        ConsistencyConfig(**kwargs)


# -- alignment -----------------------------------------------------------------------------------------------------


def test_template_landmarks_give_the_identity_and_half_size_ones_scale_two() -> None:
    template = torch.tensor(ARCFACE_TEMPLATE, dtype=torch.float64)
    torch.testing.assert_close(alignment_from_landmarks(template, 112), IDENTITY, atol=1e-10, rtol=0)
    # landmarks at half the template's coordinates: x -> 2x
    torch.testing.assert_close(alignment_from_landmarks(template / 2, 112), 2 * IDENTITY, atol=1e-10, rtol=0)
    # the same landmarks for a 224 crop: the template doubles, so x -> 4x
    torch.testing.assert_close(alignment_from_landmarks(template / 2, 224), 4 * IDENTITY, atol=1e-10, rtol=0)


@pytest.mark.parametrize("n_points", [2, 3, 5])
def test_alignment_recovers_an_exact_similarity(n_points: int) -> None:
    truth = _similarity(0.6, 25.0, (12.0, -7.0))  # image -> template
    template = template_points(n_points, 112)
    linear, shift = truth[:, :2], truth[:, 2]
    landmarks = (template - shift) @ torch.linalg.inv(linear).T  # the points that map exactly onto the template
    found = alignment_from_landmarks(landmarks.numpy(), 112)
    torch.testing.assert_close(found, truth, atol=1e-9, rtol=0)
    torch.testing.assert_close(_apply(found, landmarks), template, atol=1e-9, rtol=0)


def test_alignment_never_reflects_and_refuses_bad_points() -> None:
    mirrored = torch.tensor(ARCFACE_TEMPLATE, dtype=torch.float64) * torch.tensor([-1.0, 1.0])
    assert torch.det(alignment_from_landmarks(mirrored, 112)[:, :2]) > 0
    with pytest.raises(ValueError, match="landmarks must be"):
        alignment_from_landmarks(torch.zeros(5, 3), 112)
    with pytest.raises(ValueError, match="n_points"):
        alignment_from_landmarks(torch.rand(4, 2), 112)
    with pytest.raises(ValueError, match="coincide"):
        alignment_from_landmarks(torch.ones(2, 2), 112)


def test_shift_alignment_moves_a_transform_into_a_crop() -> None:
    matrix = _similarity(1.3, 40.0, (5.0, 9.0))
    points = torch.tensor([[30.0, 40.0], [55.5, 21.0]], dtype=torch.float64)
    origin = (16, 24)
    shifted = shift_alignment(matrix, origin)
    torch.testing.assert_close(_apply(shifted, points - torch.tensor(origin, dtype=torch.float64)),
                               _apply(matrix, points))


def test_sampled_box_covers_what_the_warp_reads() -> None:
    # identity into a 16 crop reads pixels 0..15 and, bilinearly, their right/lower neighbours: 0..16 -> end 17
    assert sampled_box([IDENTITY], 16, 40, 40) == (0, 0, 17, 17)
    # x -> 0.5 x - 10, y -> 0.5 y - 5 inverts to x = 2u + 20, y = 2v + 10: u, v in [0, 15] give x in [20, 50],
    # y in [10, 40]; ends 52, 42; a second region at the origin widens the box, the image edge clips it
    half = torch.tensor([[0.5, 0.0, -10.0], [0.0, 0.5, -5.0]], dtype=torch.float64)
    assert sampled_box([half], 16, 64, 64) == (20, 10, 52, 42)
    assert sampled_box([half, IDENTITY], 16, 64, 50) == (0, 0, 50, 42)


def test_find_regions_aligns_the_astronauts_face_upright() -> None:
    pytest.importorskip("dlib", reason="face detection needs the 'face' extra")
    skdata = pytest.importorskip("skimage.data", reason="the face image comes from scikit-image")
    from firered_core.rewards.identity import default_embedder

    image = Image.fromarray(skdata.astronaut())  # Eileen Collins, public domain; her face is around (150..290, 50..190)
    (matrix,) = find_regions(image, 112)
    (face,) = default_embedder().landmarks(image)
    eyes = torch.tensor(np.stack([face.points[0:2].mean(0), face.points[2:4].mean(0)]), dtype=torch.float64)
    assert ((eyes[:, 0] > 150) & (eyes[:, 0] < 290) & (eyes[:, 1] > 50) & (eyes[:, 1] < 190)).all()
    mapped = _apply(matrix, eyes[eyes[:, 0].argsort()])
    torch.testing.assert_close(mapped, template_points(2, 112), atol=1e-9, rtol=0)  # two points: exact
    # the nose base is not fitted, but an upright, unmirrored alignment puts it below and between the eyes
    nose = _apply(matrix, torch.tensor(face.points[4:5], dtype=torch.float64))[0]
    assert 38.3 < nose[0].item() < 73.5 and nose[1].item() > 60.0


def test_find_regions_needs_the_face_extra_or_finds_no_face_on_grey() -> None:
    grey = Image.new("RGB", (96, 96), (128, 128, 128))
    if importlib.util.find_spec("dlib") is None:
        with pytest.raises(MissingExtraError, match=r"comfyui-firered\[face\]"):
            find_regions(grey, 112)
    else:
        assert find_regions(grey, 112) == []


# -- the frozen feature network ------------------------------------------------------------------------------------


def test_feature_network_loads_a_good_file_frozen(tmp_path) -> None:
    source = _tiny_features()
    path = tmp_path / "arcface_tiny.safetensors"
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(state, str(path))
    loaded = load_face_features(path, TINY_FACE)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    crops = torch.rand(3, 3, 16, 16) * 2 - 1
    out = loaded(crops)
    assert out.shape == (3, 8)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out, source(crops))


def test_feature_network_refuses_wrong_keys_and_pickles(tmp_path) -> None:
    state = dict(_tiny_features().state_dict())
    state["head.weight"] = state.pop("fc.weight")
    path = tmp_path / "wrong.safetensors"
    save_file(state, str(path))
    with pytest.raises(ValueError, match=r"missing keys \['fc.weight'\].*unexpected keys \['head.weight'\]"):
        load_face_features(path, TINY_FACE)
    with pytest.raises(ValueError, match="must be a .safetensors file"):
        load_face_features(tmp_path / "model.pth", TINY_FACE)
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        load_face_features(tmp_path / "absent.safetensors", TINY_FACE)


# -- region decode -------------------------------------------------------------------------------------------------


def _tiny_vae() -> FireRedVAE:
    torch.manual_seed(5)
    vae = FireRedVAE(get_preset("tiny").vae).eval()
    with torch.no_grad():
        for name, p in vae.named_parameters():
            p.add_(0.3 * torch.randn_like(p) if name.endswith("gamma") else 0.02 * torch.randn_like(p))
    return vae


def test_decode_regions_equals_the_full_decode_cropped_values_and_gradients() -> None:
    vae = _tiny_vae()
    f = vae.spatial_compression  # 4 for the tiny preset
    latents = torch.randn(3, vae.z_dim, 32, 32, requires_grad=True)
    # sample 0: an inner box (snapped out to latent tiles: 40..76 x 49..71 -> 40..76 x 48..72); sample 2 touches
    # the bottom-right border; sample 1 has no region
    boxes = [(40, 49, 75, 71), None, (100, 96, 128, 128)]
    crops = decode_regions(vae, latents, boxes)
    full = vae.decode(latents)
    assert crops[1] is None and crops[0].box == (40, 48, 76, 72) and crops[2].box == (100, 96, 128, 128)
    for b in (0, 2):
        x0, y0, x1, y1 = crops[b].box
        torch.testing.assert_close(crops[b].pixels, full[b, :, y0:y1, x0:x1], atol=1e-5, rtol=1e-5)
    (got,) = torch.autograd.grad(sum(c.pixels.square().sum() for c in crops if c is not None), latents)
    x0, y0, x1, y1 = crops[0].box
    want_loss = full[0, :, y0:y1, x0:x1].square().sum() + full[2, :, 96:128, 100:128].square().sum()
    (want,) = torch.autograd.grad(want_loss, latents)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert receptive_margin(vae) * f < 32 * f  # the cut is smaller than the image, so the test means something


def test_decode_regions_without_margin_differs_and_refuses_bad_boxes() -> None:
    vae = _tiny_vae()
    latents = torch.randn(1, vae.z_dim, 32, 32)
    with torch.no_grad():
        (crop,) = decode_regions(vae, latents, [(40, 48, 76, 72)], margin=0)
        full = vae.decode(latents)
    assert (crop.pixels - full[0, :, 48:72, 40:76]).abs().max() > 1e-3  # zero padding at the cut is visible
    with pytest.raises(ValueError, match="outside the decoded image"):
        decode_regions(vae, latents, [(0, 0, 200, 20)])
    with pytest.raises(ValueError, match="one box"):
        decode_regions(vae, latents, [None, None])


# -- the step's glue: tokens -> region decode -> loss ---------------------------------------------------------------


def _face_at(centre: tuple[float, float], scale: float, degrees: float, crop: int = 16) -> torch.Tensor:
    """Image -> crop similarity putting ``centre`` in the middle of the crop."""
    m = _similarity(scale, degrees, (0.0, 0.0))
    m[:, 2] = (crop - 1) / 2 - m[:, :2] @ torch.tensor(centre, dtype=torch.float64)
    return m


def test_consistency_terms_equal_the_loss_on_full_decodes() -> None:
    vae, features, patch = _tiny_vae(), _tiny_features(), 2
    target = torch.randn(3, vae.z_dim, 32, 32)  # 128 x 128 pixels
    noise, s = torch.randn_like(target), torch.tensor([0.5, 0.95, 0.3])
    x0_tokens, eps_tokens = pack_latents(target, patch), pack_latents(noise, patch)
    x_t = (1 - s[:, None, None]) * x0_tokens + s[:, None, None] * eps_tokens
    v = (eps_tokens - x0_tokens + 0.3 * torch.randn_like(x0_tokens)).requires_grad_(True)  # an imperfect model
    regions = [[_face_at((60.0, 50.0), 0.5, 10.0)], [_face_at((64.0, 64.0), 0.5, 0.0)],
               [_face_at((118.0, 120.0), 0.6, -20.0), _face_at((30.0, 90.0), 0.8, 5.0)]]
    config = ConsistencyConfig(eta=1.0, crop=16)
    got = consistency_terms(vae, features, x_t, v, s, target, regions, config, patch=patch)
    (got_grad,) = torch.autograd.grad(got.loss, v)

    x0_hat = torch.stack([vae.decode(z[None])[0] for z in
                          torch.unbind(x0_from_velocity(x_t, v, s).unflatten(1, (16, 16)).permute(0, 3, 1, 2)
                                       .unflatten(1, (vae.z_dim, patch, patch)).permute(0, 1, 4, 2, 5, 3)
                                       .flatten(4, 5).flatten(2, 3))])  # tokens -> [B, C, 32, 32] by hand, decoded
    want = consistency_loss(x0_hat, vae.decode(target).detach(), regions, features, s, config)
    (want_grad,) = torch.autograd.grad(want.loss, v)
    assert got.n_regions == 3 and want.n_regions == 3  # sample 1 is above sigma_max
    torch.testing.assert_close(got.loss, want.loss, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(got_grad, want_grad, atol=1e-6, rtol=1e-3)
    assert got.loss.item() > 0 and got_grad[1].abs().sum() == 0


def test_consistency_terms_skip_decoding_when_nothing_is_active() -> None:
    vae, features = _tiny_vae(), _tiny_features()
    target = torch.randn(2, vae.z_dim, 8, 8)
    tokens = pack_latents(target, 2)
    v = torch.randn_like(tokens, requires_grad=True)
    terms = consistency_terms(vae, features, tokens, v, torch.tensor([0.95, 0.2]), target,
                              [[IDENTITY], []], ConsistencyConfig(eta=1.0, crop=16), patch=2)
    assert terms.loss.item() == 0.0 and not terms.loss.requires_grad and terms.n_regions == 0
