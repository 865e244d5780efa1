"""cc-train: reproduce and extend the consciousness-cluster study on open-weight models."""
