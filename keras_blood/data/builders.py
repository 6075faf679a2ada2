"""TFDS builders for keras-blood's data sources: the two published sets and a lab's own
folder, each in its source's folder (``keras_blood/data/sources/<name>/builder.py``).
Importing this module registers them all with TFDS:

    import keras_blood.data.builders
    import tensorflow_datasets as tfds

    train = tfds.load("bloodmnist/64", split="train", as_supervised=True, data_dir=D)
    kaggle = tfds.load("blood_cell_images", split="validation", data_dir=D,
                       download_and_prepare_kwargs={"download_config": tfds.download.DownloadConfig(manual_dir=M)})

A prepared copy needs neither this module nor keras-blood: ``tfds.builder_from_directory(
D / "bloodmnist" / "64" / "1.0.0")`` reads it.
"""

# Every source the registry names imports its builder, which TFDS registers by its class.
import keras_blood.data.registry  # noqa: F401
