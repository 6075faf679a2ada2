"""Evaluation: metrics, calibration, the test report written by training and by
``python -m keras_blood.evaluate`` alike, plots, Grad-CAM explanations, and the folder a
differential count writes (``count_report``, ``count_figures``)."""
