"""BloodMNIST (MedMNIST v2): the file, its TFDS builder and its loader."""
