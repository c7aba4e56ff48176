"""Protocol presets (JSON), installed as ``flare_eval.tolerances``; see :mod:`flare_eval.protocol`."""
