"""keras-blood: blood-cell image classifiers with Keras 3 and TensorFlow.

The package is laid out as the work flows:
config -> data -> models -> train / metrics -> export.
"""

__version__ = "0.1.0"
