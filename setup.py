"""t2i: Imagen, Parti and DALL-E 2 (unCLIP) in JAX/Flax on shared, sharded parts."""

from setuptools import find_packages, setup

setup(
    name="t2i",
    version="0.1.0",
    description="Text-to-image research in JAX/Flax: Imagen, Parti and unCLIP on shared parts",
    packages=find_packages(include=["t2i", "t2i.*"]),
    package_data={"t2i": ["assets/*", "assets/*/*"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.6,<0.12",
        "flax>=0.10,<0.13",
        "optax>=0.2.4,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "chex>=0.1.88,<0.2",
        "ml_collections>=1.0,<2",
        "sentencepiece>=0.2,<0.3",
        "tensorflow-datasets>=4.9.7,<4.10",
        "importlib_resources",  # tfds imports it without declaring it
        "array_record>=0.7,<0.9",
        "grain>=0.2.10,<0.3",
        "numpy>=1.26,<3",
        "scipy>=1.11,<2",
        "pillow>=10,<14",
        "tensorboardX>=2.6,<3",
        "tqdm>=4.66,<5",
        "safetensors>=0.4,<0.9",
    ],
    extras_require={
        "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4", "ruff>=0.6,<1"],
        "tpu": ["libtpu"],
        "bench": ["torch==2.13.0", "transformers>=4.40,<6"],
    },
    entry_points={"console_scripts": ["t2i=t2i.cli:main"]},
)
