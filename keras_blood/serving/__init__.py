"""Serving: the serving graph (``export``), versions on disk and how to load them
(``version``), publishing them safely (``publish``), edge formats (``edge``) and
classifying image files with a version (``predict``)."""
