"""embedpipe bundle: a GGUF embedding model and a prebuilt index shipped as package data.

`python -m embedpipe_bundle search "…"` (or the `embedpipe-bundle` script) answers queries
offline: no model pull, no network. `scripts/make_release.py` in the embedpipe repository
writes this wheel; `manifest.json` beside this file names the data files and their SHA-256.
"""
