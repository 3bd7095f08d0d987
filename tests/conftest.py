"""Test setup: 8 fake CPU devices (before JAX starts), and one tiny Shapes build."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
# A compilation cache for this run only: many tests compile the same tiny train step
# (a run and its resume, the same tiny model in several tests), and a hit skips XLA's
# compile.
# `T2I_TEST_COMPILE_CACHE=0` turns it off (e.g. to time compilation itself).
if os.environ.get("T2I_TEST_COMPILE_CACHE", "1") != "0":
    import atexit
    import shutil
    import tempfile

    _cache_dir = tempfile.mkdtemp(prefix="t2i-test-xla-cache-")
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
    jax.config.update("jax_compilation_cache_dir", _cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """The `tiny` Shapes builder config (512/128/128/128 at 16, 32, 64 px), built once."""
    from t2i.data import shapes_tfds

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    shapes_tfds.build("tiny", data_dir)
    return data_dir


@pytest.fixture
def tiny_config(tiny_data_dir):
    """The classifier's tiny config, pointed at the tiny build; a fresh copy per test."""
    from t2i.config import load_config

    return load_config(os.path.join(REPO, "configs/shapes_classifier.py:tiny"), [f"data.data_dir={tiny_data_dir}"])


@pytest.fixture(scope="session")
def tiny_embeddings(tiny_data_dir):
    """MiniLM outputs for every caption of the tiny build (what `t2i data embed` writes)."""
    import ml_collections

    from t2i.data import pipeline
    from t2i.data.shapes_tfds import SPLITS
    from t2i.text.embeddings import make_encoder, table_dir, write_table

    data = ml_collections.ConfigDict(dict(builder_config="tiny", data_dir=tiny_data_dir))
    captions = []
    for split in SPLITS:
        source = pipeline.data_source(data, split)
        captions.extend(pipeline.to_arrays(source[i])["caption"] for i in range(len(source)))
    write_table(captions, make_encoder("minilm", 24), table_dir(pipeline.build_dir(data), "minilm", 24))
    return tiny_data_dir
