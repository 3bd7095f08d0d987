"""Shapes attribute classifier: colour, shape, size and position of each object, and count.

Build the data, then train (about 3 minutes on a 2-core CPU):
  t2i data build shapes --builder_config small
  t2i train --config configs/shapes_classifier.py --workdir runs/classifier

Arguments (comma separated): `tiny` shrinks everything for tests (tiny data set,
a few steps); `data=<builder config>` picks another Shapes build.
"""

import ml_collections

from t2i.config import parse_arg
from t2i.train.defaults import default_data_config, default_train_config
from t2i.train.optim import default_optimizer_config


def get_config(arg=None):
    args = parse_arg(arg)
    config = ml_collections.ConfigDict()
    config.task = "shapes_classifier"
    config.seed = 0
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

    config.data = default_data_config(batch_size=64, builder_config=args.get("data", "small"))
    config.model = ml_collections.ConfigDict(
        dict(
            resolution=32,
            widths=(32, 64),
            blocks_per_stage=2,
            stem_stride=2,
            dtype="float32",
            param_dtype="float32",
            recolor_probability=0.5,
        )
    )
    config.optimizer = default_optimizer_config()
    config.optimizer.learning_rate = 2e-3
    config.optimizer.warmup_steps = 100

    config.train = default_train_config()
    config.train.num_steps = 600  # 100% on test from step 250 on (docs/results.md)
    config.train.log_every = 50
    config.train.checkpoint_every = 200
    config.train.eval_every = 200
    config.train.eval_split = "test"
    config.train.ema_decay = 0.99
    config.train.sample_every = 200

    if args.get("tiny"):
        config.data.builder_config = args.get("data", "tiny")
        config.data.batch_size = 8
        config.data.num_threads = 0
        config.model.widths = (8, 16)
        config.model.blocks_per_stage = 1
        config.train.num_steps = 6
        config.train.log_every = 1
        config.train.checkpoint_every = 3
        config.train.eval_every = 0
        config.train.eval_examples = 16
        config.train.sample_every = 0
        config.train.num_samples = 4
        config.optimizer.warmup_steps = 2
    return config
