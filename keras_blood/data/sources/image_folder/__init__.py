"""A lab's own images: the listing of its folder or list, its TFDS builder and its loader."""
