"""Bundled example label maps, installed as ``flare_eval.example_data``; see :func:`flare_eval.example_paths`."""
