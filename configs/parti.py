"""Parti (Yu et al. 2022): an encoder-decoder Transformer from caption tokens to ViT-VQGAN
image tokens.

Shapes on a CPU (the default): a Shapes build of the spec's 200,000 training scenes at
64 px only, its captions and the token grids of the committed tokenizer (8x8 tokens of
1,024 codes per 64x64 image); docs/parti.md has the commands and why (the 20,000 of
the small build are too few for 10,000 steps of batch 64):
  t2i data build shapes --train_size 200000 --validation_size 1000 --test_size 5000 \
      --heldout_size 5000 --resolutions 64        # custom_t200000_v1000_e5000_h5000_r64
  t2i tokenize --builder_config custom_t200000_v1000_e5000_h5000_r64
  t2i train --config configs/parti.py --workdir runs/parti
  t2i export --workdir runs/parti --out runs/parti.npz
  t2i sample --pipeline parti --checkpoint runs/parti.npz --split test --num 200 --out out/parti

Paper sizes (`:size=350M|750M|3B|20B`, table 1 of the paper): 128 text tokens, a 32x32
grid of 8,192 codes (a 256x256 ViT-VQGAN), bf16 compute, scanned and rematerialised
layers, Adafactor; the parallelism of the paper: 350M and 750M data parallel, 3B with
4-way in-layer model parallelism (`tensor=4`), 20B (trained with GSPMD pipelines in
the paper, which t2i does not implement) with its weights sharded over `fsdp` and
16-way `tensor`. Their text tokenizer is the user's sentencepiece model
(`--config.data.tokenizer=PATH`; the paper's has 16,000 pieces, which the parameter
counts assume).

Arguments (comma separated): `size=`, `tiny` (tests), `data=` (another Shapes build),
`tokens=` (the token grids' folder name under the build's image_tokens/).
"""

import ml_collections

from t2i.config import parse_arg
from t2i.train.defaults import default_data_config, default_train_config
from t2i.train.optim import default_optimizer_config

PAPER_SIZES = ("350M", "750M", "3B", "20B")

# The Shapes build Parti trains on by default: the spec's 200,000 training scenes
# (`t2i data build shapes --train_size 200000 --validation_size 1000 --resolutions 64`).
SHAPES_BUILD = "custom_t200000_v1000_e5000_h5000_r64"

# Mesh per paper size (data, fsdp, tensor; -1 takes the remaining devices).
PAPER_MESH = {
    "350M": dict(data=-1, fsdp=1, tensor=1),
    "750M": dict(data=-1, fsdp=1, tensor=1),
    "3B": dict(data=-1, fsdp=1, tensor=4),
    "20B": dict(data=1, fsdp=-1, tensor=16),
}


def get_config(arg=None):
    args = parse_arg(arg)
    size = args.get("size", "shapes")
    paper = size in PAPER_SIZES
    if size not in ("shapes", "tiny") + PAPER_SIZES:
        raise ValueError(f"unknown size {size!r}; sizes are shapes, {', '.join(PAPER_SIZES)}")

    config = ml_collections.ConfigDict()
    config.task = "parti"
    config.seed = 0
    config.mesh = ml_collections.ConfigDict(PAPER_MESH[size] if paper else dict(data=-1, fsdp=1, tensor=1))
    config.data = default_data_config(
        batch_size=2048 if paper else 64,
        builder_config=args.get("data", SHAPES_BUILD),
        tokenizer="shapes",
        # Shapes captions are at most 16 pieces with EOS; prompts with words the captions
        # never use (the paraphrase test: "violet" is spelled out in pieces) reach 32.
        max_text_length=128 if paper else 32,
        image_tokens=args.get("tokens", "vit_vqgan"),
    )
    config.model = ml_collections.ConfigDict(
        dict(
            size=size,
            grid=32 if paper else 8,
            num_codes=8192 if paper else 1024,
            tie_embeddings=True,
            # 200,000 scenes are seen about 3 times in 10,000 steps of 64: no dropout
            # needed (the first run, on 20,000 scenes, used 0.1; docs/parti.md).
            dropout_rate=0.0,
            # Scanned layers compile once however deep; rematerialisation trades a second
            # forward pass for activation memory (t2i.nn.transformer.REMAT_POLICIES).
            scan=paper,
            remat="full" if paper else "none",
            dtype="bfloat16" if paper else "float32",
            param_dtype="float32",
            image_tokenizer="",  # "" = the committed Shapes ViT-VQGAN (t2i/assets/vit_vqgan_shapes.npz)
        )
    )
    config.loss = ml_collections.ConfigDict(
        dict(
            cond_drop_prob=0.1,  # captions dropped for classifier-free guidance
            label_smoothing=0.0,
            z_loss=1e-4 if paper else 0.0,
        )
    )
    # What `t2i sample --pipeline parti` uses unless a flag says otherwise.
    # num_candidates > 1: sample that many per prompt and keep the best by the CLIP
    # reranker (the paper's pipeline re-ranks its samples). The Shapes values are the
    # best on 200 validation captions of the reference run (docs/parti.md).
    config.sampling = ml_collections.ConfigDict(
        dict(guidance_weight=1.5, temperature=0.7, top_k=0, top_p=1.0, num_candidates=8)
    )
    # Adafactor (as Parti), global-norm clipping at 1, linear warm-up then cosine.
    # Adafactor scales each update by the parameter's RMS, so its learning rate is a
    # relative step: on Shapes 3e-3 left the loss at 6.87 (ln 1024 = 6.93) after 200
    # steps; 1e-2 (T5's Adafactor rate) brought it to 3.4 by step 500 (2026-12-07).
    config.optimizer = default_optimizer_config()
    config.optimizer.name = "adafactor"
    config.optimizer.learning_rate = 1e-3 if paper else 1e-2
    config.optimizer.warmup_steps = 5_000 if paper else 100
    config.optimizer.end_lr_fraction = 0.025 if paper else 0.05
    config.optimizer.weight_decay = 0.0
    config.optimizer.clip_norm = 1.0

    config.train = default_train_config()
    config.train.num_steps = 450_000 if paper else 10_000
    config.train.log_every = 50
    config.train.checkpoint_every = 500
    config.train.eval_every = 500
    config.train.eval_split = "validation"
    config.train.eval_examples = 0
    config.train.ema_decay = 0.999
    config.train.sample_every = 0  # sampling costs a minute of CPU; score exports afterwards
    config.train.num_samples = 16
    config.train.sample_scale = 2

    if args.get("tiny") or size == "tiny":
        config.model.size = "tiny"
        config.data.builder_config = args.get("data", "tiny")
        config.data.batch_size = 8
        config.data.num_threads = 0
        config.data.max_text_length = 24
        config.model.grid = 4
        config.model.num_codes = 16
        config.model.dropout_rate = 0.0
        config.sampling.num_candidates = 1  # tests re-rank with stand-in scorers of their own
        config.train.num_steps = 4
        config.train.log_every = 1
        config.train.checkpoint_every = 2
        config.train.eval_every = 0
        config.train.eval_examples = 16
        config.optimizer.warmup_steps = 1
    return config
