from setuptools import find_packages, setup

setup(
    name="tooln1-jax",
    version="0.1.0",
    description="Tool-N1 (GRPO for tool calling) on Qwen2.5, in JAX/Flax",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["tooln1_jax", "tooln1_jax.*"]),
    include_package_data=True,
    package_data={"tooln1_jax": ["assets/**/*", "assets/*"]},
    install_requires=[
        "jax>=0.10",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.10",
        "transformers>=4.51",
        "tokenizers>=0.21",
        "datasets>=3.0",
        "safetensors>=0.4",
        "gguf>=0.16",
        "numpy>=1.26",
        "pyyaml>=6.0",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "jinja2>=3.1",  # transformers' apply_chat_template (the prompts); transformers does not require it
        "pyarrow>=15",  # parquet records (data/records.py)
        "ml_dtypes>=0.4",  # bfloat16 safetensors (models/safetensors_io.py)
        "huggingface_hub>=0.30",  # hub ids as model.path (models/weights.py)
        "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow (train/metrics.py)
        "etils[epath]>=1.7",  # gs:// paths (tooln1_jax/paths.py); orbax's own path type
    ],
    extras_require={
        "dev": [
            "pytest>=8",
            "pytest-xdist>=3.6",  # the README's test command runs the suite on 2 worker processes (-n 2)
            "hypothesis>=6.100",
            "torch==2.13.0",
            "transformers>=4.51",
            "accelerate>=1.0",  # transformers needs it to read GGUF files (the real-weights parity test)
            "gguf>=0.16",
            "tooln1-jax[notebook,wandb,gcs]",
            "gcp-storage-emulator>=2024.8",  # offline stand-in for Cloud Storage (tests/test_cloud_paths.py)
            "jax[tpu]>=0.10",  # libtpu: the TPU compiler and slice topologies for `tooln1 compile` and its tests
        ],
        "wandb": ["wandb>=0.19"],  # train.report_to: [wandb]
        "gcs": ["gcsfs>=2024.2"],  # gs:// run directories, prepared data and eval outputs (tooln1_jax/paths.py)
        "tpu": ["jax[tpu]>=0.10"],  # Cloud TPU VMs (README "Cloud TPU VM")
        "cuda": ["jax[cuda12]>=0.10"],  # NVIDIA GPUs, CUDA 12 wheels (README "GPU machine")
        "notebook": [  # notebooks/eval.ipynb and the test that runs it
            "pandas>=2.0",
            "ipython>=8",
            "ipykernel>=6.29",
            "nbclient>=0.10",
            "nbformat>=5.10",
        ],
    },
    entry_points={"console_scripts": ["tooln1=tooln1_jax.cli:main"]},
)
