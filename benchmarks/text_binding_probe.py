"""Does the frozen MiniLM say which shape goes with which colour? A linear probe.

The Imagen Shapes base draws novel colour-shape pairs right when alone ("a purple
triangle") but swaps the shapes of a pair ("a purple triangle below a red circle" comes
out as a red triangle and a purple circle, docs/results.md). Either the text encoder's
output does not carry the binding, or the U-Net does not use it. This probe reads,
per encoder layer (0 = the word-piece embeddings, 6 = the output Imagen attends to),
the hidden state at each object's colour word in pair captions and fits a linear
(ridge) classifier of that object's shape on training captions; it then scores
heldout pair captions, separately for objects whose colour-shape pair was seen in
training and for the novel ones (purple triangle, yellow circle, green square). High
accuracy on novel objects at the last layer means the binding is in the embeddings
the U-Net reads.

  python benchmarks/text_binding_probe.py --train 2000 --heldout 600
"""

from __future__ import annotations

import argparse

import numpy as np

SHAPES = ("circle", "square", "triangle")


def _colour_states(encoder, prompts, heldout_pairs):
    """Per layer [N, 384] states at each object's colour word, the object's shape index,
    and whether its colour-shape pair is held out."""
    from t2i.evaluation.shapes_eval import parse_caption

    ids, attention, _ = encoder.tokenize(prompts)
    _, state = encoder.model.apply(encoder.params, ids, attention, capture_intermediates=True)
    captured = state["intermediates"]
    layers = [captured["embeddings"]["__call__"][0]]
    layers += [captured[f"layer_{i}"]["__call__"][0] for i in range(encoder.config.num_hidden_layers)]
    rows, positions, shapes, novel = [], [], [], []
    for row, prompt in enumerate(prompts):
        request = parse_caption(prompt)
        seen = {}
        for colour, shape, _ in request.objects:
            piece = encoder.tokenizer.tokenize(colour)[0]
            where = [i for i, token in enumerate(ids[row]) if token == piece]
            # the first object's colour is the first occurrence, the second's the next one
            index = where[seen.get(colour, 0)]
            seen[colour] = seen.get(colour, 0) + 1
            rows.append(row)
            positions.append(index)
            shapes.append(SHAPES.index(shape))
            novel.append((colour, shape) in heldout_pairs)
    rows, positions = np.asarray(rows), np.asarray(positions)
    features = [np.asarray(layer)[rows, positions] for layer in layers]
    return features, np.asarray(shapes), np.asarray(novel)


def _ridge(features, labels, strength):
    mean, scale = features.mean(0), features.std(0) + 1e-6

    def design(x):
        return np.c_[(x - mean) / scale, np.ones(len(x))]

    a = design(features)
    weights = np.linalg.solve(a.T @ a + strength * np.eye(a.shape[1]), a.T @ np.eye(len(SHAPES))[labels])
    return lambda x, y: float((np.argmax(design(x) @ weights, axis=1) == y).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=2000, help="training pair captions to fit on")
    parser.add_argument("--heldout", type=int, default=600, help="heldout pair captions to score")
    parser.add_argument("--ridge", type=float, default=10.0)
    args = parser.parse_args()

    from t2i.cli import split_prompts
    from t2i.data import shapes
    from t2i.evaluation.shapes_eval import parse_caption
    from t2i.text.minilm import MiniLMEncoder

    def pairs(split, count):  # pair captions are about 40% of a split
        prompts = [p for p in split_prompts(split, 4 * count) if parse_caption(p).kind == "pair"]
        if len(prompts) < count:
            raise SystemExit(f"only {len(prompts)} pair captions among the first {4 * count} of {split}")
        return prompts[:count]

    heldout_pairs = set(shapes.HELDOUT_PAIRS)
    encoder = MiniLMEncoder.from_package(max_length=32)
    train_x, train_y, _ = _colour_states(encoder, pairs("train", args.train), heldout_pairs)
    test_x, test_y, novel = _colour_states(encoder, pairs("heldout", args.heldout), heldout_pairs)
    print(
        f"{len(train_y)} training objects; heldout: {int((~novel).sum())} seen-pair, "
        f"{int(novel.sum())} novel-pair objects"
    )
    print("| layer | train | heldout, seen-pair objects | heldout, novel-pair objects |")
    print("|---|---|---|---|")
    for layer, (x_fit, x_test) in enumerate(zip(train_x, test_x)):
        accuracy = _ridge(x_fit, train_y, args.ridge)
        print(
            f"| {layer} | {accuracy(x_fit, train_y):.1%} | {accuracy(x_test[~novel], test_y[~novel]):.1%} "
            f"| {accuracy(x_test[novel], test_y[novel]):.1%} |"
        )


if __name__ == "__main__":
    main()
