"""steerlab: activation steering and the experiments built on it.

The data flow (see DESIGN.md): pair set (JSONL) -> activation cache (HDF5) -> vector bundle
(safetensors) -> steered generation -> evaluation records -> statistics and figures.
"""

__version__ = "0.1.0"

from steerlab.errors import SteerlabError  # noqa: E402

__all__ = ["SteerlabError", "__version__"]
