"""Data only: device, core, back-end and space YAML, tile terms and shipped weights.

A package (``codesign.configs``) so that the code finds these files through
``importlib.resources`` wherever codesign is installed
(``codesign.cost_models.devices.CONFIG_DIR``).
"""
