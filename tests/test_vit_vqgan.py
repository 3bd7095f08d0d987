"""The ViT-VQGAN model (issue 4): patch layout, the methods agree with each other,
every weight is named, and the shared Transformer block."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2i.nn import patches, transformer
from t2i.nn.attention import key_mask
from t2i.parallel.partitioning import strip_boxes
from t2i.vqgan import vit_vqgan


def tiny(**kw):
    args = dict(image_size=16, patch_size=4, encoder="tiny", decoder="tiny", num_codes=16, code_dim=4)
    args.update(kw)
    return vit_vqgan.ViTVQGAN(**args)


def test_patchify_round_trip_and_layout():
    images = jnp.arange(2 * 8 * 8 * 3, dtype=jnp.float32).reshape(2, 8, 8, 3)
    tokens = patches.patchify(images, 4)
    assert tokens.shape == (2, 4, 48)
    # The second patch is the top-right 4x4 block, row-major inside.
    np.testing.assert_array_equal(tokens[0, 1].reshape(4, 4, 3), images[0, :4, 4:])
    np.testing.assert_array_equal(patches.unpatchify(tokens, 4, 2), images)
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        patches.patchify(jnp.zeros((1, 10, 10, 3)), 4)


def test_forward_tokenize_and_decode_codes_agree():
    model = tiny(output_channels=6)
    images = jax.random.uniform(jax.random.key(0), (3, 16, 16, 3), minval=-1, maxval=1)
    params = strip_boxes(model.init(jax.random.key(1), images))
    out, aux = model.apply(params, images)
    assert out.shape == (3, 16, 16, 6) and out.dtype == jnp.float32
    codes = model.apply(params, images, method=model.tokenize)
    assert codes.shape == (3, 4, 4) and codes.dtype == jnp.int32
    np.testing.assert_array_equal(codes, aux["indices"])
    np.testing.assert_allclose(model.apply(params, codes, method=model.decode_codes), out, atol=1e-5)


def test_every_weight_is_named():
    model = tiny(decoder="shapes")
    boxed = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    unnamed = [x for x in leaves if not isinstance(x, nn.Partitioned)]
    assert not unnamed
    specs = nn.get_partition_spec(boxed)["params"]
    assert tuple(specs["quantizer"]["up"]["Dense_0"]["kernel"]) == ("vq_code_dim", "embed")
    assert tuple(specs["decoder_head"]["Dense_1"]["Dense_0"]["kernel"]) == ("mlp", "patch_pixels")


def test_encoder_and_decoder_sizes_are_independent():
    model = tiny(decoder="shapes")
    params = strip_boxes(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3))))["params"]
    assert params["encoder_head"]["Dense_1"]["Dense_0"]["kernel"].shape == (64, 32)
    assert params["quantizer"]["up"]["Dense_0"]["kernel"].shape == (4, 192)
    assert len([k for k in params["decoder_stack"] if k.startswith("block_")]) == 4


def test_unknown_size_is_named():
    with pytest.raises(ValueError, match="unknown ViT size 'huge'"):
        tiny(encoder="huge").init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))


def test_sincos_positions_are_distinct_and_bounded():
    table = transformer.sincos_2d(4, 8)
    assert table.shape == (16, 8)
    assert np.abs(table).max() <= 1.0
    assert len({tuple(np.round(row, 6)) for row in table}) == 16
    # Rows share the row half, columns the column half.
    np.testing.assert_array_equal(table[0, :4], table[1, :4])
    np.testing.assert_array_equal(table[0, 4:], table[4, 4:])


def test_attention_mask_hides_keys():
    attention = transformer.MultiHeadAttention(heads=2, head_dim=4, cross=True)
    x = jax.random.normal(jax.random.key(0), (1, 3, 8))
    params = attention.init(jax.random.key(1), x, x)
    mask = key_mask(jnp.array([[True, True, False]]))
    changed = x.at[:, 2].set(100.0)
    np.testing.assert_allclose(
        attention.apply(params, x, x, mask), attention.apply(params, x, changed, mask), rtol=1e-5, atol=1e-5
    )
    assert not np.allclose(attention.apply(params, x, x), attention.apply(params, x, changed))
