from setuptools import find_packages, setup

setup(
    name="latent-diffusion-ti-ae",
    version="0.1.0",
    description="Textual Inversion + Attend-and-Excite on the latent-diffusion tree",
    packages=find_packages(include=["ldm", "ldm.*"]),
    package_data={
        "ldm.modules.encoders": ["tokenizer_files/*.md", "tokenizer_files/*/*"],
        "ldm.evaluation": ["data/*"],
    },
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "pytorch-lightning>=2.1,<3",
        "omegaconf>=2.3",
        "transformers>=4.38",
        "einops>=0.7",
        "numpy>=1.24",
        "pillow>=10.0",
        "tqdm>=4.60",
        "kornia>=0.7",
        "safetensors>=0.4",
    ],
    extras_require={
        "test": ["pytest>=7.4", "ruff>=0.5", "selenium>=4.20,<5"],  # selenium: the explorer's browser test
        "logging": ["tensorboard>=2.14"],
        "app": ["gradio>=6,<7"],  # the explorer: python scripts/explore.py
        # SynGen's prompt parse with spaCy (--g_parser auto/spacy; also: python -m spacy download en_core_web_trf);
        # without it the built-in rule parser (ldm/guidance/parse.py) is used
        "spacy": ["spacy>=3.6"],
        # benchmarks/bench_vs_diffusers.py only; never a runtime or test dependency
        "bench": ["diffusers>=0.42.1"],
    },
)
