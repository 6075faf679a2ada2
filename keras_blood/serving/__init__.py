"""Serving: the serving graph (``export``), versions on disk and how to load them
(``version``), publishing them safely (``publish``), edge formats (``edge``),
classifying image files with a version (``predict``) and counting the white cells of smear
fields (``count``, ``count_request``; the window cut around each cell, ``capture_window``; the
``serving_fields`` signature that counts inside the served model, ``fields_signature``)."""
