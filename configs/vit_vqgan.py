"""ViT-VQGAN image tokenizer (Yu et al. 2022), Parti's image tokenizer.

Shapes on a CPU (the default; docs/tokenizer.md has the measured run):
  t2i data build shapes --builder_config small
  t2i train --config configs/vit_vqgan.py --workdir runs/vit_vqgan

64x64 images in 8x8 patches: an 8x8 grid of tokens, 1,024 codes of dimension 32.

Paper scale (256x256, patch 8, a 32x32 grid, 8,192 codes of dimension 32):
  t2i train --config configs/vit_vqgan.py:size=small --workdir gs://.../vit_vqgan_small

Shapes is trained in four stages (`make tokenizer`): the first run above, then
  t2i train --config configs/vit_vqgan.py:stage=2 --workdir runs/vit_vqgan_stage2
  t2i train --config configs/vit_vqgan.py:stage=3 --workdir runs/vit_vqgan_stage3
  t2i train --config configs/vit_vqgan.py:stage=4 --workdir runs/vit_vqgan_stage4
each warm-started from the stage before (`from=WORKDIR` names another source run or an
export): stage 2 from stage 1's step 3,000, before its discriminator joined; stage 4
from the stage-3 export `runs/vit_vqgan_stage3/tokenizer.npz` (the tokenizer committed
before stage 4, docs/tokenizer.md) with half its training images recoloured
(`data.recolor_prob`), for the colour-shape pairs the train split holds out; see
LATER_STAGES.

Arguments (comma separated): `size=shapes|small|base|large|small-large` (encoder and
decoder sizes from `t2i.vqgan.vit_vqgan.VARIANTS`; `small-large` is Parti's pairing,
a Small encoder with a Large decoder); `tiny` shrinks everything for tests; `data=` picks
another Shapes build. The paper-scale configs fix the architecture (parameter counts
are tested) and the training recipe; an image-text pipeline at that scale is not part
of t2i yet.
"""

import ml_collections

from t2i.config import parse_arg
from t2i.train.defaults import default_data_config, default_train_config
from t2i.train.optim import default_optimizer_config

# Encoder and decoder sizes per `size=` argument.
SIZES = {
    "shapes": ("shapes", "shapes"),
    "small": ("small", "small"),
    "base": ("base", "base"),
    "large": ("large", "large"),
    "small-large": ("small", "large"),
}

# Shapes stages after the first: (default source workdir or export, its step, steps,
# peak learning rate, warm-up steps, recolour probability). Stage 2 starts before stage
# 1's discriminator joined; stage 3 goes on from stage 2, whose round trip was still
# rising when its schedule ended; stage 4 goes on from the stage-3 export (float16, as
# committed before stage 4) with half the training images recoloured, so that the codes
# learn every colour on every shape.
LATER_STAGES = {
    "2": ("runs/vit_vqgan", 3_000, 5_000, 2e-4, 100, 0.0),
    "3": ("runs/vit_vqgan_stage2", 5_000, 1_500, 1e-4, 50, 0.0),
    "4": ("runs/vit_vqgan_stage3/tokenizer.npz", 0, 7_000, 1e-4, 100, 0.5),
}


