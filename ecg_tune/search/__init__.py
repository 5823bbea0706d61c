"""The hyperparameter search: search spaces as typed data (parameters.py, space.py, read from YAML
by space_file.py), fitted to the data (adapt.py), sampled (samplers.py, describe.py), and the
Ray Tune run around them (trainable.py, tuner.py, progress.py, export.py)."""
