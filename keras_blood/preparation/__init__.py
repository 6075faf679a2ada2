"""Preparation: how a raw image becomes the pixels a model sees, in TensorFlow ops that run
in tf.data, in the serving graph and in the edge formats alike.

``decode`` reads files and applies a version's recorded recipe (crop, resize);
``cell_crop`` finds the white cell and cuts it out; ``color`` is the Georgetown study's
colour extraction; ``steps`` chains what a config asks for; ``opencv_reference`` is the
OpenCV version of the colour extraction that the tests compare against.
"""
