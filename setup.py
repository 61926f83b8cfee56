"""Build script. Metadata lives in pyproject.toml; the C++/CUDA extensions of the kernel ops are added here."""

from setuptools import setup

setup()
