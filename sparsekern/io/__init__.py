"""Files: save / load a model with packed layers (save_load.py), inspect one (inspect.py).

Layers: safetensors_header.py checks the container, file_header.py the sparsekern header
schema, save_load.py matches both against a model, inspect.py reads the header alone.
"""
from .file_header import FORMAT_VERSION, read_header
from .inspect import FileInfo, inspect_file
from .save_load import load, save

__all__ = ["save", "load", "inspect_file", "read_header", "FileInfo", "FORMAT_VERSION"]
