"""The machinery train.py needs beside its loop: distributed set-up, lr schedule,
checkpoints, metric logging (local files and W&B)."""