def get_config(arg=None):
    args = parse_arg(arg)
    size = args.get("size", "shapes")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; sizes are {sorted(SIZES)}")
    paper = size != "shapes"
    encoder, decoder = SIZES[size]

    config = ml_collections.ConfigDict()
    config.task = "vit_vqgan"
    config.seed = 0
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    config.data = default_data_config(
        batch_size=32,
        builder_config=args.get("data", "small"),
        # Share of training images re-rendered in random palette colours
        # (t2i.data.augment.recolor); the tokenizer never sees captions.
        recolor_prob=0.0,
    )
    config.model = ml_collections.ConfigDict(
        dict(
            image_size=256 if paper else 64,
            patch_size=8,
            encoder=encoder,
            decoder=decoder,
            num_codes=8192 if paper else 1024,
            code_dim=32,
            beta=0.25,  # commitment loss weight
            codebook_learning="gradient",  # or "ema"
            # StyleGAN2-style residual blocks, each halving the resolution.
            discriminator_channels=(128, 256, 512, 512, 512, 512) if paper else (16, 32, 64, 128),
            dtype="bfloat16" if paper else "float32",
            param_dtype="float32",
        )
    )
    # The paper's weights (section 3.1/4.1): l2 1.0, logit-Laplace 0 (in its best
    # setting), perceptual 0.1, adversarial 0.1. On Shapes there is no pretrained VGG to
    # measure perception with, so the perceptual weight is 0 there.
    config.loss = ml_collections.ConfigDict(
        dict(
            l2_weight=1.0,
            logit_laplace_weight=0.0,
            perceptual_weight=0.1 if paper else 0.0,
            perceptual_network="",  # a converted VGG16/LPIPS .npz (t2i.vqgan.perceptual)
            adversarial_weight=0.1,
            adversarial_start=50_000 if paper else 3_000,  # warm-up: reconstruction first
            r1_gamma=10.0 if paper else 1.0,
            r1_every=16,  # lazy R1: every 16 steps, weighted by 16
        )
    )
    config.codebook = ml_collections.ConfigDict(
        dict(
            window=100,  # steps over which usage and perplexity are measured
            ema_decay=0.99,  # of the EMA statistics (and of the codebook in "ema" mode)
            restart_dead=True,  # codes unused over a full window restart on encodings
        )
    )
    # Adam with beta2 0.99, linear warm-up then cosine decay (the paper: lr 1e-4, batch
    # 256, 500k steps, warm-up 5k). The discriminator is its own optimizer group.
    config.optimizer = default_optimizer_config()
    config.optimizer.learning_rate = 1e-4 if paper else 4e-4
    config.optimizer.warmup_steps = 5_000 if paper else 200
    config.optimizer.end_lr_fraction = 0.1
    config.optimizer.b2 = 0.99
    config.optimizer.groups = ml_collections.ConfigDict({"discriminator": dict(weight_decay=0.0)})

    config.train = default_train_config()
    config.train.num_steps = 500_000 if paper else 4_000
    config.train.log_every = 50
    config.train.checkpoint_every = 500
    config.train.eval_every = 1_000
    config.train.eval_split = "test"
    config.train.eval_examples = 500
    config.train.ema_decay = 0.999
    config.train.sample_every = 1_000
    config.train.num_samples = 8
    config.train.sample_scale = 2
    if paper:
        config.data.batch_size = 256
        config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

    if args.get("tiny"):
        config.data.builder_config = args.get("data", "tiny")
        config.data.batch_size = 8
        config.data.num_threads = 0
        config.model.image_size = 32
        config.model.encoder = config.model.decoder = "tiny"
        config.model.num_codes = 16
        config.model.code_dim = 8
        config.model.discriminator_channels = (8, 16)
        config.loss.adversarial_start = 2
        config.loss.r1_every = 2
        config.codebook.window = 2
        config.train.num_steps = 6
        config.train.log_every = 1
        config.train.checkpoint_every = 3
        config.train.eval_every = 0
        config.train.eval_examples = 16
        config.train.sample_every = 0
        config.train.num_samples = 4
        config.optimizer.warmup_steps = 2
    stage = args.get("stage", "1")
    stages = ("1",) + tuple(LATER_STAGES)
    if stage not in stages:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(stages)}")
    if stage in LATER_STAGES:
        # The committed Shapes tokenizer's later stages (module docstring): each starts
        # from the EMA weights of the stage before and trains reconstruction and codebook
        # on a fresh schedule. The discriminator is carried along, never switched on: on
        # Shapes stage 1's adversarial phase cost 11 points of round-trip score
        # (docs/results.md). With `tiny` (tests): 3 steps from the source's newest step.
        source, from_step, steps, lr, warmup, recolor_prob = LATER_STAGES[stage]
        config.train.init_from = args.get("from", source)
        config.train.init_from_step = 0 if args.get("tiny") else from_step
        config.train.num_steps = 3 if args.get("tiny") else steps
        config.optimizer.learning_rate = lr
        config.optimizer.warmup_steps = warmup
        config.loss.adversarial_start = config.train.num_steps
        config.data.recolor_prob = recolor_prob
    return config
