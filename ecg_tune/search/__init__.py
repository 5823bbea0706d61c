"""The hyperparameter search: declarative search spaces (space.py) and the Ray Tune run around them."""
