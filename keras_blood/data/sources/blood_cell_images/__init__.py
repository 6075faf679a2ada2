"""Kaggle "Blood Cell Images" (Mooney 2018): its TFDS builder and its loader."""
