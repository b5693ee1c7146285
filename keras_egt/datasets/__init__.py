"""Data sets: the built-in simulated radar gestures and loaders for your own data."""

from keras_egt.datasets import radar_gestures
from keras_egt.datasets.loaders import load_folder, load_npz

__all__ = ["load_folder", "load_npz", "radar_gestures"]
