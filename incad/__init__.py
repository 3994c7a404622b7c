"""incad: incremental unified multimodal (RGB + 3-D) anomaly detection on Avalanche."""

__version__ = "0.1.0"
