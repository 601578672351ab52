"""Detector training: YOLOv5 model, loss, data, augmentation, train/evaluate/export CLIs."""
