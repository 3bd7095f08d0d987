"""Cross-attention maps and the token-region loss (t2i/imagen/attention_maps.py), and
the caption bookkeeping that feeds it (which words name which object, where they sit
among MiniLM's tokens)."""

import jax.numpy as jnp
import numpy as np
import pytest

from t2i.data import shapes
from t2i.imagen import attention_maps


def test_box_coverage_is_the_exact_pixel_overlap():
    # A box from 0.25 to 0.625 on x and 0.5 to 0.875 on y, on a 4 x 4 grid (pixels of 0.25).
    cover = np.asarray(
        attention_maps.box_coverage(jnp.array([[0.4375]]), jnp.array([[0.6875]]), jnp.array([[0.1875]]), 4)
    )
    grid = cover.reshape(4, 4)  # [y, x]
    expected = np.zeros((4, 4))
    expected[2, 1], expected[2, 2] = 1.0, 0.5  # row y in [0.5, 0.75): x pixel 1 whole, pixel 2 half
    expected[3, 1], expected[3, 2] = 0.5, 0.25  # row y in [0.75, 1): half of the row
    np.testing.assert_allclose(grid, expected, atol=1e-6)
    assert cover.sum() == pytest.approx((2 * 0.1875) ** 2 * 16)  # area in pixels


def _maps(side, length, hot):
    """[1, side*side, length] maps: token t puts its attention uniformly on the pixels `hot[t]`
    (a list of flat indices) or, if absent, uniformly everywhere."""
    weights = np.ones((1, side * side, length), np.float32)
    for token, pixels in hot.items():
        weights[0, :, token] = 0.0
        weights[0, pixels, token] = 1.0
    return [jnp.asarray(weights)]


def test_token_region_loss_is_the_squared_share_outside_the_box():
    side = 4
    # One object covering exactly the top-left 2 x 2 pixels (x, y in [0, 0.5)).
    box = dict(cx=jnp.array([[0.25, 0, 0]]), cy=jnp.array([[0.25, 0, 0]]), r=jnp.array([[0.25, 0, 0]]))
    inside = [0, 1, 4, 5]
    tokens = jnp.array([[[2, 3], [-1, -1], [-1, -1]]])
    valid = jnp.array([True])
    # Both words attend only inside the box: nothing outside.
    perfect = attention_maps.token_region_loss(_maps(side, 6, {2: inside, 3: inside}), tokens, **box, valid=valid)
    assert float(perfect) == pytest.approx(0.0, abs=1e-6)
    # Word 2 inside, word 3 spread evenly: share inside is 4/16, so (1 - 1/4)^2 for it, 0 for the other.
    half = attention_maps.token_region_loss(_maps(side, 6, {2: inside}), tokens, **box, valid=valid)
    assert float(half) == pytest.approx(0.5 * 0.75**2, rel=1e-5)
    # A dropped prompt (classifier-free guidance) contributes nothing.
    dropped = attention_maps.token_region_loss(_maps(side, 6, {}), tokens, **box, valid=jnp.array([False]))
    assert float(dropped) == 0.0


def test_a_word_naming_several_objects_takes_the_union_of_their_boxes():
    side = 4
    # Two objects (top-left and bottom-right 2 x 2 quarters) named by the same two words (a count caption).
    box = dict(cx=jnp.array([[0.25, 0.75, 0]]), cy=jnp.array([[0.25, 0.75, 0]]), r=jnp.array([[0.25, 0.25, 0]]))
    tokens = jnp.array([[[2, 3], [2, 3], [-1, -1]]])
    both_quarters = [0, 1, 4, 5, 10, 11, 14, 15]
    loss = attention_maps.token_region_loss(
        _maps(side, 6, {2: both_quarters, 3: both_quarters}), tokens, **box, valid=jnp.array([True])
    )
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    one_quarter = attention_maps.token_region_loss(
        _maps(side, 6, {2: [0, 1, 4, 5], 3: [0, 1, 4, 5]}), tokens, **box, valid=jnp.array([True])
    )
    assert float(one_quarter) == pytest.approx(0.0, abs=1e-6)  # inside the union still counts


@pytest.mark.parametrize(
    "caption, kind, identities, expected",
    [
        ("a photo of a large red circle in the top left", "single", [("red", "circle")], [(5, 6)]),
        (
            "a yellow square below a yellow circle",
            "pair",
            [("yellow", "square"), ("yellow", "circle")],
            [(1, 2), (5, 6)],
        ),
        (
            "a red circle to the left of a blue circle",
            "pair",
            [("red", "circle"), ("blue", "circle")],
            [(1, 2), (8, 9)],
        ),
        ("three green triangles", "count", [("green", "triangle")] * 3, [(1, 2)] * 3),
    ],
)
def test_object_words_follow_the_caption_grammar(caption, kind, identities, expected):
    assert shapes.object_word_indices(caption, kind, identities) == expected


def test_object_words_reject_a_caption_that_does_not_name_the_object():
    with pytest.raises(ValueError, match="does not name object 1"):
        shapes.object_word_indices("a red circle above a blue square", "pair", [("red", "circle"), ("green", "square")])


def test_word_starts_point_at_each_words_first_piece():
    from t2i.text.minilm import MiniLMEncoder

    tokenizer = MiniLMEncoder.from_package(max_length=24).tokenizer
    caption = "a drawing of an orange triangle below a purple circle"
    ids = [tokenizer.cls_id] + tokenizer.tokenize(caption)
    starts = tokenizer.word_starts(caption)
    assert len(starts) == len(caption.split())
    for word, start in zip(caption.split(), starts):
        assert ids[start] == tokenizer.tokenize(word)[0], word
    # A word of several pieces shifts every later word.
    shifted = tokenizer.word_starts("a xylophonist circle")
    assert shifted[2] == 2 + len(tokenizer.tokenize("xylophonist"))
