"""TFDS builders for keras-blood's data sources: the two published sets and a lab's own folder. Importing this module registers them with TFDS:

    import keras_blood.data.builders
    import tensorflow_datasets as tfds

    train = tfds.load("bloodmnist/64", split="train", as_supervised=True, data_dir=D)
    kaggle = tfds.load("blood_cell_images", split="validation", data_dir=D,
                       download_and_prepare_kwargs={"download_config": tfds.download.DownloadConfig(manual_dir=M)})

A prepared copy needs neither this package nor keras-blood: ``tfds.builder_from_directory(
D / "bloodmnist" / "64" / "1.0.0")`` reads it.
"""

from keras_blood.data.sources.blood_cell_images.builder import BloodCellImages
from keras_blood.data.sources.bloodmnist.builder import Bloodmnist
from keras_blood.data.sources.image_folder.builder import ImageFolder

__all__ = ["BloodCellImages", "Bloodmnist", "ImageFolder"]
