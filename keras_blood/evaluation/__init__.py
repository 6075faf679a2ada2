"""Evaluation: metrics, calibration, the test report written by training and by
``python -m keras_blood.evaluate`` alike, plots, and Grad-CAM explanations."""
