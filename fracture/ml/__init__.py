"""The core's PyTorch side: the network, checkpoints, preprocessing into tensors, inference, Grad-CAM and the
out-of-distribution detector. Everything that imports torch lives here; the web never imports it (a contract in
pyproject.toml), the worker and the trainer do."""
