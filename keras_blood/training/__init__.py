"""Training: an experiment built complete from its config (``task``), run to a tested,
exported model by the ``trainer``, with its run folder and resume (``runs``), callbacks,
validation metrics (``keras_metrics``), devices and clusters (``runtime``,
``distribute``), weights from another model (``transfer``) and studies (``sweep``)."""
