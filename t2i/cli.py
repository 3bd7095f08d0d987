"""`t2i train | sample | export | reconstruct | tokenize | convert | eval | data`: one argparse CLI for every family.

Every user mistake (a missing data set, an unknown config key, an empty prompts file,
an unwritable folder) ends as one line `t2i: error: ...` and exit code 2, before any
output is written. A training run stopped by SIGTERM/SIGINT saves a checkpoint and
exits with 128 + the signal number (143, 130), so `t2i train && ...` does not go on
with a half-trained model; rerunning the same command resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile

from t2i.errors import UsageError


def ensure_writable_dir(path: str) -> str:
    """Creates `path` if needed and proves it is writable, or raises a UsageError."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".t2i_write_test"):
            pass
    except OSError as error:
        raise UsageError(f"cannot write to output folder {path}: {error.strerror or error}") from None
    return path


def read_prompts(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise UsageError(f"prompts file not found: {path}")
    with open(path, encoding="utf-8") as f:
        prompts = [line.strip() for line in f if line.strip()]
    if not prompts:
        raise UsageError(f"prompts file is empty: {path}")
    return prompts


# ----------------------------------------------------------------------------- train
def _cmd_train(args, overrides) -> int:
    from t2i import config as config_lib

    config = config_lib.load_config(args.config, overrides)
    from t2i.parallel.distributed import maybe_initialize

    maybe_initialize()  # before any device is touched; a no-op on one host
    from t2i.data import pipeline
    from t2i.train.trainer import TrainingDiverged, train

    pipeline.data_source(config.data, config.data.split)  # a missing data set fails here, in one line
    init_from = config.train.get("init_from")
    if init_from and not os.path.exists(init_from):  # before the workdir is created
        raise UsageError(f"train.init_from not found: {init_from}")
    ensure_writable_dir(args.workdir)
    try:
        result = train(config, args.workdir, progress=not args.no_progress)
    except TrainingDiverged as error:
        print(f"t2i: error: {error}", file=sys.stderr)
        return 1
    if result.stopped_by:
        return 128 + int(getattr(signal, result.stopped_by))
    if result.eval_metrics:
        print(json.dumps({"step": int(result.state.step), **result.eval_metrics}, indent=1, sort_keys=True))
    return 0


# ---------------------------------------------------------------------------- sample
def _cmd_sample(args, overrides) -> int:
    from t2i.sampling import run_pipeline

    sources = [args.prompt is not None, args.prompts is not None, args.split is not None]
    if sum(sources) != 1:
        raise UsageError("give exactly one of --prompt TEXT, --prompts FILE or --split SPLIT")
    if args.prompt is not None:
        prompts = [args.prompt]
    elif args.prompts is not None:
        prompts = read_prompts(args.prompts)
    else:
        prompts = split_prompts(args.split, args.num)
    ensure_writable_dir(os.path.dirname(os.path.abspath(args.out)) or ".")
    from t2i.families import sample_options

    options = dict(size=args.size, checkpoints=args.checkpoint, batch_size=args.batch_size)
    for flag, (_, _, families) in sample_options().items():
        value = getattr(args, flag)
        if value is not None and args.pipeline not in families:
            raise UsageError(
                f"--{flag} does not apply to --pipeline {args.pipeline} (it is read by {', '.join(families)})"
            )
        options[flag] = value
    manifest = run_pipeline(args.pipeline, prompts, args.out, seed=args.seed, options=options)
    print(f"wrote {len(prompts)} images and {manifest}")
    return 0


def split_prompts(split: str, num: int) -> list[str]:
    """The first `num` captions of a Shapes split, from the spec's generator (the same
    captions a build of that split holds; no build needed)."""
    from t2i.data import shapes

    if split not in shapes.SPLIT_SEEDS:
        raise UsageError(f"unknown split '{split}' (known: {', '.join(shapes.SPLIT_SEEDS)})")
    if num < 1:
        raise UsageError(f"--num must be at least 1, got {num}")
    return [shapes.scene_for(split, index).caption for index in range(num)]


# ---------------------------------------------------------------------------- export
def _cmd_export(args, overrides) -> int:
    from t2i.model_files import export_model

    ensure_writable_dir(os.path.dirname(os.path.abspath(args.out)))
    path = export_model(args.workdir, args.out, args.step, args.sampling)
    print(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB)")
    return 0


# ------------------------------------------------------------------ image tokenizer
def _cmd_reconstruct(args, overrides) -> int:
    from t2i.vqgan.image_tokens import load_tokenizer, reconstruct_split

    if args.num < 1:
        raise UsageError(f"--num must be at least 1, got {args.num}")
    ensure_writable_dir(os.path.dirname(os.path.abspath(args.out)))
    stage = load_tokenizer(args.checkpoint)
    metrics = reconstruct_split(
        stage,
        args.split,
        args.num,
        args.out,
        data_dir=args.data_dir,
        builder_config=args.builder_config,
        batch_size=args.batch_size,
    )
    print(json.dumps(metrics, sort_keys=True))
    print(f"wrote {metrics['num_images']} reconstructions, manifest.jsonl and grid.png to {args.out}")
    return 0


def _cmd_tokenize(args, overrides) -> int:
    from t2i.vqgan.image_tokens import load_tokenizer, tokenize_splits

    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    if not splits:
        raise UsageError("--splits names no split")
    stage = load_tokenizer(args.checkpoint)
    out = tokenize_splits(
        stage,
        splits,
        args.name,
        data_dir=args.data_dir,
        builder_config=args.builder_config,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
    )
    print(f"wrote token grids of {', '.join(splits)} to {out}")
    return 0


def _cmd_convert(args, overrides) -> int:
    from t2i.vqgan.perceptual import convert_files

    ensure_writable_dir(os.path.dirname(os.path.abspath(args.out)))
    path = convert_files(args.weights, args.out, args.lpips)
    print(f"wrote {path}; train with --config.loss.perceptual_network={path}")
    return 0


# ------------------------------------------------------------------------------ eval
def _cmd_eval(args, overrides) -> int:
    from t2i.evaluation import shapes_eval

    report = shapes_eval.evaluate_manifest(args.manifest)
    print(shapes_eval.format_table(report))
    payload = shapes_eval.report_to_json(report)
    print(json.dumps(payload, sort_keys=True))
    if args.json:
        ensure_writable_dir(os.path.dirname(os.path.abspath(args.json)))
        from t2i.io import atomic_file

        with atomic_file(args.json) as tmp:
            with open(tmp, "w") as f:
                json.dump(payload, f, indent=1, sort_keys=True)
    return 0


# ------------------------------------------------------------------------------ data
def _cmd_data_build(args, overrides) -> int:
    from t2i.data import shapes_tfds

    name = args.builder_config
    sizes = dict(train=args.train_size, validation=args.validation_size, test=args.test_size, heldout=args.heldout_size)
    if any(v is not None for v in sizes.values()) or args.resolutions:
        base_sizes, base_res = shapes_tfds.PRESETS.get(name, shapes_tfds.PRESETS["default"])
        sizes = {k: (v if v is not None else base_sizes[k]) for k, v in sizes.items()}
        resolutions = tuple(int(r) for r in args.resolutions.split(",")) if args.resolutions else base_res
        name = shapes_tfds.custom_name(sizes, resolutions)
    shapes_tfds.config_from_name(name)  # validate before touching the disk
    ensure_writable_dir(args.data_dir)
    built = shapes_tfds.build(name, args.data_dir)
    print(f"shapes/{name} ready in {built.data_path}")
    print(f"train with: --config.data.builder_config={name} --config.data.data_dir={args.data_dir}")
    return 0


def _cmd_data_preview(args, overrides) -> int:
    from t2i.data.preview import write_preview

    ensure_writable_dir(os.path.dirname(os.path.abspath(args.out)) or ".")
    manifest = write_preview(args.split, args.num, args.size, args.out)
    print(f"wrote {args.num} examples and {manifest}")
    return 0


def _cmd_data_embed(args, overrides) -> int:
    import ml_collections

    from t2i.data import pipeline
    from t2i.data.shapes_tfds import SPLITS
    from t2i.text.embeddings import make_encoder, table_dir, write_table

    data = ml_collections.ConfigDict(dict(builder_config=args.builder_config, data_dir=args.data_dir))
    captions = []
    for split in SPLITS:
        source = pipeline.data_source(data, split)  # one-line error if the build is missing
        captions.extend(pipeline.to_arrays(source[i])["caption"] for i in range(len(source)))
    out = table_dir(pipeline.build_dir(data), args.encoder, args.max_length)
    ensure_writable_dir(os.path.dirname(out))
    count = write_table(captions, make_encoder(args.encoder, args.max_length), out)
    print(f"encoded {count} distinct captions of {len(captions)} examples into {out}")
    print(f"train with: --config.data.text_embeddings={args.encoder} --config.data.max_text_length={args.max_length}")
    return 0


def _cmd_data_tokenizer(args, overrides) -> int:
    from t2i.text.tokenizer import train_sentencepiece

    ensure_writable_dir(os.path.dirname(os.path.abspath(args.out)) or ".")
    captions = args.captions
    if captions is None:  # Shapes captions of the train split
        from t2i.data import shapes

        fd, captions = tempfile.mkstemp(suffix=".txt")
        with os.fdopen(fd, "w") as f:
            for i in range(args.num_captions):
                f.write(shapes.scene_for("train", i).caption + "\n")
    path = train_sentencepiece(captions, args.out, vocab_size=args.vocab_size, model_type=args.model_type)
    print(f"wrote {path}")
    return 0


# ------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t2i", description=__doc__.split("\n\n")[0])
    parser.add_argument("--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser(
        "train",
        help="train a model from a config",
        description="Train from a config; resumes from --workdir if it holds checkpoints. "
        "Override any config key with --config.key=value.",
    )
    p.add_argument("--config", required=True, help="configs/x.py or configs/x.py:arg")
    p.add_argument("--workdir", required=True, help="checkpoints, TensorBoard logs and sample grids go here")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_train)

    p = commands.add_parser(
        "sample",
        help="generate images for prompts",
        description="Generate one image per prompt; writes PNGs and manifest.jsonl.",
    )
    p.add_argument(
        "--pipeline",
        default="oracle",
        help="imagen (the cascade: --checkpoint stages, base first), parti (--checkpoint: one model; "
        "--num_candidates re-ranks), or oracle (renders a scene the prompt asks for); without --checkpoint "
        "the committed Shapes reference",
    )
    p.add_argument("--prompt", help="one prompt")
    p.add_argument("--prompts", help="a text file with one prompt per line")
    p.add_argument("--split", help="the captions of a Shapes split (train|validation|test|heldout)")
    p.add_argument("--num", type=int, default=100, help="how many captions of --split (from its first)")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64, help="image side in pixels (oracle)")
    p.add_argument(
        "--checkpoint",
        action="append",
        help="a training workdir or exported .npz (imagen: one per stage, base first; "
        "default: the committed reference)",
    )
    p.add_argument("--batch_size", type=int, default=16)
    from t2i.families import sample_options

    for flag, (_, help_text, families) in sample_options().items():  # each family's own flags
        p.add_argument(f"--{flag}", help=f"[{', '.join(families)}] {help_text}")
    p.set_defaults(handler=_cmd_sample)

    p = commands.add_parser(
        "export",
        help="write a checkpoint's EMA params (float16) and config into one .npz",
        description="Exports a training checkpoint for sampling: EMA params in float16 plus the config, "
        "one file that `t2i sample --checkpoint FILE.npz` loads.",
    )
    p.add_argument("--workdir", required=True, help="the training workdir")
    p.add_argument("--out", required=True, help="the .npz file to write")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    p.add_argument(
        "--sampling",
        action="append",
        metavar="KEY=VALUE",
        help="set a field of the exported model's sampling defaults (its config's sampling block), e.g. "
        "--sampling guidance_weight=3 --sampling num_candidates=8; repeatable",
    )
    p.set_defaults(handler=_cmd_export)

    tokenizer_help = "the tokenizer's training workdir or exported .npz (default: the committed Shapes reference)"
    p = commands.add_parser(
        "reconstruct",
        help="round-trip a split's images through the image tokenizer",
        description="Encodes, quantizes and decodes the first --num images of a Shapes split; writes the "
        "reconstructions as PNGs with manifest.jsonl (for t2i eval shapes), grid.png (original | "
        "reconstruction) and metrics.json (PSNR, codebook usage and perplexity).",
    )
    p.add_argument("--checkpoint", help=tokenizer_help)
    p.add_argument("--split", default="test", help="train | validation | test | heldout")
    p.add_argument("--num", type=int, default=100, help="how many images, from the split's first")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--data_dir", help="where the Shapes build is (default: the tokenizer's config)")
    p.add_argument("--builder_config", help="which Shapes build (default: the tokenizer's config)")
    p.add_argument("--batch_size", type=int, default=64)
    p.set_defaults(handler=_cmd_reconstruct)

    p = commands.add_parser(
        "tokenize",
        help="store a data set's images as token grids beside it (for Parti)",
        description="Writes <build>/image_tokens/<name>/<split>.array_record: per example the token grid, "
        "the caption and the structured scene, in the split's order, plus info.json.",
    )
    p.add_argument("--checkpoint", help=tokenizer_help)
    p.add_argument("--splits", default="train,validation,test,heldout", help="comma-separated splits")
    p.add_argument("--name", default="vit_vqgan", help="folder name under <build>/image_tokens/")
    p.add_argument("--data_dir", help="where the Shapes build is (default: the tokenizer's config)")
    p.add_argument("--builder_config", help="which Shapes build (default: the tokenizer's config)")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--overwrite", action="store_true", help="replace an existing token folder")
    p.set_defaults(handler=_cmd_tokenize)

    p = commands.add_parser(
        "convert",
        help="convert user-supplied VGG16 (+ LPIPS) weights for the tokenizer's perceptual loss",
        description="Reads torchvision's VGG16 state dict (and optionally LPIPS's lin heads) from "
        ".safetensors or .npz and writes the .npz that loss.perceptual_network names.",
    )
    p.add_argument("network", choices=["vgg16"])
    p.add_argument("--weights", required=True, help="VGG16 state dict (.safetensors or .npz)")
    p.add_argument("--lpips", help="LPIPS lin heads (lin<k>.model.1.weight), if not in --weights")
    p.add_argument("--out", required=True, help="the .npz to write")
    p.set_defaults(handler=_cmd_convert)

    p = commands.add_parser("eval", help="score images against their prompts")
    evals = p.add_subparsers(dest="eval_kind", required=True)
    e = evals.add_parser(
        "shapes",
        help="GenEval-style Shapes score of a manifest",
        description="Scores a manifest.jsonl ({prompt, image} lines) or a folder holding one.",
    )
    e.add_argument("manifest", help="manifest.jsonl or a folder with one")
    e.add_argument("--json", help="also write the report as JSON here")
    e.set_defaults(handler=_cmd_eval)

    p = commands.add_parser("data", help="build and inspect data sets")
    data = p.add_subparsers(dest="data_command", required=True)
    d = data.add_parser("build", help="render a data set into TFDS array_record files")
    d.add_argument("name", choices=["shapes"])
    d.add_argument("--builder_config", default="default", help="default | small | tiny (see t2i/data/shapes_tfds.py)")
    d.add_argument("--data_dir", default="data/tfds")
    for split in ("train", "validation", "test", "heldout"):
        d.add_argument(f"--{split}_size", type=int, default=None, help=f"examples in {split} (overrides the preset)")
    d.add_argument("--resolutions", default=None, help="comma-separated sides, e.g. 32,64")
    d.set_defaults(handler=_cmd_data_build)

    d = data.add_parser("preview", help="write examples of a split as PNGs with manifest.jsonl")
    d.add_argument("--split", default="train")
    d.add_argument("--num", type=int, default=16)
    d.add_argument("--size", type=int, default=64)
    d.add_argument("--out", required=True)
    d.set_defaults(handler=_cmd_data_preview)

    d = data.add_parser("embed", help="precompute frozen text-encoder outputs for every caption of a build")
    d.add_argument(
        "--encoder",
        default="minilm",
        help="minilm (whole captions) or minilm_phrases (each relation ends a phrase encoded on its own)",
    )
    d.add_argument("--builder_config", default="small")
    d.add_argument("--data_dir", default="data/tfds")
    d.add_argument("--max_length", type=int, default=24, help="tokens per caption (padded/truncated)")
    d.set_defaults(handler=_cmd_data_embed)

    d = data.add_parser("tokenizer", help="train a sentencepiece model on a caption file")
    d.add_argument("--captions", default=None, help="one caption per line (default: Shapes train captions)")
    d.add_argument("--num_captions", type=int, default=20_000, help="Shapes captions to use without --captions")
    d.add_argument("--out", required=True, help="model prefix, e.g. t2i/assets/shapes_spm")
    d.add_argument("--vocab_size", type=int, default=256)
    d.add_argument("--model_type", default="bpe", choices=["bpe", "unigram"])
    d.set_defaults(handler=_cmd_data_tokenizer)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    takes_overrides = args.handler is _cmd_train  # only `train` reads a config
    overrides = [a for a in rest if a.startswith("--config.")] if takes_overrides else []
    unknown = [a for a in rest if a not in overrides]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s: %(message)s"
    )
    if not args.verbose:
        logging.getLogger("t2i").setLevel(logging.INFO)
        logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        return args.handler(args, overrides)
    except (UsageError, ValueError, FileNotFoundError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"t2i: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
