"""A second workflow module, to show per-module decisions in `kiln plan`."""
from flytekit import task, workflow


@task
def train(epochs: int) -> float:
    loss = 1.0
    for _ in range(epochs):
        loss *= 0.9
    return loss


@workflow
def train_wf(epochs: int = 3) -> float:
    return train(epochs=epochs)
