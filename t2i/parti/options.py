"""The `t2i sample --pipeline parti` flags (no heavy imports: the CLI reads this to build
its parser). `t2i.parti.pipeline` parses their values."""

# The flags of `t2i sample` that this pipeline reads (name -> (type, help)); the CLI
# adds them to its parser from the family registry.
OPTIONS = {
    "guidance": (float, "classifier-free guidance weight on the logits (default: the model's)"),
    "temperature": (float, "softmax temperature, 0 = greedy (default: the model's)"),
    "top_k": (int, "keep the k most likely tokens, 0 = all (default: the model's)"),
    "top_p": (float, "nucleus sampling mass in (0, 1] (default: the model's)"),
    "num_candidates": (int, "samples per prompt, the reranker keeps the best (default: the model's, else 1)"),
    "reranker": (str, "CLIP workdir or export that re-ranks candidates (default: the committed Shapes CLIP)"),
    "image_tokenizer": (str, "ViT-VQGAN workdir or export that decodes the tokens (default: the model's)"),
}


# The fields of a Parti model's `config.sampling` block (its defaults), with the parser
# of each: `t2i export --sampling KEY=VALUE` sets them in the exported file.
def _checked(kind, ok, rule: str):
    """A parser that also refuses values outside their range (before the file is written)."""

    def parse(text: str):
        value = kind(text)
        if not ok(value):
            raise ValueError(f"must be {rule}, got {text}")
        return value

    return parse


SAMPLING = {
    "guidance_weight": _checked(float, lambda v: v >= 0, "at least 0"),
    "temperature": _checked(float, lambda v: v >= 0, "at least 0 (0: greedy)"),
    "top_k": _checked(int, lambda v: v >= 0, "at least 0 (0: off)"),
    "top_p": _checked(float, lambda v: 0 < v <= 1, "in (0, 1]"),
    "num_candidates": _checked(int, lambda v: v >= 1, "at least 1"),
}
