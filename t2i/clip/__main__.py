"""`python -m t2i.clip --checkpoint MODEL [--split test] [--num N]`: image -> text and
text -> image top-1 / top-5 retrieval of a trained CLIP over the first N examples of a
Shapes split (all of it by default), printed as JSON (`--json FILE` writes it too).
The criteria (`description`, `caption`, `index`) are defined in `t2i.clip.task`."""

from __future__ import annotations

import argparse
import json
import sys

from t2i.errors import UsageError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m t2i.clip", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="t2i/assets/clip_shapes.npz", help="a CLIP workdir or export")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step of a workdir (default: newest)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--num", type=int, default=None, help="first N examples of the split (default: all)")
    parser.add_argument("--data_dir", default=None, help="default: the model's config")
    parser.add_argument("--builder_config", default=None, help="default: the model's config")
    parser.add_argument("--batch_size", type=int, default=250)
    parser.add_argument("--json", default=None, help="also write the metrics here")
    args = parser.parse_args(argv)
    try:
        import ml_collections

        from t2i.clip.task import split_retrieval
        from t2i.model_files import load_model

        model = load_model(args.checkpoint, args.step, family="clip")
        data = ml_collections.ConfigDict(model.config.data.to_dict())
        if args.data_dir:
            data.data_dir = args.data_dir
        if args.builder_config:
            data.builder_config = args.builder_config
        if args.num is not None and args.num < 1:
            raise UsageError(f"--num must be at least 1, got {args.num}")
        metrics = split_retrieval(model.task, model.params, data, args.split, args.num, args.batch_size)
    except UsageError as error:
        print(f"python -m t2i.clip: error: {error}", file=sys.stderr)
        return 2
    payload = dict(checkpoint=args.checkpoint, step=model.step, split=args.split, **metrics)
    print(json.dumps(payload, indent=1, sort_keys=True))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
