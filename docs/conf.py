"""Sphinx configuration of picluster's documentation.

Build it from a checkout, with picluster importable and Sphinx and furo
installed (warnings are errors; nothing is written into the checkout)::

    sphinx-build -W --keep-going -n -b html docs /tmp/docs-html
"""

import os
import sys
from importlib import metadata

# docs/_ext/picluster_options.py generates the option tables; it imports
# picluster, installed or else from this checkout.
sys.path.insert(0, os.path.abspath("_ext"))
sys.path.append(os.path.abspath(".."))

try:
    release = metadata.version("picluster")
except metadata.PackageNotFoundError:  # a checkout that is not installed
    release = ""

project = "picluster"
author = "the picluster authors"
copyright = "the picluster authors (MIT licence)"
version = release

extensions = ["picluster_options", "picluster_protocol"]

root_doc = "index"
exclude_patterns = ["_build"]
# Most literal blocks are shell commands and their output: no highlighting
# unless a block asks for a language.
highlight_language = "none"
nitpicky = True

html_theme = "furo"
html_title = f"picluster {release}".strip()
html_static_path = ["_static"]
html_css_files = ["picluster.css"]
