"""A small Flyte-style workflow: the code kiln bakes into the image under /root."""
from flytekit import task, workflow

from utils.text import shout


@task
def greet(name: str) -> str:
    return shout(f"hello, {name}")


@workflow
def hello_wf(name: str = "kiln") -> str:
    return greet(name=name)
