"""The training loop's pieces beside train.py: config (train.*, wandb.*), schedule, loop (one
step, one evaluation), checkpoint (ckpt.pt), outputs (every other file of a run, the atomic
writer), distributed (torchrun set-up), precision (dtype=auto and compile=auto by device)."""
