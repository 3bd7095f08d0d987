"""The `t2i sample --pipeline imagen` flags (no heavy imports: the CLI reads this to build
its parser). `t2i.imagen.cascade.stage_options` parses their values."""

_PER_STAGE = " (comma-separated: one value per stage, base first, or one for all)"
# The flags of `t2i sample` that this pipeline reads (the CLI adds them from the registry).
OPTIONS = {
    "sampler": (str, "ddpm | ddim | dpmpp_2m" + _PER_STAGE),
    "steps": (str, "sampling steps" + _PER_STAGE),
    "guidance": (str, "classifier-free guidance weight" + _PER_STAGE),
    "thresholding": (str, "none | static | dynamic" + _PER_STAGE),
    "percentile": (str, "dynamic thresholding percentile" + _PER_STAGE),
    "aug_level": (str, "noise-conditioning augmentation level of super-resolution stages" + _PER_STAGE),
    "guidance_interval": (
        str,
        "guide only at log-SNR in LO:HI, either side open (write --guidance_interval=-6:2,: so the leading "
        "minus is not read as a flag)" + _PER_STAGE,
    ),
}


def _interval(text: str) -> list:
    """'LO:HI' (either side open) as the config stores it: [lo or None, hi or None]."""
    from t2i.diffusion.samplers import parse_interval

    return list(parse_interval(text))


# The fields of a stage's `config.sampling` block (its defaults), with the parser of
# each: `t2i export --sampling KEY=VALUE` sets them in the exported file.
SAMPLING = {
    "sampler": str,
    "steps": int,
    "guidance_weight": float,
    "thresholding": str,
    "percentile": float,
    "noise_aug_level": float,
    "guidance_interval": _interval,
}
