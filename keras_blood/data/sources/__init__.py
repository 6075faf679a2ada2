"""One folder a data source: its loader (``loader.py``), its TFDS builder (``builder.py``)
and, for a lab's folder, its listing (``listing.py``). :mod:`keras_blood.data.registry`
names them."""
