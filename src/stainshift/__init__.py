"""stainshift: stain-robust models and honest cross-center numbers from H&E whole-slide images."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("stainshift")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
