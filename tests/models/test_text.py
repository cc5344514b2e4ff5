"""Text encoders: the bundled MiniLM loads offline and its embeddings mean something."""

from __future__ import annotations

import pytest
import torch

from pptkit.errors import InputError
from pptkit.models.text import ClipTextEncoder, MiniLMTextEncoder, encode_class_names


@pytest.fixture(scope="module")
def minilm() -> MiniLMTextEncoder:
    return MiniLMTextEncoder()


def test_minilm_gives_384d_unit_vectors_with_sensible_similarity(minilm):
    embeddings = encode_class_names(minilm, ["chair", "sofa", "ceiling"])
    assert minilm.dim == 384 and embeddings.shape == (3, 384) and embeddings.dtype == torch.float32
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(3))
    chair, sofa, ceiling = embeddings
    assert chair @ sofa > chair @ ceiling + 0.05


def test_minilm_pooling_ignores_padding(minilm):
    alone = minilm.encode(["a point of chair"])
    padded = minilm.encode(["a point of chair", "a point of a very long shower curtain rail"])
    torch.testing.assert_close(padded[0], alone[0], atol=1e-5, rtol=0)


def test_template_changes_the_text(minilm):
    plain = encode_class_names(minilm, ["chair"], template="{}")
    templated = encode_class_names(minilm, ["chair"])
    torch.testing.assert_close(plain, minilm.encode(["chair"]))
    assert not torch.allclose(plain, templated)


def test_minilm_rejects_a_folder_without_a_model(tmp_path):
    with pytest.raises(InputError, match="config.json missing"):
        MiniLMTextEncoder(tmp_path)


def test_clip_needs_local_weights_and_open_clip(tmp_path):
    with pytest.raises(InputError, match="not found"):
        ClipTextEncoder(tmp_path / "absent.bin")
    weights = tmp_path / "clip.bin"
    weights.write_bytes(b"")
    try:
        import open_clip  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match="needs open_clip"):
            ClipTextEncoder(weights)
    else:
        pytest.skip("open_clip is installed; only its absence is tested here")
