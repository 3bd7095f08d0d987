"""CLIP dual encoder (Radford et al. 2021) on Shapes: ViT image tower, Transformer text
tower over the Shapes sentencepiece tokens, symmetric contrastive loss (t2i/clip).

Shapes on a 2-core CPU (docs/clip.md has the measured run):
  t2i data build shapes --builder_config small
  t2i train --config configs/clip.py --workdir runs/clip
  t2i export --workdir runs/clip --out t2i/assets/clip_shapes.npz
  python -m t2i.clip --checkpoint t2i/assets/clip_shapes.npz --split test

32 px images in 4 x 4 patches (an 8 x 8 grid): the same 64 tokens as 64 px in 8 x 8
patches give, at a quarter of the pixels to decode and embed, and a shape 7-11 px
across at 32 px still covers a few patches; 64 px in 4 x 4 patches (256 tokens) made a
step about 9x slower here (docs/clip.md). The scorer (t2i.clip.scorer) resizes Parti's
64 px samples to 32 px.

Arguments (comma separated): `variant=tiny|shapes|vit-b/32` (sizes from
`t2i.clip.model.VARIANTS`; `vit-b/32` is OpenAI's layout at 224 px with a 77-token
context, for reference: no image-text pipeline at that scale is part of t2i yet);
`tiny` shrinks everything for tests (tiny data set, a few steps); `data=<builder
config>` picks another Shapes build.
"""

import ml_collections

from t2i.config import parse_arg
from t2i.train.defaults import default_data_config, default_train_config
from t2i.train.optim import default_optimizer_config


def get_config(arg=None):
    args = parse_arg(arg)
    variant = args.get("variant", "tiny" if args.get("tiny") else "shapes")
    reference = variant == "vit-b/32"

    config = ml_collections.ConfigDict()
    config.task = "clip"
    config.seed = 0
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    config.data = default_data_config(
        batch_size=128,
        builder_config=args.get("data", "small"),
        tokenizer="shapes",
        max_text_length=24,  # Shapes captions are at most 16 pieces with EOS
    )
    config.model = ml_collections.ConfigDict(
        dict(
            variant=variant,
            image_size=224 if reference else 32,
            vocab_size=128,  # the Shapes sentencepiece model's
            text_length=77 if reference else 24,  # the position table's length (>= max_text_length)
            positions="learned",  # or "sincos"
            pool="mean",  # or "token" (a class token, as OpenAI's image tower)
            scan=False,  # each tower's blocks as one nn.scan
            remat="none",  # t2i.nn.transformer.REMAT_POLICIES
            dtype="bfloat16" if reference else "float32",
            param_dtype="float32",
        )
    )
    # AdamW, linear warm-up then cosine decay to zero (CLIP: lr 5e-4, beta2 0.98,
    # eps 1e-6, weight decay 0.2 at batch 32k).
    config.optimizer = default_optimizer_config()
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 100
    config.optimizer.b2 = 0.98
    config.optimizer.eps = 1e-6
    config.optimizer.weight_decay = 1e-4

    config.train = default_train_config()
    config.train.num_steps = 1_000  # 31 minutes on the 2-core CPU, shared with other jobs (docs/clip.md)
    config.train.log_every = 50
    config.train.checkpoint_every = 250
    config.train.eval_every = 250
    config.train.eval_split = "test"
    config.train.eval_examples = 0  # the whole split, in batches of data.batch_size
    config.train.ema_decay = 0.995

    if args.get("tiny"):
        config.data.builder_config = args.get("data", "tiny")
        config.data.batch_size = 8
        config.data.num_threads = 0
        config.train.num_steps = 4
        config.train.log_every = 1
        config.train.checkpoint_every = 2
        config.train.eval_every = 0
        config.train.eval_examples = 16
        config.optimizer.warmup_steps = 2
    return config
