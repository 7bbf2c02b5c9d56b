"""Shared-A LoRA training, calibration, PEFT exchange, data loading and evaluation."""
