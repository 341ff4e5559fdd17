from setuptools import find_packages, setup

setup(
    name="classeg",
    version="0.1.0",
    description="Distributed Spark pipeline for brain-MRI tumour classification and segmentation (Class-Seg)",
    package_dir={"": "lib"},
    packages=find_packages("lib"),
    # conf/ and the EMR templates are symlinked into the package so a built wheel carries them.
    package_data={"classeg": ["conf/*.yaml"], "classeg.emr": ["templates/*.yaml"]},
    python_requires=">=3.10",
    install_requires=[
        "pyspark>=3.5,<3.6",
        "pyarrow==14.0.2",
        "numpy>=1.26,<2",
        "pandas>=2.2,<2.3",
        "petastorm==0.13.1",
        "boto3",
        "h5py",
        "tifffile",
        "pillow",
        "pyyaml",
        "pydicom",
        "pylibjpeg",
        "pylibjpeg-libjpeg",
        "pylibjpeg-openjpeg",
        "pylibjpeg-rle",
        "nibabel",
        "matplotlib",
    ],
    extras_require={
        "torch": ["torch", "torchvision"],
        "horovod": ["horovod==0.28.1"],
        "test": ["pytest", "moto[server]", "monai", "scikit-learn", "nbclient", "nbformat", "ipykernel"],
        # `classeg synth --anatomy mni` reads the MNI152 template that nilearn ships in its wheel.
        "synth": ["nilearn", "nibabel", "scipy"],
    },
    entry_points={"console_scripts": ["classeg=classeg.cli:main"]},
)
