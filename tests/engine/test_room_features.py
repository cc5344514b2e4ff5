"""room_patch_features: a point-patch Transformer read over a whole room, crop by crop."""

from __future__ import annotations

import pytest
import torch

from pptkit.engine.inference import room_patch_features
from pptkit.models.point_ops import farthest_point_sample
from pptkit.models.point_transformer import PointTransformerEncoder


@pytest.fixture(scope="module")
def encoder() -> PointTransformerEncoder:
    torch.manual_seed(0)
    return PointTransformerEncoder(embed_dim=16, depth=1, num_heads=2, num_groups=8, group_size=8, pos_hidden=8,
                                   embed_first_channels=(8, 16), embed_second_hidden=16).eval()


def room(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, generator=torch.Generator().manual_seed(seed)) * torch.tensor([6.0, 4.0, 2.5])


def test_a_room_within_one_crop_gets_the_tokens_of_its_nearest_patch_centres(encoder):
    coord = room(300)
    patch, tokens = room_patch_features(encoder, coord, crop=1000, num_points=64)
    picked = coord[farthest_point_sample(coord[None], 64)[0]]
    centre = picked.mean(dim=0)
    radius = (picked - centre).norm(dim=1).max()
    with torch.no_grad():
        patches, centres = encoder.group(((picked - centre) / radius)[None])
        expected = encoder.forward_tokens(encoder.embed(patches), centres, with_cls=False)[0]
    torch.testing.assert_close(tokens, expected)
    nearest = torch.cdist((coord - centre) / radius, centres[0]).argmin(dim=1)
    assert torch.equal(patch, nearest)


def test_crops_cover_every_point_deterministically(encoder):
    coord = room(2000, seed=1)
    patch, tokens = room_patch_features(encoder, coord, crop=256, num_points=64)
    assert patch.shape == (2000,) and patch.min() >= 0 and patch.max() < tokens.shape[0]
    assert tokens.shape[0] % encoder.num_groups == 0 and tokens.shape[0] >= encoder.num_groups * 2000 // 256
    again_patch, again_tokens = room_patch_features(encoder, coord, crop=256, num_points=64)
    assert torch.equal(patch, again_patch) and torch.equal(tokens, again_tokens)
    # a point takes its patch from the first crop that holds it: the crop around point 0 for its neighbours
    first = (coord - coord[0]).square().sum(dim=1).topk(256, largest=False).indices
    assert (patch[first] < encoder.num_groups).all()


def test_bad_coordinates_are_refused(encoder):
    with pytest.raises(ValueError, match=r"coord must have shape \(N, 3\)"):
        room_patch_features(encoder, torch.zeros(10, 2), crop=256, num_points=64)
